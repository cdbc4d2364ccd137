"""skip_ratio and skip_ablation: hand-made residual blocks with known ratios, a lesion computed by hand,
independent float64 ratios, end-to-end CLI runs and clear messages."""

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from timm.models.resnet import BasicBlock
from timm.models.vision_transformer import Block
from torch import nn

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, assert_one_line_error, cli
from vitstudy.analyses.skip import measure
from vitstudy.anatomy.residual import branches, remove_skip
from vitstudy.errors import VitstudyError
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel


class Zero(nn.Module):
    def forward(self, x, **kw):
        return torch.zeros_like(x)


class Echo(nn.Module):
    def forward(self, x, **kw):
        return x


class Tokens(nn.Module):
    """x (B, L, C) through residual blocks; no patch embedding."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


def loaded(module):
    return LoadedModel(
        key="model",
        name="hand-made",
        label="hand-made",
        module=module.eval(),
        transform=None,
        data_config={},
        weights="none",
    )


def batches(x, size=4):
    """What engine.stream iterates: ((inputs of model 0,), labels) per batch."""
    return [((x[i : i + size],), torch.zeros(len(x[i : i + size]), dtype=torch.long)) for i in range(0, len(x), size)]


def run_measure(module, x, aggregate="mean_of_ratios"):
    loader = batches(x)
    layers_of = lambda m, names: resolve(m.module, names, tuple(x.shape[1:]))  # noqa: E731
    tokens, summary, _ = measure([loaded(module)], layers_of, loader, "cpu", 3, aggregate, "hand")
    return tokens, summary


def test_zero_branch_is_infinite_and_flagged_echo_branch_is_one():
    torch.manual_seed(0)
    zero_blk, echo_blk = Block(8, 2), Block(8, 2)
    zero_blk.attn, zero_blk.mlp = Zero(), Zero()  # f(z) = 0
    echo_blk.norm1, echo_blk.attn, echo_blk.norm2, echo_blk.mlp = Echo(), Echo(), Echo(), Echo()  # f(z) = z
    x = torch.randn(8, 5, 8)
    tokens, summary = run_measure(Tokens([zero_blk, echo_blk]), x)
    z = tokens[tokens.block == "blocks.0"]
    assert np.isinf(z.ratio).all() and np.isinf(z.ratio_of_means).all() and (z.zero_branch == 8).all()
    assert (z.flag == "zero branch output: infinite ratio").all()
    e = tokens[tokens.block == "blocks.1"]
    np.testing.assert_allclose(e.ratio, 1.0, rtol=1e-12)
    np.testing.assert_allclose(e.ratio_of_means, 1.0, rtol=1e-12)
    assert (e.zero_branch == 0).all() and (e.flag.fillna("") == "").all()
    s = summary.set_index(["block", "sublayer", "group"])
    assert np.isinf(s.loc[("blocks.0", "attn", "all"), "ratio"]) and s.loc[
        ("blocks.1", "mlp", "all"), "ratio"
    ] == pytest.approx(1.0)


def test_ratios_match_independent_float64_norms(tiny_vit, images):
    """Per-token mean of ratios and ratio of means, from hooks and numpy, on a random-init tiny ViT."""
    x = images[:8]
    captured = {}
    blk = tiny_vit.blocks[1]
    h1 = blk.norm2.register_forward_pre_hook(lambda m, a: captured.__setitem__("z", a[0].double().numpy()))
    h2 = blk.ls2.register_forward_hook(lambda m, a, o: captured.__setitem__("f", o.double().numpy()))
    with torch.no_grad():
        tiny_vit(x)
    h1.remove(), h2.remove()
    nz, nf = np.linalg.norm(captured["z"], axis=-1), np.linalg.norm(captured["f"], axis=-1)  # (8, 17)
    for aggregate, want in (("mean_of_ratios", (nz / nf).mean(0)), ("ratio_of_means", nz.mean(0) / nf.mean(0))):
        loader = batches(x)
        layers_of = lambda m, names: resolve(m.module, names, (3, 32, 32))  # noqa: E731
        tokens, summary, _ = measure([loaded(tiny_vit)], layers_of, loader, "cpu", 3, aggregate, "t")
        got = tokens[(tokens.block == "blocks.1") & (tokens.sublayer == "mlp")].sort_values("token")
        np.testing.assert_allclose(got.ratio, want, rtol=1e-5)
        if (
            aggregate == "mean_of_ratios"
        ):  # standard errors over the 8 images: sd / sqrt(n); ratio of means: delta method
            se = (nz / nf).std(0, ddof=1) / np.sqrt(8)
        else:
            r = nz.mean(0) / nf.mean(0)
            se = np.sqrt(((nz - r * nf) ** 2).sum(0) / (8 * 7)) / nf.mean(0)
        np.testing.assert_allclose(got.ratio_se, se, rtol=1e-4)
        np.testing.assert_allclose(got.ratio_ci_high - got.ratio, 2.3646242515927 * se, rtol=1e-4)  # t(7), 0.975
        cls = summary[(summary.block == "blocks.1") & (summary.sublayer == "mlp") & (summary.group == "cls")]
        assert cls.ratio.item() == pytest.approx(want[0], rel=1e-5)
    assert got.is_cls.tolist()[:2] == [True, False]
    np.testing.assert_allclose(got.median_of_ratios.to_numpy()[:3], np.median(nz / nf, axis=0)[:3], rtol=1e-5)


def test_remove_skip_two_block_network_by_hand():
    torch.manual_seed(0)
    b0, b1 = Block(8, 2), Block(8, 2)
    net = Tokens([b0, b1]).eval()
    x = torch.randn(3, 4, 8)
    with torch.no_grad():
        intact = net(x)
        for which in ("attn", "mlp", "both"):
            with remove_skip(net, ["blocks.0"], which):
                got = net(x)
            a = b0.ls1(b0.attn(b0.norm1(x)))
            h = a if which in ("attn", "both") else x + a
            m = b0.ls2(b0.mlp(b0.norm2(h)))
            h = m if which in ("mlp", "both") else h + m
            want = h + b1.ls1(b1.attn(b1.norm1(h)))
            want = want + b1.ls2(b1.mlp(b1.norm2(want)))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
            assert (got - intact).abs().max() > 1e-3
        torch.testing.assert_close(net(x), intact, rtol=0, atol=0)  # restored


def test_remove_skip_resnet_basic_block_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 4)).eval()
    for blk in net:
        nn.init.normal_(blk.bn2.weight)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        intact = net(x)
        with remove_skip(net, ["1"]):
            got = net(x)
        b = net[1]
        want = torch.relu(b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(net[0](x)))))))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(net(x), intact, rtol=0, atol=0)


def test_branch_points_of_timm_families(tiny_vit):
    vit = {(b.block, b.sublayer): (b.skip, b.branch) for b in branches(tiny_vit)}
    assert vit[("blocks.2", "mlp")] == ("blocks.2.norm2:in", "blocks.2.ls2")
    r50 = branches(timm.create_model("resnet50"))
    assert (r50[0].skip, r50[0].branch, r50[1].skip) == ("layer1.0.downsample", "layer1.0.bn3", "layer1.1:in")
    with pytest.raises(VitstudyError, match="no residual blocks of a known family"):
        branches(nn.Sequential(nn.Conv2d(3, 4, 3)))


RESNET_AS_MODEL = [
    "model.name=resnet18",
    "model.kwargs.img_size=null",
    "model.kwargs.patch_size=null",
    "model.kwargs.depth=null",
    "model.data.input_size=[3,32,32]",
]


def test_skip_ratio_end_to_end_vit_with_zero_init_resnet_reference(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=skip_ratio",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            "analysis.reference=true",
            "analysis.aggregate=ratio_of_means",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    tokens, summary = pd.read_csv(out / "skip_ratio.csv"), pd.read_csv(out / "skip_ratio_summary.csv")
    assert {
        "model",
        "block",
        "sublayer",
        "token",
        "ratio",
        "aggregate",
        "mean_of_ratios",
        "ratio_of_means",
        "median_of_ratios",
        "zero_branch",
        "flag",
    } <= set(tokens.columns)
    assert (tokens["aggregate"] == "ratio_of_means").all()
    vit = summary[summary.model == "vit_tiny_patch16_224"]
    assert set(vit.group) == {"all", "patches", "cls"} and np.isfinite(vit.ratio).all() and len(vit) == 3 * 2 * 3
    res = summary[summary.model == "resnet18"]  # timm zero-initialises the last BN: the branch outputs zeros
    assert len(res) == 8 and np.isinf(res.ratio).all() and (res.zero_branch > 0).all()
    record = json.loads((out / "run.json").read_text())
    assert record["aggregate"] == "ratio_of_means" and len(record["zero_branches"]) == 8
    assert (out / "skip_ratio.png").stat().st_size > 0


def test_skip_ratio_resnet_finite_without_zero_init(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=skip_ratio",
            *TINY_VIT,
            *RESNET_AS_MODEL,
            "+model.kwargs.zero_init_last=false",
            *SMALL_DATA,
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    s = pd.read_csv(out / "skip_ratio_summary.csv")
    assert (
        len(s) == 8
        and np.isfinite(s.ratio).all()
        and (s.ratio > 0).all()
        and (s["aggregate"] == "mean_of_ratios").all()
    )


def test_skip_ablation_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=skip_ablation",
            *TINY_VIT,
            "model.kwargs.num_classes=10",
            *SMALL_DATA,
            "analysis.blocks=[1]",
            "analysis.sublayer=attn",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "skip_ablation.csv")
    m = df.pivot(index="index_x", columns="index_y", values="cka").to_numpy()
    assert m.shape == (3, 3) and m[0, 0] == pytest.approx(1.0, abs=1e-6)  # before the lesion: unchanged
    assert m[2, 2] < 0.999
    assert df.lesion.str.contains("inference-time").all() and (df.lesioned_blocks == "blocks.1").all()
    acc = pd.read_csv(out / "skip_ablation_accuracy.csv")
    assert acc.variant.tolist() == ["intact", "lesioned"] and acc.top1.between(0, 1).all()
    assert acc.top1_change.iloc[0] == 0 and acc.lesion.str.contains("inference-time").all()
    record = json.loads((out / "run.json").read_text())
    assert "inference-time" in record["lesion"] and record["lesioned_blocks"] == ["blocks.1"]


SKIP_BAD = {
    "no residual structure": (
        [
            "analysis=skip_ratio",
            "model.name=densenet121",
            "model.kwargs.img_size=null",
            "model.kwargs.patch_size=null",
            "model.kwargs.depth=null",
            "model.data.input_size=[3,32,32]",
        ],
        "DenseNet has no skip connections to measure: DenseNet concatenates",
    ),
    "bad aggregate": (
        ["analysis=skip_ratio", "analysis.aggregate=median"],
        "analysis.aggregate must be one of mean_of_ratios, ratio_of_means",
    ),
    "unknown parameter": (["analysis=skip_ratio", "+analysis.aggregat=x"], "unknown parameter analysis.aggregat"),
    "block out of range": (["analysis=skip_ablation", "analysis.blocks=[7]"], "block 7 does not exist"),
    "bad sublayer": (
        ["analysis=skip_ablation", "analysis.sublayer=ffn"],
        "analysis.sublayer must be one of attn, mlp, both",
    ),
    "accuracy without matching labels": (
        ["analysis=skip_ablation", "analysis.accuracy=true"],
        "use analysis.accuracy=auto",
    ),
}


@pytest.mark.parametrize("case", list(SKIP_BAD))
def test_bad_input_one_line(case, tmp_path, capsys):
    extra, expected = SKIP_BAD[case]
    assert_one_line_error(["run", *TINY_VIT, *SMALL_DATA, *extra], expected, tmp_path / "run", capsys)


def test_registers_are_their_own_token_group():
    """A ViT with a class token and 4 registers: the summary's registers group is tokens 1-4 (timm's order),
    its mean of ratios the mean of those tokens' per-token ratios."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, reg_tokens=4
    )
    x = torch.randn(8, 3, 32, 32)
    tokens, summary = run_measure(model, x)
    reg = summary[summary.group == "registers"]
    assert len(reg) == 2 * 2 and (reg.positions == 4).all()
    for _, row in reg.iterrows():
        per = tokens[(tokens.block == row.block) & (tokens.sublayer == row.sublayer)].set_index("token").ratio
        assert row.ratio == pytest.approx(per.loc[1:4].mean(), rel=1e-12)
        cls = summary[(summary.block == row.block) & (summary.sublayer == row.sublayer) & (summary.group == "cls")]
        assert cls.ratio.item() == pytest.approx(per.loc[0], rel=1e-12)


