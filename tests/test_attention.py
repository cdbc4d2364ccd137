"""Attention capture, mean attention distance, local/global CKA and rollout: analytic cases, a float64
recomputation from q and k, every supported model family, the CLI end to end and each bad input."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, cli
from vitstudy.analyses.attention import DistanceStats, subset_cka, subsets
from vitstudy.anatomy.attention import sites, unfused
from vitstudy.metrics import attention as am
from vitstudy.pipeline.taps import tap

SWIN_KW = dict(img_size=32, window_size=4, depths=(2, 2), num_heads=(2, 4), embed_dim=32)
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=2)),
    "gap_vit": ("vit_base_patch16_gap_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4)),
    "registers": ("vit_base_patch16_reg4_gap_256", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4)),
    "swin": ("swin_tiny_patch4_window7_224", SWIN_KW),
    "pit_distilled": (
        "pit_ti_distilled_224",
        dict(img_size=32, patch_size=8, stride=4, depth=(1, 1, 1), heads=(1, 2, 2)),
    ),
}
SWIN_CLI = [
    "model.name=swin_tiny_patch4_window7_224",
    "model.pretrained=false",
    "model.kwargs.img_size=32",
    "model.kwargs.window_size=4",
    "model.kwargs.embed_dim=48",
]  # list kwargs (depths) reach timm as ListConfig


# ---------------------------------------------------------------------------------------------- analytic


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_self_attention_only_has_distance_zero(prefix):
    g = 5
    n = prefix + g * g
    attn = torch.eye(n).expand(2, 3, n, n).clone()
    attn[:, :, :prefix] = 1.0 / n  # prefix queries are dropped whatever they do
    d = am.distance_matrix(g, g, (16.0, 16.0), prefix)
    assert torch.allclose(am.mean_distance(attn, d, g * g), torch.zeros(2, 3), atol=1e-6)


@pytest.mark.parametrize("g,prefix", [(3, 0), (4, 1), (6, 2)])
def test_uniform_attention_matches_closed_form_mean_pairwise_distance(g, prefix):
    n = prefix + g * g
    coords = list(itertools.product(range(g), range(g)))
    # closed form: every row is 1/n over all tokens; prefix keys are dropped without renormalising
    expected = sum(math.hypot((a[0] - b[0]) * 16, (a[1] - b[1]) * 16) for a in coords for b in coords) / (g * g) / n
    attn = torch.full((1, 2, n, n), 1.0 / n, dtype=torch.float64)
    got = am.mean_distance(attn, am.distance_matrix(g, g, (16.0, 16.0), prefix), g * g)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_two_block_rollout_equals_hand_product_and_rows_sum_to_one():
    rng = np.random.default_rng(0)
    a1, a2 = (rng.uniform(size=(1, 4, 4)) for _ in range(2))
    a1, a2 = a1 / a1.sum(-1, keepdims=True), a2 / a2.sum(-1, keepdims=True)
    eye = np.eye(4)
    expected = (0.5 * a2[0] + 0.5 * eye) @ (0.5 * a1[0] + 0.5 * eye)
    got = am.rollout([torch.from_numpy(a1), torch.from_numpy(a2)], 0.5)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)


def test_entropy_and_centre_share():
    flat = torch.ones(1, 4, 4)
    assert am.entropy(flat).item() == pytest.approx(math.log(16))
    spike = torch.zeros(1, 4, 4)
    spike[0, 1, 2] = 3.0
    assert am.entropy(spike).item() == pytest.approx(0.0)
    assert am.centre_share(flat, 0.5).item() == pytest.approx(4 / 16)  # rows/cols 1..2 of 4
    assert am.centre_share(spike, 0.5).item() == pytest.approx(1.0)


def test_streamed_std_equals_numpy_std_over_images():
    site = sites(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1))[0]
    stats = DistanceStats([site])
    values = []
    g = torch.Generator().manual_seed(0)
    for b in (4, 5, 3):
        attn = torch.rand(b, 3, 17, 17, generator=g).softmax(-1)
        stats.add(site.name, attn, b)
        stats.n += b
        values.append(am.mean_distance(attn.double(), site.dist, 16).numpy())
    values = np.concatenate(values)
    mean, std = stats.mean_std(site.name)
    np.testing.assert_allclose(mean, values.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, values.std(0, ddof=1), rtol=1e-4)


def test_subset_cka_from_per_head_inner_products_equals_cka_of_concatenation():
    """Linear Gram of a concatenation = sum of per-head Grams; check against the Song et al. formula in numpy."""
    from helpers import minibatch_reference
    from vitstudy.metrics.cka import MinibatchCKA, gram, u_center

    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(8, 3, 5)), rng.normal(size=(8, 7))) for _ in range(3)]
    acc = MinibatchCKA(4)
    for heads, ref in batches:
        us = [u_center(gram(torch.from_numpy(heads[:, h]), torch.float64)).flatten() for h in range(3)]
        acc.update(torch.stack(us + [u_center(gram(torch.from_numpy(ref), torch.float64)).flatten()]))
    got = subset_cka(acc.cross, [0, 2], 3)
    expected = minibatch_reference([b[0][:, [0, 2]].reshape(8, -1) for b in batches], [b[1] for b in batches])
    assert got == pytest.approx(expected, rel=1e-9)
    assert subsets([5, 1, 0, 2, 4, 3], 4, 3) == [[5, 1, 0, 2], [0, 2, 4, 3]]


def _reg_vit():
    """A tiny random-init DINOv2-with-registers ViT: class token + 4 registers + a 4x4 grid of 7 px patches."""
    torch.manual_seed(0)
    return (
        timm.create_model(
            "vit_small_patch14_reg4_dinov2",
            pretrained=False,
            img_size=28,
            patch_size=7,
            depth=2,
            embed_dim=32,
            num_heads=2,
            num_classes=10,
        )
        .eval()
        .double()
    )


def _qk_softmax(mod, x):
    """Float64 softmax(q k^T / sqrt(d)) from a timm Attention's own qkv projection (q/k norms included)."""
    b, t, _ = x.shape
    qkv = mod.qkv(x).reshape(b, t, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = mod.q_norm(qkv[0]), mod.k_norm(qkv[1])
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)


