"""Newer timm families (vitstudy.anatomy): skip ratios of blocks whose branch is scaled inside the addition (BEiT
gamma_1/gamma_2), derived from a shared drop-path (CaiT) or post-normed (Swin-V2) against ratios computed by hand
in float64; CaiT's attention distance (late class token, talking heads) against a hand formula; tuple-returning
blocks (MViT-v2, TNT) tapped at their token tensor; one-line refusals for structure still missing."""

import math
import sys

import numpy as np
import pytest
import timm
import torch

from helpers import assert_one_line_error
from vitstudy.analyses.skip import measure
from vitstudy.anatomy.attention import excluded, sites, unfused
from vitstudy.anatomy.residual import branches
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel
from vitstudy.pipeline.taps import tap

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def _hand_beit(blk, x):
    """BEiT / EVA-style: x + gamma_1 * attn(norm1(x)), then x + gamma_2 * mlp(norm2(x))."""
    f1 = blk.gamma_1 * blk.attn(blk.norm1(x), shared_rel_pos_bias=None)
    x1 = x + f1
    return [(x, f1), (x1, blk.gamma_2 * blk.mlp(blk.norm2(x1)))]


def _hand_cait(blk, x):
    """CaiT LayerScaleBlock: one drop_path for both sublayers, x + gamma_1 * attn(norm1(x)), ..."""
    f1 = blk.gamma_1 * blk.attn(blk.norm1(x))
    x1 = x + f1
    return [(x, f1), (x1, blk.gamma_2 * blk.mlp(blk.norm2(x1)))]


def _hand_swinv2(blk, x):
    """Swin-V2 post-norm: x + norm1(attn(x)), then x + norm2(mlp(x)) on (B, H, W, C) maps."""
    b, h, w, c = x.shape
    f1 = blk.norm1(blk._attn(x))
    x1 = x + f1
    f2 = blk.norm2(blk.mlp(x1.reshape(b, -1, c))).reshape(b, h, w, c)
    return [(x, f1), (x1, f2)]


FAMILIES = {
    "beit": ("beit_base_patch16_224", dict(TINY, init_values=0.1), _hand_beit, "blocks.0"),
    "cait": ("cait_xxs24_224", dict(TINY, init_values=0.1), _hand_cait, "blocks.0"),
    "swinv2": (
        "swinv2_tiny_window8_256",
        dict(img_size=32, window_size=4, depths=(2, 2), num_heads=(2, 2), embed_dim=16),
        _hand_swinv2,
        "layers.0.blocks.1",
    ),
}