def _output_of(module: nn.Module, run) -> torch.Tensor:
    """What `module` returns while `run()` runs (a tuple's stream is picked by the caller)."""
    got = []
    handle = module.register_forward_hook(lambda m, a, o: got.append(o))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return got[-1]


def test_remove_skip_maxvit_attn_or_mlp_keeps_the_mbconv_residual():
    """A MaxViT block is an MBConv unit, then window and grid attention with their MLPs: sublayer=attn / mlp remove
    those skips only; both also removes the MBConv shortcut (the unit then outputs its branch f(z))."""
    from timm.models.maxxvit import MaxxVitBlock, MaxxVitTransformerCfg

    torch.manual_seed(0)
    net = nn.Sequential(
        MaxxVitBlock(16, 16, transformer_cfg=MaxxVitTransformerCfg(dim_head=8, window_size=(4, 4), grid_size=(4, 4)))
    ).eval()
    x = torch.randn(2, 16, 8, 8)
    mbconv = net[0].conv
    with torch.no_grad():
        intact, unit = net(x), mbconv(x)
    for which in ("attn", "mlp", "both"):
        with remove_skip(net, ["0"], which):
            got_unit = _output_of(mbconv, lambda: net(x))
            with torch.no_grad():
                assert (net(x) - intact).abs().max() > 1e-3  # some skip of the block was removed
        want = unit if which != "both" else _output_of(mbconv.drop_path, lambda: mbconv(x))
        torch.testing.assert_close(got_unit, want, rtol=0, atol=1e-6)
    assert (unit - _output_of(mbconv.drop_path, lambda: mbconv(x))).abs().max() > 1e-3  # the shortcut carries something