def test_registers_are_reported_apart_share_and_patch_distance_match_float64_loops():
    """Attention of a patch query to the class token or a register is counted at distance 0 in `mean_distance`
    (unchanged); `prefix_share` is the mean over patch queries of the attention to those 5 keys and
    `patch_mean_distance` the mean over patch queries of sum_{j patch} A_ij D_ij / sum_{j patch} A_ij, both checked
    against explicit loops on probabilities recomputed from the modules' own q/k; the table names the prefix keys."""
    from types import SimpleNamespace

    from vitstudy.analyses.attention import distance_table

    model = _reg_vit()
    site_list = sites(model)
    assert [s.num_prefix for s in site_list] == [5, 5] and site_list[0].prefix_names == "class, 4 registers"
    mods = dict(model.named_modules())
    inputs = {}
    hooks = [
        mods[s.name].register_forward_pre_hook(lambda m, a, _n=s.name: inputs.setdefault(_n, a[0])) for s in site_list
    ]
    torch.manual_seed(1)
    x = torch.randn(3, 3, 28, 28, dtype=torch.float64)
    stats = DistanceStats(site_list)
    with (
        unfused(model),
        tap(model, [s.layer for s in site_list], lambda l, t: stats.add(l.name, t, 3)),
        torch.no_grad(),
    ):
        model(x)
    stats.n = 3
    for h in hooks:
        h.remove()
    pos = [((r + 0.5) * 7, (c + 0.5) * 7) for r in range(4) for c in range(4)]
    for s in site_list:
        with torch.no_grad():
            a = _qk_softmax(mods[s.name], inputs[s.name]).numpy()  # (3, heads, 21, 21)
        share = np.zeros((3, s.heads))
        patch = np.zeros((3, s.heads))
        old = np.zeros((3, s.heads))
        for b in range(3):
            for h in range(s.heads):
                for i in range(16):
                    row = a[b, h, 5 + i]
                    moment = sum(row[5 + j] * math.dist(pos[i], pos[j]) for j in range(16))
                    share[b, h] += row[:5].sum() / 16
                    patch[b, h] += moment / row[5:].sum() / 16
                    old[b, h] += moment / 16
        mean, _ = stats.mean_std(s.name)
        got_share, got_patch = stats.prefix_means(s.name)
        np.testing.assert_allclose(mean, old.mean(0), rtol=1e-10)  # the papers' column, prefix keys at 0
        np.testing.assert_allclose(got_share, share.mean(0), rtol=1e-10)
        np.testing.assert_allclose(got_patch, patch.mean(0), rtol=1e-10)
        assert (got_patch > mean).all()  # renormalising over patch keys only lengthens the distance
    m = SimpleNamespace(name="reg", label="reg", weights="random")
    df = distance_table(m, stats, site_list, SimpleNamespace(dataset=SimpleNamespace(name="synthetic")))
    assert set(df.prefix_keys) == {"class, 4 registers"}
    row = df.iloc[0]
    assert row.prefix_share == pytest.approx(stats.prefix_means(site_list[0].name)[0][0])


