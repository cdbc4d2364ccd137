"""Numbers for every block family the anatomy knows (issue 23), on the tiny timm architectures of
scripts/coverage.py (random init, their own input sizes), each against a reference written here in plain torch:

- skip_ablation (`anatomy.residual.remove_skip`): with one sublayer's skip removed, the stream right after that
  sublayer is the intact stream minus its skip input z, to float32 rounding (removing the skip removes exactly z;
  units with an activation after the addition, ResNet v1, ResNet-V2 without pre-activation, RegNet and ByobNet,
  keep it, so there it is act(f(z))); in a MaxViT block, removing the attention skips keeps the MBConv shortcut;
- lesion (`analyses.robustness.lesion_units` / `zeroed`): the logits with a sublayer's zero-module hooked to output
  zeros equal the logits of a copy whose branch is zeroed by hand through its weights: the branch's last
  parametrised leaf module before the cut (or, after a parameter-free mixer, its layer scale) gets weight and bias
  zero; that copy's stream after the sublayer is checked to be the skip input z (act(z) after an activation);
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

_spec = importlib.util.spec_from_file_location(
    "coverage_families", Path(__file__).resolve().parent.parent / "scripts" / "coverage.py"
)
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
    "skip_ablation": set(),
    "lesion": set(),
    "receptive_field": set(),
}


def params(check: str) -> list:
    return [
        pytest.param(
            f,
            id=f.key,
            marks=([pytest.mark.slow] if f.key in SLOW else [])
            + (
                [pytest.mark.xfail(reason=f"{check} on {f.key}: open mismatch (issue 23)", strict=False)]
                if f.key in OPEN[check]
                else []
            ),
        )
        for f in KNOWN
    ]


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
            handles.append(
                mods[l.module].register_forward_pre_hook(
                    lambda m, a, _l=l: out.__setitem__(_l.name, _l.of_input(a).clone())
                )
            )
        else:
            handles.append(
                mods[l.module].register_forward_hook(
                    lambda m, a, o, _l=l: out.__setitem__(_l.name, _l.of_output(o).clone())
                )
            )
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


def _after_addition(block) -> torch.nn.Module | None:
    """The activation a conv unit applies after its addition `z + f(z)` (its `post` is read after it), from timm's
    forwards: ResNet v1 `act2`/`act3`, ResNet-V2 without pre-activation and RegNet `act3`, every ByobNet block `act`."""
    m, name = block.module, block.family.name
    if name == "resnet":
        return m.act3 if hasattr(m, "bn3") else m.act2
    return {
        "resnetv2": getattr(m, "act3", None),
        "regnet": getattr(m, "act3", None),
        "byobnet": getattr(m, "act", None),
    }.get(name)


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
            act = _after_addition(block)  # act(z + f(z)) -> act(f(z)); else post - z
            want = act(fz) if act is not None else intact[s.post].double() - z
            with remove_skip(model, [path], which):
                got = positions_channels(capture(model, [layers[s.post]], x)[s.post], layers[s.post].layout).double()
            scale = max(float(intact[s.post].abs().amax()), float(z.abs().amax()))
            assert float((got - want).abs().amax()) <= 2e-5 * scale, (path, which, s.post)
            assert float((got - intact[s.post].double()).abs().amax()) > 1e-3 * scale  # the skip did carry something
            checked += 1
    assert checked


def _zeroing_weights(model, path: str, x) -> str:
    """The module whose own parameters, set to zero, zero the branch that the lesion of `path` cuts: the last
    parametrised leaf module of the block to finish before the output of `path` is ready (the branch's final
    projection or norm; `path` itself is often parameter-free, e.g. a drop_path). Leaves only: a container's own
    parameters are not its output's last step (MViT-v2's attention holds its relative-position tables, LeViT's its
    attention biases). Where no weight of the block ran before the cut (EfficientFormer's parameter-free pooling
    mixer on the block input), the first leaf after it: the branch's layer scale, whose zero gamma zeroes it."""
    mods = dict(model.named_modules())
    block = next(b.path for b in anatomy.blocks(model) if path.startswith(b.path + "."))
    order: list[str] = []
    weighted = [
        n
        for n, m in mods.items()
        if n.startswith(block + ".")
        and any(True for _ in m.parameters(recurse=False))
        and not any(True for c in m.children() for _ in c.parameters())
    ]
    handles = [mods[n].register_forward_hook(lambda m, a, o, _n=n: order.append(_n)) for n in weighted]
    handles.append(mods[path].register_forward_hook(lambda m, a, o: order.append("<zero>")))
    _run_hooked(model, x, handles)
    cut = order.index("<zero>")
    return order[cut - 1] if cut else order[cut + 1]


def _stream(model, layer, x) -> torch.Tensor:
    return positions_channels(capture(model, [layer], x)[layer.name], layer.layout).double()


@pytest.mark.parametrize("f", params("lesion"))
def test_lesion_equals_zeroed_weights(f):
    model, x = build(f), images(f)
    with torch.no_grad():
        intact = model(x)
    units = lesion_units(model)
    subs = {(s.zero, s.post): (b, s) for b in anatomy.blocks(model) for s in b.sublayers if s.residual}
    checked = 0
    for path, post in _ends(units):
        leaf_name = _zeroing_weights(model, path, x)
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
        block, sub = subs[(path, post)]
        if sub.measurable:  # after the sublayer, the lesioned model's and the hand-zeroed copy's stream are both
            zt, _ = terms(sub)  # z (act(z) after a post-addition activation), z read from the intact model
            layers = {l.name: l for l in resolve(model, list(dict.fromkeys([post] + [n for n, _ in zt])), (3, *f.size))}
            seen = {n: positions_channels(t, layers[n].layout) for n, t in capture(model, layers.values(), x).items()}
            z, act = combine(zt, seen), _after_addition(block)
            z = act(z) if act is not None else z
            with zeroed(model, path):
                hooked = _stream(model, layers[post], x)
            tol = 1e-5 * float(z.abs().amax())
            assert float((_stream(by_hand, layers[post], x) - z).abs().amax()) <= tol, (path, leaf_name)
            assert float((hooked - z).abs().amax()) <= tol, path
            # the branch carried something (the logits need not show it: a deep random-init ConvMixer maps every
            # image to the same logits, so its first block's lesion changes them by 1e-7 of their size)
            assert float((seen[post].double() - z).abs().amax()) > 1e-3 * float(z.abs().amax()), path
        else:
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
    chosen = [
        b
        for b in branches(model)
        if b.index in {min(s.index for s in branches(model)), max(s.index for s in branches(model))}
    ]
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
            handles.append(
                mods[l.module].register_forward_pre_hook(
                    lambda m, a, _l=l: got_t.__setitem__(
                        _l.name, _centre(_l.of_input(a), _l.layout, grids[_l.name]).clone()
                    )
                )
            )
        else:
            handles.append(
                mods[l.module].register_forward_hook(
                    lambda m, a, o, _l=l: got_t.__setitem__(
                        _l.name, _centre(_l.of_output(o), _l.layout, grids[_l.name]).clone()
                    )
                )
            )
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
