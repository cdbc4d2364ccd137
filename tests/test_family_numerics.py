"""Numbers for every block family the anatomy knows (issue 23), on the tiny timm architectures of
scripts/coverage.py (random init, their own input sizes), each against a reference written here in plain torch:

- skip_ablation (`anatomy.residual.remove_skip`): with one sublayer's skip removed, the stream right after that
  sublayer is the intact stream minus its skip input z, to float32 rounding (removing the skip removes exactly z;
  ResNet v1 keeps its post-addition ReLU, so there it is relu(f(z)));
- lesion (`analyses.robustness.lesion_units` / `zeroed`): the logits with a sublayer's zero-module hooked to output
  zeros equal the logits of a copy whose last parametrised layer inside that module has weight and bias set to zero
  by hand (which makes the module's output zero);
- receptive_field (`analyses.receptive_field.erf_maps`): the map of every branch's `post` and `pre` target equals
  |d(sum_c of the centre location's channels)/d input|, summed over the input's channels and averaged over images,
  recomputed in float64 with model.double() and torch.autograd (docs/methods.md#receptive_field).

Zero-initialised parameters (Swin-V2 / ResNet last norms, layer scales) are re-drawn first, so no branch is zero.

The whole file is slow (about 7 CPU-minutes for the quick families): `make test-all` runs it. The cases in `OPEN` are
mismatches these checks found and nobody has diagnosed yet: they stay visible as non-strict xfails until fixed.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from vitstudy.analyses.receptive_field import erf_maps
from vitstudy.analyses.robustness import lesion_units, zeroed
from vitstudy.anatomy import families as anatomy
from vitstudy.anatomy.residual import branches, combine, positions_channels, remove_skip, residual_blocks, terms
from vitstudy.anatomy.tokens import token_grid
from vitstudy.pipeline.layers import resolve

_spec = importlib.util.spec_from_file_location("coverage_families", Path(__file__).resolve().parent.parent / "scripts" / "coverage.py")
coverage = importlib.util.module_from_spec(_spec)
sys.modules["coverage_families"] = coverage
_spec.loader.exec_module(coverage)

# The families whose residual branches the anatomy knows (DenseNet and VGG have none: refused, see docs/coverage.md).
NO_SKIP = {"densenet", "vgg"}
# Slow to build or run at their coverage size (full-width CNNs, 256 px HaloNet): in the slow suite.
SLOW = {"resnetv2_bit", "convmixer", "halonet", "efficientnet", "regnet", "densenet"}
pytestmark = pytest.mark.slow  # every family at full tiny size: minutes, not seconds (see the docstring)

KNOWN = [f for f in coverage.FAMILIES if f.key not in NO_SKIP]
# Mismatches found by these tests and not yet diagnosed (issue 23; listed in the helper's report): kept visible.
OPEN = {
    "skip_ablation": {"mvitv2", "maxvit", "tnt", "vit_hybrid_r26", "byobnet_gernet"},
    "lesion": {"mvitv2", "efficientformer"},
    "receptive_field": set(),
}


def params(check: str) -> list:
    return [pytest.param(f, id=f.key, marks=([pytest.mark.slow] if f.key in SLOW else []) +
                         ([pytest.mark.xfail(reason=f"{check} on {f.key}: open mismatch (issue 23)", strict=False)]
                          if f.key in OPEN[check] else [])) for f in KNOWN]




def build(f) -> torch.nn.Module:
    """The family's tiny random-init model in eval mode, no zero parameter left (each branch does something)."""
    torch.manual_seed(0)
    model = timm.create_model(f.arch, pretrained=False, num_classes=10, **f.kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.abs().amax() > 1e-3:  # zero or 1e-5 layer-scale init: the branch counts
                p.normal_(0.0, 0.1)
    return model


def images(f, n=2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, *f.size)


def capture(model, layers, x) -> dict[str, torch.Tensor]:
    """The tensors at `layers` in one forward pass (cloned: some blocks add in place)."""
    mods = dict(model.named_modules())
    out, handles = {}, []
    for l in layers:
        if l.is_input:
            handles.append(mods[l.module].register_forward_pre_hook(lambda m, a, _l=l: out.__setitem__(_l.name, _l.of_input(a).clone())))
        else:
            handles.append(mods[l.module].register_forward_hook(lambda m, a, o, _l=l: out.__setitem__(_l.name, _l.of_output(o).clone())))
    _run_hooked(model, x, handles)
    return out


def _run_hooked(model, x, handles: list) -> None:
    """One no-grad forward with the given hooks registered, which are removed afterwards whatever happens."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def _ends(items: list, k: int = 1) -> list:
    return list(dict.fromkeys(items[:k] + items[-k:]))


@pytest.mark.parametrize("f", params("skip_ablation"))
def test_skip_ablation_removes_exactly_the_skip_input(f):
    model, x = build(f), images(f)
    size = (3, *f.size)
    removable = set(residual_blocks(model))
    by_block = {b.path: b for b in anatomy.blocks(model)}
    checked = 0
    for path in _ends([p for p in dict.fromkeys(s.block for s in branches(model)) if p in removable]):
        block = by_block[path]
        firsts = {}
        for s in block.sublayers:
            if s.residual and s.measurable:
                firsts.setdefault("both" if s.sublayer == "res" else ("mlp" if s.kind == "mlp" else "attn"), s)
        for which, s in firsts.items():
            zt, ft = terms(s)
            names = list(dict.fromkeys([s.post] + [n for part in (zt, ft) for n, _ in part]))
            layers = {l.name: l for l in resolve(model, names, size)}
            intact = {n: positions_channels(t, layers[n].layout) for n, t in capture(model, layers.values(), x).items()}
            z, fz = combine(zt, intact), combine(ft, intact)
            if block.family.name == "resnet":  # ResNet v1: relu(z + f(z)) -> relu(f(z))
                want = torch.relu(fz)
            else:
                want = intact[s.post].double() - z
            with remove_skip(model, [path], which):
                got = positions_channels(capture(model, [layers[s.post]], x)[s.post], layers[s.post].layout).double()
            scale = max(float(intact[s.post].abs().amax()), float(z.abs().amax()))
            assert float((got - want).abs().amax()) <= 2e-5 * scale, (path, which, s.post)
            assert float((got - intact[s.post].double()).abs().amax()) > 1e-3 * scale  # the skip did carry something
            checked += 1
    assert checked


def _last_weighted(model, path: str, x) -> str:
    """The module with parameters of its own, inside the block of `path`, whose forward ends last before the output of
    `path` is ready: the branch's final projection or norm (`path` itself is often parameter-free, e.g. a drop_path)."""
    mods = dict(model.named_modules())
    block = next(b.path for b in anatomy.blocks(model) if path.startswith(b.path + "."))
    order: list[str] = []
    weighted = [n for n, m in mods.items() if n.startswith(block + ".") and any(True for _ in m.parameters(recurse=False))
                and not (n == path and any(True for c in m.children() for _ in c.parameters()))]  # attn's own biases: not it
    handles = [mods[n].register_forward_hook(lambda m, a, o, _n=n: order.append(_n)) for n in weighted]
    handles.append(mods[path].register_forward_hook(lambda m, a, o: order.append("<zero>")))
    _run_hooked(model, x, handles)
    return order[order.index("<zero>") - 1]


@pytest.mark.parametrize("f", params("lesion"))
def test_lesion_equals_zeroed_weights(f):
    model, x = build(f), images(f)
    with torch.no_grad():
        intact = model(x)
    units = lesion_units(model)
    checked = 0
    for path, _ in _ends(units):
        leaf_name = _last_weighted(model, path, x)
        with torch.no_grad(), zeroed(model, path):
            lesioned = model(x)
        by_hand = copy.deepcopy(model)
        target = dict(by_hand.named_modules())[leaf_name]
        with torch.no_grad():
            for p in target.parameters(recurse=False):
                p.zero_()
            want = by_hand(x)
        scale = float(intact.abs().amax())
        assert float((lesioned - want).abs().amax()) <= 1e-5 * scale, (path, leaf_name)
        assert float((lesioned - intact).abs().amax()) > 1e-4 * scale, path  # the lesion did change the logits
        checked += 1
    assert checked


def _centre(t: torch.Tensor, layout: str, grid) -> torch.Tensor:
    if layout == "NCHW":
        return t[:, :, t.shape[2] // 2, t.shape[3] // 2]
    if layout == "NHWC":
        return t[:, t.shape[1] // 2, t.shape[2] // 2, :]
    rows, cols, prefix = grid
    return t[:, prefix + (rows // 2) * cols + cols // 2, :]


@pytest.mark.parametrize("f", params("receptive_field"))
def test_receptive_field_equals_float64_autograd(f):
    model, x = build(f), images(f)
    size = (3, *f.size)
    chosen = [b for b in branches(model) if b.index in {min(s.index for s in branches(model)), max(s.index for s in branches(model))}]
    targets = {}
    for b in chosen:
        targets[b.post] = ((b.post, 1.0),)
        targets[b.branch_point] = terms(b)[1]
    names = list(dict.fromkeys(n for parts in targets.values() for n, _ in parts))
    layers = {l.name: l for l in resolve(model, names, size)}
    maps, _ = erf_maps(model, list(layers.values()), [x[:1], x[1:]], targets=targets)

    # both images in one batch: a one-image batch meets PyTorch's CPU BatchNorm backward bug that erf_maps works
    # around (two images agree with central finite differences on XCiT, LeViT and EfficientFormer)
    ref = copy.deepcopy(model).double()
    grids = {n: token_grid(model, l) for n, l in layers.items()}
    mods = dict(ref.named_modules())
    xd = x.double().requires_grad_(True)
    got_t: dict[str, torch.Tensor] = {}
    handles = []
    for l in layers.values():
        if l.is_input:
            handles.append(mods[l.module].register_forward_pre_hook(lambda m, a, _l=l: got_t.__setitem__(_l.name, _centre(_l.of_input(a), _l.layout, grids[_l.name]).clone())))
        else:
            handles.append(mods[l.module].register_forward_hook(lambda m, a, o, _l=l: got_t.__setitem__(_l.name, _centre(_l.of_output(o), _l.layout, grids[_l.name]).clone())))
    try:
        ref(xd)
    finally:
        for h in handles:
            h.remove()
    for name, parts in targets.items():
        v = sum(c * got_t[n] for n, c in parts)
        (g,) = torch.autograd.grad(v.sum(), xd, retain_graph=True)
        want = g.abs().sum(1).mean(0).numpy()  # |d sum_c centre_c / dx| summed over input channels, mean over images
        # float32's error in the channel sum is relative to the channels' own gradients, not to their sum (after a
        # LayerNorm the channel sum is constant and its gradient cancels to ~0): the scale is a random-sign sum's map
        signs = torch.randint(0, 2, v.shape[1:], generator=torch.Generator().manual_seed(0)).double() * 2 - 1
        (g2,) = torch.autograd.grad((v * signs).sum(), xd, retain_graph=True)
        scale = max(want.max(), float(g2.abs().sum(1).mean(0).max()))
        assert maps[name].shape == want.shape
        np.testing.assert_allclose(maps[name], want, rtol=0, atol=2e-4 * scale, err_msg=name)
        assert scale > 0