def test_uniform_attention_with_registers_closed_forms():
    """Uniform attention over 1 + 4 + 16 tokens: prefix share 5/21; mean_distance the sum of the 4x4 grid's pairwise
    distances / (16 * 21) (prefix keys at 0); patch_mean_distance and its reference the grid's mean pairwise distance."""
    site = sites(_reg_vit())[0]
    pos = [((r + 0.5) * 7, (c + 0.5) * 7) for r in range(4) for c in range(4)]
    total = sum(math.dist(p, q) for p in pos for q in pos)
    attn = torch.full((2, site.heads, 21, 21), 1.0 / 21, dtype=torch.float64)
    split = site.split(attn)
    np.testing.assert_allclose(split.share.numpy(), 5 / 21, rtol=1e-12)
    np.testing.assert_allclose(split.patch_distance.numpy(), total / 256, rtol=1e-12)
    np.testing.assert_allclose(site.per_image(attn).numpy(), total / (16 * 21), rtol=1e-12)
    assert site.uniform_distance() == pytest.approx(total / (16 * 21), rel=1e-12)
    assert site.uniform_patch_distance() == pytest.approx(total / 256, rel=1e-12)
    onehot = torch.zeros(1, site.heads, 21, 21, dtype=torch.float64)
    onehot[..., 2] = 1.0  # every query on a register: no patch mass, no patch distance
    assert site.split(onehot).share.eq(1).all() and site.split(onehot).patch_distance.isnan().all()


# ------------------------------------------------------------------------ capture against manual softmax


def _manual_maps(model, x):
    """Float64 softmax(q k^T * scale [+ bias + mask]) from each attention module's own qkv projection."""
    inputs, maps = {}, {}
    mods = {s.name: dict(model.named_modules())[s.name] for s in sites(model)}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, kw, n=n: inputs.__setitem__(n, (args, kw)), with_kwargs=True)
        for n, m in mods.items()
    ]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    for n, mod in mods.items():
        (xa, *_), kw = inputs[n]
        b, t, _ = xa.shape
        qkv = torch.nn.functional.linear(
            xa.double(), mod.qkv.weight.double(), None if mod.qkv.bias is None else mod.qkv.bias.double()
        )
        q, k, _ = qkv.reshape(b, t, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4)
        logits = (q * mod.scale) @ k.transpose(-2, -1)
        if hasattr(mod, "relative_position_bias_table"):  # Swin: relative position bias and the shift mask
            logits = logits + mod._get_rel_pos_bias().double()
            mask = kw.get("mask")
            if mask is not None:
                nw = mask.shape[0]
                logits = (logits.view(-1, nw, mod.num_heads, t, t) + mask.double()[None, :, None]).view(
                    -1, mod.num_heads, t, t
                )
        maps[n] = logits.softmax(-1)
    return maps


@pytest.mark.parametrize("family", list(FAMILIES))
def test_captured_maps_are_softmax_rows_matching_manual_recomputation(family):
    name, kw = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, **kw).eval()
    x = torch.randn(3, 3, 32, 32)
    site_list = sites(model)
    captured = {}
    with (
        unfused(model),
        tap(model, [s.layer for s in site_list], lambda l, t: captured.__setitem__(l.name, t.clone())),
        torch.inference_mode(),
    ):
        model(x)
    assert list(captured) == [s.name for s in site_list]  # every attention module, once, in order
    manual = _manual_maps(model, x)
    for s in site_list:
        a = captured[s.name]
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(a.double(), manual[s.name], atol=1e-5, rtol=1e-4)
        s.check(a, 3)