def test_remove_skip_tnt_patch_stream_by_hand():
    """TNT: the patch-token stream's attention and MLP skips are removed; the pixel stream and its injection into
    the patch tokens are kept (they are not sublayers of the anatomy)."""
    from timm.models.tnt import Block as TntBlock

    torch.manual_seed(0)
    b = TntBlock(dim=4, dim_out=16, num_pixel=4, num_heads_in=1, num_heads_out=2)
    net = nn.Sequential(b).eval()
    pixel, patch = torch.randn(2 * 3, 4, 4), torch.randn(2, 4, 16)  # 2 images, 3 patches of 4 pixels, + class token
    injected = []
    hook = b.norm_out.register_forward_pre_hook(lambda m, a: injected.append(a[0]))
    with torch.no_grad():
        intact_pixel, intact_patch = b(pixel, patch)
    hook.remove()
    z = injected[0]  # the patch stream after the pixel injection: the attention sublayer's input
    with torch.no_grad():
        for which in ("attn", "mlp", "both"):
            with remove_skip(net, ["0"], which):
                got_pixel, got_patch = b(pixel, patch)
            a = b.attn_out(b.norm_out(z))
            h = a if which in ("attn", "both") else z + a
            m = b.mlp(b.norm_mlp(h))
            want = m if which in ("mlp", "both") else h + m
            torch.testing.assert_close(got_patch, want, rtol=0, atol=1e-6)
            torch.testing.assert_close(got_pixel, intact_pixel, rtol=0, atol=0)
            assert (got_patch - intact_patch).abs().max() > 1e-3
        torch.testing.assert_close(b(pixel, patch)[1], intact_patch, rtol=0, atol=0)  # restored


