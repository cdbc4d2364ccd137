"""Issue 20 item 3: token groups come from each layer's own prefix tokens, not from the first block's.

ConViT's class token joins at `local_up_to_layer`: its first blocks have 16 patch tokens, the last ones the class
token and the 16 patches. Ratios are computed by hand from tensors captured with plain hooks, in float64.
"""

import numpy as np
import pytest
import timm
import torch

from vitstudy.analyses.skip import measure
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel


@pytest.fixture(scope="module")
def convit():
    torch.manual_seed(0)
    net = timm.create_model(
        "convit_tiny", img_size=32, patch_size=8, depth=4, local_up_to_layer=2, embed_dim=32, num_heads=2
    ).eval()
    return LoadedModel(
        key="model",
        name="convit",
        label="convit",
        module=net,
        transform=None,
        data_config={"input_size": (3, 32, 32)},
        weights="random-init",
    )


def by_hand(net, x):
    """Per block and sublayer: (images, tokens) ratios ‖z‖ / ‖f(z)‖ from the inputs of norm1 and norm2 and the block output."""
    seen = {}
    handles = [
        mod.register_forward_pre_hook(lambda m, a, _n=name: seen.__setitem__(_n, a[0].double().clone()))
        for name, mod in net.named_modules()
        if name.endswith(("norm1", "norm2")) and name.startswith("blocks.")
    ]
    handles += [
        blk.register_forward_hook(lambda m, a, o, _n=f"blocks.{i}": seen.__setitem__(_n, o.double().clone()))
        for i, blk in enumerate(net.blocks)
    ]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    out = {}
    for i in range(len(net.blocks)):
        z1, z2, post = seen[f"blocks.{i}.norm1"], seen[f"blocks.{i}.norm2"], seen[f"blocks.{i}"]
        out[(i, "attn")] = (z1.norm(dim=-1) / (z2 - z1).norm(dim=-1)).numpy()
        out[(i, "mlp")] = (z2.norm(dim=-1) / (post - z2).norm(dim=-1)).numpy()
    return out


def test_skip_ratio_groups_follow_each_blocks_own_class_token(convit):
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    loader = [([x[:6]], torch.zeros(6, dtype=torch.long)), ([x[6:]], torch.zeros(6, dtype=torch.long))]
    tokens, summary, _ = measure(
        [convit],
        lambda m, names: resolve(m.module, names, (3, 32, 32)),
        loader,
        "cpu",
        heatmap_tokens=17,
        progress=False,
    )
    hand = by_hand(convit.module, x)
    for (block, sub), r in hand.items():
        rows = tokens[(tokens["index"] == block) & (tokens.sublayer == sub)].sort_values("token")
        late = block >= 2  # the class token has joined
        assert len(rows) == (17 if late else 16)
        assert rows.is_cls.tolist() == ([True] + [False] * 16 if late else [False] * 16)
        np.testing.assert_allclose(rows.ratio.to_numpy(), r.mean(0), rtol=1e-4)
        groups = summary[(summary["index"] == block) & (summary.sublayer == sub)].set_index("group")
        assert sorted(groups.index) == (["all", "cls", "patches"] if late else ["all"])
        assert groups.loc["all", "positions"] == r.shape[1]
        assert groups.loc["all", "ratio"] == pytest.approx(r.mean(), rel=1e-4)  # every token, the class token too
        if late:
            assert groups.loc["cls", "ratio"] == pytest.approx(r[:, 0].mean(), rel=1e-4)
            assert groups.loc["patches", "ratio"] == pytest.approx(r[:, 1:].mean(), rel=1e-4)
    from vitstudy.plots.skip import skip_ratio_figure

    fig = skip_ratio_figure(tokens, summary, 10, "mean_of_ratios")  # spatial line over every block, CLS where it is
    ax = next(a for a in fig.axes if a.get_xlabel() == "block index")
    lines = {line.get_label().replace(" (random init)", ""): line.get_xdata().tolist() for line in ax.get_lines()}
    assert lines["convit Self-Attention"] == [0, 1, 2, 3] and lines["convit Self-Attention CLS"] == [2, 3]


def test_linear_probe_reads_the_class_token_only_where_it_has_joined(convit):
    """The 'cls' probe of a ConViT block before `local_up_to_layer` was the first patch token."""
    from vitstudy.analyses.probe import Extractor

    layers = resolve(convit.module, ["blocks.1", "blocks.2"], (3, 32, 32))
    extract = Extractor(convit.module, layers, ["cls", "gap", "tokens"], None)
    early, late = torch.randn(2, 16, 32), torch.randn(2, 17, 32)
    got = extract(layers[0], early)
    assert "cls" not in got
    torch.testing.assert_close(got["gap"][:, 0], early.mean(1))
    got = extract(layers[1], late)
    torch.testing.assert_close(got["cls"][:, 0], late[:, 0])
    torch.testing.assert_close(got["gap"][:, 0], late[:, 1:].mean(1))
    torch.testing.assert_close(got["tokens"], late[:, 1:])


def test_skip_ratio_groups_of_a_hybrid_vit_whose_first_blocks_are_cnn_stages():
    """ViT-S/R26 (64 px): the ResNet stages' positions form one group; the ViT blocks after them keep cls/patches."""
    torch.manual_seed(0)
    net = timm.create_model("vit_small_r26_s32_224", img_size=64, depth=1, embed_dim=32, num_heads=2).eval()
    m = LoadedModel(
        key="model",
        name="hybrid",
        label="hybrid",
        module=net,
        transform=None,
        data_config={"input_size": (3, 64, 64)},
        weights="random-init",
    )
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loader = [([x[:4]], torch.zeros(4, dtype=torch.long)), ([x[4:]], torch.zeros(4, dtype=torch.long))]
    tokens, summary, _ = measure(
        [m], lambda mm, names: resolve(mm.module, names, (3, 64, 64)), loader, "cpu", progress=False
    )
    vit = summary.sublayer.isin(["attn", "mlp"])
    assert set(summary[~vit].group) == {"all"} and not tokens[~tokens.sublayer.isin(["attn", "mlp"])].is_cls.any()
    for _, g in summary[vit].groupby("sublayer"):
        assert dict(zip(g.group, g.positions)) == {"all": 5, "patches": 4, "cls": 1}  # 2 x 2 patches at stride 32
    assert tokens[tokens.sublayer.isin(["attn", "mlp"])].groupby("sublayer").is_cls.sum().tolist() == [1, 1]