def _loaded(module):
    return LoadedModel(
        key="model", name="t", label="t", module=module.eval(), transform=None, data_config={}, weights="none"
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_skip_ratio_matches_hand_float64_norms(family):
    arch, kw, hand, block = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(arch, **kw).eval()
    # layer scales far from their init, so a missing gamma shows; Swin-V2 zero-inits its post-norm weights (f = 0)
    for name, p in model.named_parameters():
        if name.endswith(("gamma_1", "gamma_2")):
            p.data = torch.randn_like(p) * 0.5
        if name.endswith(("norm1.weight", "norm2.weight")):
            p.data = 1 + torch.randn_like(p) * 0.5
    x = torch.randn(4, 3, 32, 32)
    blk = dict(model.named_modules())[block]
    seen = {}
    h = blk.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
    with torch.no_grad():
        model(x)
        h.remove()
        pairs = hand(blk, seen["x"])
    loader = [((x,), torch.zeros(4, dtype=torch.long))]
    layers_of = lambda m, names: resolve(m.module, names, (3, 32, 32))  # noqa: E731
    tokens, _, _ = measure([_loaded(model)], layers_of, loader, "cpu", 3, "mean_of_ratios", "t")
    for sub, (z, f) in zip(("attn", "mlp"), pairs):
        z, f = z.double().flatten(1, -2), f.double().flatten(1, -2)  # (B, positions, C)
        expected = (z.norm(dim=-1) / f.norm(dim=-1)).mean(0).numpy()  # mean over images of per-position ratios
        got = tokens[(tokens.block == block) & (tokens.sublayer == sub)].sort_values("token").ratio.to_numpy()
        assert len(got) == len(expected) and np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_zero_layer_scale_gives_infinite_flagged_ratio_beit():
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", **dict(TINY, depth=1, init_values=0.1)).eval()
    model.blocks[0].gamma_1.data.zero_()  # f(z) = 0 for the attention sublayer: infinite ratio, flagged
    x = torch.randn(2, 3, 32, 32)
    layers_of = lambda m, names: resolve(m.module, names, (3, 32, 32))  # noqa: E731
    tokens, _, _ = measure([_loaded(model)], layers_of, [((x,), torch.zeros(2))], "cpu", 3, "mean_of_ratios", "t")
    attn = tokens[tokens.sublayer == "attn"]
    assert np.isinf(attn.ratio).all() and (attn.flag == "zero branch output: infinite ratio").all()
    assert np.isfinite(tokens[tokens.sublayer == "mlp"].ratio).all()


def _hand_mean_distance(a: torch.Tensor, gh: int, gw: int, stride: float) -> torch.Tensor:
    """(B, heads) mean over queries of sum_j a_ij * |p_i - p_j| (pixels), by explicit coordinates."""
    pos = torch.tensor([[r * stride, c * stride] for r in range(gh) for c in range(gw)], dtype=torch.float64)
    d = torch.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    return (a * d).sum(-1).mean(-1)


def test_cait_attention_distance_late_class_token_matches_hand_formula():
    torch.manual_seed(0)
    model = timm.create_model("cait_xxs24_224", **TINY).eval()
    site_list = sites(model)
    assert [s.name for s in site_list] == ["blocks.0.attn", "blocks.1.attn"]  # class-attention blocks left out
    assert all(s.num_prefix == 0 and s.tokens == 16 for s in site_list)  # the class token joins later
    assert "class-attention" in excluded(model)
    x = torch.randn(3, 3, 32, 32)
    captured, inputs = {}, {}
    hooks = [
        dict(model.named_modules())[s.name].register_forward_pre_hook(
            lambda m, a, n=s.name: inputs.__setitem__(n, a[0].clone())
        )
        for s in site_list
    ]
    with (
        unfused(model),
        tap(model, [s.layer for s in site_list], lambda l, t: captured.__setitem__(l.name, t.clone())),
        torch.no_grad(),
    ):
        model(x)
    for h in hooks:
        h.remove()
    for s in site_list:
        mod = dict(model.named_modules())[s.name]
        xa = inputs[s.name].double()
        b, n, c = xa.shape
        qkv = (
            (xa @ mod.qkv.weight.double().T + mod.qkv.bias.double())
            .reshape(b, n, 3, mod.num_heads, -1)
            .permute(2, 0, 3, 1, 4)
        )
        logits = (qkv[0] * mod.scale) @ qkv[1].transpose(-2, -1)  # (B, heads, N, N)
        mixed = (
            torch.einsum("bhij,gh->bgij", logits, mod.proj_l.weight.double())
            + mod.proj_l.bias.double()[None, :, None, None]
        )
        probs = mixed.softmax(-1)  # the talking-heads softmax, before proj_w mixes heads again
        s.check(captured[s.name], 3)
        torch.testing.assert_close(s.probabilities(captured[s.name]).double(), probs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            s.per_image(captured[s.name]).double(), _hand_mean_distance(probs, 4, 4, 8.0), atol=1e-4, rtol=1e-4
        )
    # uniform attention over a 4x4 grid of 8-px patches: the mean pairwise distance of the grid
    uniform = torch.full((1, 1, 16, 16), 1 / 16, dtype=torch.float64)
    pairs = [math.dist((r1, c1), (r2, c2)) for r1 in range(4) for c1 in range(4) for r2 in range(4) for c2 in range(4)]
    assert float(site_list[0].per_image(uniform.permute(0, 2, 3, 1))) == pytest.approx(
        8.0 * sum(pairs) / 256, rel=1e-12
    )


def test_convit_sites_class_token_joins_at_local_up_to_layer():
    model = timm.create_model(
        "convit_tiny", img_size=32, patch_size=8, depth=3, local_up_to_layer=2, embed_dim=32, num_heads=2
    )
    assert [s.num_prefix for s in sites(model)] == [0, 0, 1]


def _mvit():
    """MViT-v2 with one block per stage (timm's constructor; its registered variants fix the depths)."""
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    return MultiScaleVit(
        MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=16, num_heads=1), img_size=(32, 32), num_classes=10
    )