def test_remove_skip_mvitv2_pooled_and_projected_block_by_hand():
    """MViT-v2: a block that pools its queries (and the attention shortcut) and widens the channels (a projected
    MLP shortcut): with a skip removed the block returns its branch alone."""
    from timm.models.mvitv2 import MultiScaleBlock

    torch.manual_seed(0)
    b = MultiScaleBlock(
        dim=8,
        dim_out=16,
        num_heads=2,
        feat_size=(4, 4),
        kernel_q=(3, 3),
        kernel_kv=(3, 3),
        stride_q=(2, 2),
        stride_kv=(2, 2),
    )
    net = nn.Sequential(b).eval()
    assert b.shortcut_pool_attn is not None and b.shortcut_proj_mlp is not None
    x = torch.randn(2, 1 + 16, 8)
    with torch.no_grad():
        intact, size = b(x, [4, 4])
        stream = []
        hook = b.norm2.register_forward_pre_hook(lambda m, a: stream.append(a[0]))
        b(x, [4, 4])
        hook.remove()
        a = b.attn(b.norm1(x), [4, 4])[0]  # the attention branch f(z), on the pooled 2 x 2 grid (+ class token)
        for which in ("attn", "mlp", "both"):
            with remove_skip(net, ["0"], which):
                got, got_size = b(x, [4, 4])
            h = a if which in ("attn", "both") else stream[0]
            m = b.mlp(b.norm2(h))
            want = m if which in ("mlp", "both") else b.shortcut_proj_mlp(b.norm2(h)) + m
            assert got_size == size == [2, 2] and got.shape == (2, 1 + 4, 16)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
            assert (got - intact).abs().max() > 1e-3
        torch.testing.assert_close(b(x, [4, 4])[0], intact, rtol=0, atol=0)  # restored