def test_fused_attention_is_restored_after_capture():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    before = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    with unfused(model):
        assert not any(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == before


def test_swin_distance_accounts_for_the_shift():
    """Window distances against positions pushed through timm's own roll and window_partition."""
    from timm.models.swin_transformer import window_partition

    torch.manual_seed(0)
    model = timm.create_model(FAMILIES["swin"][0], **SWIN_KW).eval()
    shifted = [s for s in sites(model) if any(s.shift)]
    assert shifted and shifted[0].shift == (2, 2) and shifted[0].window == (4, 4)
    s = shifted[0]
    gh, gw = s.grid
    pos = torch.arange(gh * gw, dtype=torch.float64).view(1, gh, gw, 1)
    rolled = torch.roll(pos, shifts=(-s.shift[0], -s.shift[1]), dims=(1, 2))
    flat = window_partition(rolled, s.window).reshape(-1, s.window[0] * s.window[1]).long()  # original index per slot
    rows, cols = (flat // gw).double() * s.stride[0], (flat % gw).double() * s.stride[1]
    expected = torch.sqrt((rows[:, :, None] - rows[:, None]) ** 2 + (cols[:, :, None] - cols[:, None]) ** 2)
    torch.testing.assert_close(s.dist, expected)
    attn = _manual_maps(model, torch.randn(2, 3, 32, 32))[s.name]
    got = s.per_image(attn)
    a = attn.view(2, -1, s.heads, 16, 16)
    brute = (a * expected[None, :, None]).sum(-1).mean(dim=(1, 3))
    torch.testing.assert_close(got, brute)


# ---------------------------------------------------------------------------------------------- CLI


def test_attention_distance_end_to_end_vit_and_distilled_deit(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(
        [
            "run",
            "analysis=attention_distance",
            *TINY_VIT,
            *SMALL_DATA,
            "dataset.num_images=10",
            "analysis.compare=[{name:deit_tiny_distilled_patch16_224,pretrained:false,"
            "kwargs:{img_size:32,patch_size:8,depth:3}}]",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "attention_distance.csv")
    assert {"model", "block", "head", "mean_distance", "std_distance", "num_images", "layer", "weights"} <= set(
        df.columns
    )
    assert len(df) == 2 * 3 * 3 and set(df.model) == {"vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"}
    assert (df.num_images == 10).all() and df.std_distance.gt(0).all()
    # a 4x4 grid of 8-px patches: distances lie in [0, max pairwise distance]
    assert df.mean_distance.between(0, 8 * math.hypot(3, 3)).all()
    assert df[df.model.str.startswith("deit")].prefix_tokens.unique().tolist() == [2]
    assert df.groupby("model").prefix_keys.first().to_dict() == {
        "vit_tiny_patch16_224": "class",
        "deit_tiny_distilled_patch16_224": "class, distillation",
    }
    # prefix keys at 0 only shorten the paper's column: the renormalised patch-key distance is at least as long
    assert df.prefix_share.between(0, 1).all() and (df.patch_mean_distance >= df.mean_distance - 1e-9).all()
    for f in ("attention_distance.png", "attention_distance_depth.png", "images.csv", "run.json"):
        assert (out / f).stat().st_size > 0


def test_compare_twin_uses_its_own_checkpoint_not_the_main_models(tmp_path, capsys):
    """Raghu Fig. 4 compares two weight sets of one architecture: the compare entry must not inherit model.checkpoint."""
    arch = dict(img_size=32, patch_size=8, depth=3)
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"w{seed}.pth")
        torch.save(timm.create_model("vit_tiny_patch16_224", **arch).state_dict(), paths[-1])
    kwargs = ["model.kwargs.img_size=32", "model.kwargs.patch_size=8", "model.kwargs.depth=3"]
    twin = (
        f"{{name:vit_tiny_patch16_224,checkpoint:'{paths[1]}',kwargs:{{img_size:32,patch_size:8,depth:3}},label:twin}}"
    )
    code, _, err = cli(
        [
            "run",
            "analysis=attention_distance",
            "model.name=vit_tiny_patch16_224",
            f"model.checkpoint={paths[0]}",
            *kwargs,
            *SMALL_DATA,
            "dataset.num_images=8",
            f"analysis.compare=[{twin}]",
            f"hydra.run.dir={tmp_path / 'both'}",
        ],
        capsys,
    )
    assert code == 0, err
    both = pd.read_csv(tmp_path / "both" / "attention_distance.csv")
    code, _, err = cli(
        [
            "run",
            "analysis=attention_distance",
            "model.name=vit_tiny_patch16_224",
            f"model.checkpoint={paths[1]}",
            *kwargs,
            *SMALL_DATA,
            "dataset.num_images=8",
            f"hydra.run.dir={tmp_path / 'alone'}",
        ],
        capsys,
    )
    assert code == 0, err
    alone = pd.read_csv(tmp_path / "alone" / "attention_distance.csv")
    got = both[both.label == "twin"].mean_distance.to_numpy()
    np.testing.assert_allclose(got, alone.mean_distance.to_numpy(), rtol=0, atol=1e-12)
    main = both[both.label != "twin"].mean_distance.to_numpy()
    assert np.abs(main - got).max() > 1e-3  # the two weight sets really differ
    assert set(both.weights) == {f"file:{paths[0]}", f"file:{paths[1]}"}


def test_attention_distance_end_to_end_swin(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        ["run", "analysis=attention_distance", *SWIN_CLI, *SMALL_DATA, "dataset.num_images=8", f"hydra.run.dir={out}"],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "attention_distance.csv")
    # depths (2, 2, 6, 2), heads (3, 6, 12, 24); grids 8, 4, 2, 1 with windows 4, 4, 2, 1: only stage 0 shifts
    assert len(df) == 2 * 3 + 2 * 6 + 6 * 12 + 2 * 24 and set(df.kind) == {"window"}
    assert set(df[df.layer == "layers.0.blocks.1.attn"]["shift"]) == {"2x2"}
    assert set(df[df.layer == "layers.1.blocks.1.attn"]["shift"]) == {"0x0"}
    assert (df[df.layer.str.startswith("layers.3.")].mean_distance.abs() < 1e-9).all()  # 1x1 window: only itself
    # no prefix tokens: nothing to report apart, the renormalised distance is the paper's (rows sum to 1)
    assert set(df.prefix_keys) == {"none"} and (df.prefix_share == 0).all()
    np.testing.assert_allclose(df.patch_mean_distance, df.mean_distance, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(df.uniform_patch_distance, df.uniform_distance, rtol=1e-12)
    w = df.window.str.split("x").str[0].astype(int)
    assert (df.mean_distance >= 0).all() and (df.mean_distance <= df.stride_px * np.hypot(w - 1, w - 1) + 1e-6).all()


def test_local_global_cka_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=local_global_cka",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            "dataset.num_images=16",
            "analysis.subset_size=2",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "local_global_cka.csv")
    assert set(df.reference_layer) == {"layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0"}
    assert df.subset.nunique() == 2 and df.cka.between(-1, 1).all()
    assert df.groupby("subset").subset_mean_distance.first().is_monotonic_increasing


def test_attention_rollout_end_to_end_cls_and_gap(tmp_path, capsys):
    out = tmp_path / "cls"
    code, _, err = cli(
        [
            "run",
            "analysis=attention_rollout",
            *TINY_VIT,
            *SMALL_DATA,
            "dataset.num_images=10",
            "analysis.num_show=3",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "attention_rollout.csv")
    assert len(df) == 10 and (df["query"] == "cls").all()
    assert df.entropy_normalised.between(0, 1 + 1e-9).all() and df.centre_share.between(0, 1).all()
    assert (out / "attention_rollout.png").stat().st_size > 0
    gap = tmp_path / "gap"
    code, _, err = cli(
        [
            "run",
            "analysis=attention_rollout",
            "model.name=vit_base_patch16_gap_224",
            "model.pretrained=false",
            "model.kwargs.img_size=32",
            "model.kwargs.patch_size=8",
            "model.kwargs.depth=2",
            "model.kwargs.embed_dim=64",
            "model.kwargs.num_heads=4",
            *SMALL_DATA,
            "dataset.num_images=8",
            f"hydra.run.dir={gap}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(gap / "attention_rollout.csv")
    assert df["query"].str.startswith("mean of patch tokens").all()
    np.testing.assert_allclose(df.patch_mass, 1.0, rtol=1e-6)  # no prefix tokens: all mass on patches


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["analysis=attention_distance", "model.name=resnet18", "model.pretrained=false"],
            "has no self-attention to measure",
        ),
        (
            ["analysis=attention_rollout", "model.name=resnet18", "model.pretrained=false"],
            "has no self-attention to measure",
        ),
        (["analysis=attention_distance", *TINY_VIT, "analysis.blocks=[0,5]"], "analysis.blocks has 5"),
        (["analysis=attention_distance", *TINY_VIT, "+analysis.block=1"], "unknown parameter analysis.block"),
        (
            ["analysis=local_global_cka", *TINY_VIT, *TINY_RESNET, "analysis.subset_size=4"],
            "analysis.subset_size=4 must be between 1 and the 3 heads",
        ),
        (
            ["analysis=local_global_cka", *TINY_VIT, *TINY_RESNET, "analysis.block=7"],
            "analysis.block=7 is out of range",
        ),
        (["analysis=attention_rollout", *TINY_VIT, "analysis.residual=0"], "analysis.residual=0.0 must be in (0, 1]"),
        (["analysis=local_global_cka", *SWIN_CLI, *TINY_RESNET], "needs attention over the whole token grid"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    code, _, err = cli(["run", *args, *SMALL_DATA, "dataset.num_images=8", f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1, err