@pytest.mark.parametrize("family, index", [("mvitv2", 0), ("tnt", 1)])  # (tokens, size); (pixel tokens, patch tokens)
def test_tuple_blocks_are_tapped_at_their_token_tensor(family, index):
    torch.manual_seed(0)
    model = (
        _mvit()
        if family == "mvitv2"
        else timm.create_model(
            "tnt_s_patch16_224",
            img_size=32,
            patch_size=8,
            depth=2,
            embed_dim=32,
            inner_dim=8,
            num_heads_outer=2,
            num_heads_inner=1,
        )
    ).eval()
    size = (3, 32, 32)
    layers = resolve(model, "blocks", size)
    assert layers and all(l.index == index and l.name.endswith(f"[{index}]") and l.layout == "NLC" for l in layers)
    seen = {}
    with tap(model, layers, lambda l, t: seen.__setitem__(l.name, t)), torch.no_grad():
        model(torch.randn(2, *size))
    assert all(isinstance(seen[l.name], torch.Tensor) and seen[l.name].shape[1:] == l.shape for l in layers)
    assert all(b.measurable for b in branches(model))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            [
                "analysis=attention_distance",
                "model.name=xcit_nano_12_p16_224",
                "model.kwargs.depth=2",
                "model.kwargs.img_size=32",
            ],
            "XCiT's cross-covariance attention is a softmax over channels",
        ),
        (
            [
                "analysis=skip_ratio",
                "model.name=vgg11",
                "model.kwargs.img_size=null",
                "model.kwargs.patch_size=null",
                "model.kwargs.depth=null",
                "+model.kwargs.mlp_ratio=0.0625",
            ],
            "VGG has no skip connections to measure",
        ),
    ],
)
def test_families_without_the_structure_refuse_in_one_line(args, message, tmp_path, capsys):
    base = [
        "run",
        "model.pretrained=false",
        "model.data.input_size=[3,32,32]",
        "dataset=synthetic",
        "dataset.num_images=4",
        "dataset.batch_size=4",
        "dataset.image_size=32",
    ]
    assert_one_line_error([base[0], *args, *base[1:]], message, tmp_path / "run", capsys)


@pytest.mark.slow
def test_coverage_script_runs_and_refuses_without_crashing(tmp_path):
    """scripts/coverage.py on three families: exit 0 (nothing crashed), a tidy CSV, refusals with their line."""
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "coverage.py"  # not the `coverage` package
    spec = importlib.util.spec_from_file_location("vitstudy_coverage_script", path)
    cov = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cov  # dataclasses look their module up by name
    spec.loader.exec_module(cov)

    code = cov.main(
        [
            "--families",
            "cait",
            "mvitv2",
            "vgg",
            "--analyses",
            "skip_ratio",
            "attention_distance",
            "--out",
            str(tmp_path),
            "--doc",
            str(tmp_path / "page.md"),
        ]
    )
    assert code == 0
    rows = {(r["family"], r["analysis"]): r for r in csv.DictReader(open(tmp_path / "coverage.csv"))}
    assert len(rows) == 6 and rows[("cait", "attention_distance")]["outcome"] == "runs"
    assert (
        rows[("vgg", "skip_ratio")]["outcome"] == "refused"
        and "no skip connections" in rows[("vgg", "skip_ratio")]["message"]
    )
    assert "| cait | `cait_xxs24_224` |" in (tmp_path / "page.md").read_text()
