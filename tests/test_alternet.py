"""AlterNet (Park & Kim 2022 Fig. 11; docs/methods.md#alternet): structure, parameter count from a formula, window attention
against hand-derived cases, layer specs, and end-to-end `vitstudy run` / `vitstudy train` on a tiny variant."""

import json

import pandas as pd
import pytest
import timm
import torch

import vitstudy.zoo.alternet as A
from helpers import cli
from vitstudy.errors import VitstudyError
from vitstudy.pipeline import layers

# a CPU-sized AlterNet: blocks 1-2-2-2, widths 32-256, MSAs at the end of c2, c3, c4, head dimension 8
TINY = [
    "model=alternet50_cifar",
    "model.kwargs.layers=[1,2,2,2]",
    "model.kwargs.num_msa=[0,1,1,1]",
    "+model.kwargs.channels=[32,64,128,256]",
    "+model.kwargs.stem_chs=16",
    "model.kwargs.dim_head=8",
]


@pytest.fixture(scope="module")
def full():
    return timm.create_model("alternet50_cifar").eval()


def attn_blocks(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, A.LocalAttentionBlock)}


def test_forward_shape_and_attention_placement(full):
    with torch.no_grad():
        assert full(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    blocks = attn_blocks(full)
    # c2: last block; c3: last block; c4: Conv, MSA, Conv, MSA; c1: none
    assert sorted(blocks) == ["stages.1.blocks.3", "stages.2.blocks.5", "stages.3.blocks.1", "stages.3.blocks.3"]
    assert [len(s.blocks) for s in full.stages] == [3, 4, 6, 4]
    assert {n: (b.attn.heads, b.attn.dim_head, b.attn.window_size) for n, b in blocks.items()} == {
        "stages.1.blocks.3": (6, 64, 4),
        "stages.2.blocks.5": (12, 64, 4),
        "stages.3.blocks.1": (24, 64, 4),
        "stages.3.blocks.3": (24, 64, 4),
    }
    assert all(b.attn.rel_pos_bias.shape == (7, 7) for b in blocks.values())  # (2w-1)^2, shared across heads
    assert not any("mlp" in n for n, _ in full.named_modules())
    assert (
        type(full.stem.conv).__name__ == "Conv2d"
        and full.stem.conv.kernel_size == (3, 3)
        and full.stem.conv.stride == (1, 1)
    )


def test_parameter_count_matches_formula(full):
    def bottleneck(cin, m, proj):  # pre-act: BN(cin), 1x1, BN, 3x3, BN, 1x1 (+ 1x1 projection shortcut)
        return 2 * cin + cin * m + 2 * m + 9 * m * m + 2 * m + m * 4 * m + (cin * 4 * m if proj else 0)

    def msa(d, heads, w=4, dh=64):  # BN(d), 1x1 to d/4, BN, q + kv 1x1, bias table, 1x1 out (with bias)
        c = d // 4
        return 2 * d + d * c + 2 * c + c * 3 * heads * dh + (2 * w - 1) ** 2 + heads * dh * d + d

    total = 3 * 64 * 9  # stem
    cin = 64
    for mid, n, heads, msa_idx in zip((64, 128, 256, 512), (3, 4, 6, 4), (3, 6, 12, 24), ([], [3], [5], [1, 3])):
        for i in range(n):
            total += msa(4 * mid, heads) if i in msa_idx else bottleneck(cin, mid, i == 0)
            cin = 4 * mid
    total += 2 * 2048 + 2048 * 100 + 100  # final BN, linear head
    n_params = sum(p.numel() for p in full.parameters())
    print(f"alternet50_cifar parameters: {n_params:,}")
    assert n_params == total


def test_build_up_keys():
    assert A.msa_positions((3, 4, 6, 4), (0, 1, 3, 2)) == [[], [3], [1, 3, 5], [1, 3]]  # the repo's dnn_50
    m = timm.create_model(
        "alternet50_cifar",
        num_msa=(0, 0, 0, 1),
        layers=(1, 1, 1, 2),
        channels=(32, 64, 128, 256),
        stem_chs=16,
        dim_head=8,
    )
    assert sorted(attn_blocks(m)) == ["stages.3.blocks.1"]
    m = timm.create_model(
        "alternet50_cifar",
        attn_blocks=[[1], [], [], [1]],
        layers=(2, 1, 1, 2),
        channels=(32, 64, 128, 256),
        stem_chs=16,
        dim_head=8,
        heads=(2, 2, 2, 2),
        window_size=2,
    )
    assert sorted(attn_blocks(m)) == ["stages.0.blocks.1", "stages.3.blocks.1"]
    assert m.stages[0].blocks[1].attn.window_size == 2
    with pytest.raises(VitstudyError, match="valid indices are 1..1"):
        timm.create_model("alternet50_cifar", attn_blocks=[[0], [], [], []], layers=(2, 2, 2, 2))
    with pytest.raises(VitstudyError, match=r"num_msa\[3\]=3 is invalid"):
        timm.create_model("alternet50_cifar", num_msa=(0, 1, 1, 3))


def _local_attention(dim=4, heads=2, dh=3, w=2):
    torch.manual_seed(0)
    att = A.LocalAttention(dim, dim, heads, dh, w).double().eval()
    torch.nn.init.zeros_(att.to_q.weight)  # q = 0: the logits are the relative-position bias alone
    return att


def _v_then_proj(att, x):
    v = torch.nn.functional.conv2d(x, att.to_kv.weight[att.heads * att.dim_head :])
    return torch.nn.functional.conv2d(v, att.proj.weight, att.proj.bias)


def test_window_attention_zero_bias_averages_each_window():
    att = _local_attention()
    with torch.no_grad():
        att.rel_pos_bias.zero_()
        x = torch.randn(2, 4, 4, 6, dtype=torch.float64)
        v = torch.nn.functional.conv2d(x, att.to_kv.weight[att.heads * att.dim_head :])
        mean = torch.nn.functional.avg_pool2d(v, 2)  # uniform attention in each 2x2 window
        expected = torch.nn.functional.conv2d(
            mean.repeat_interleave(2, 2).repeat_interleave(2, 3), att.proj.weight, att.proj.bias
        )
        torch.testing.assert_close(att(x), expected)


def test_relative_bias_indexing_centre_is_self_and_offset_is_a_shift():
    att = _local_attention(w=2)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        att.rel_pos_bias.fill_(-1e4)
        att.rel_pos_bias[1, 1] = 0.0  # offset (0, 0): each query attends to itself only
        torch.testing.assert_close(att(x), _v_then_proj(att, x))
        att.rel_pos_bias[1, 1] = -1e4
        att.rel_pos_bias[1, 2] = 0.0  # query col - key col = +1: attends to its left neighbour in the window
        att.rel_pos_bias[1, 0] = 0.0  # and the first column (no left neighbour) to its right one
        left = _v_then_proj(att, x)
        expected = left.clone()
        expected[..., 1::2] = left[..., 0::2]
        expected[..., 0::2] = left[..., 1::2]
        torch.testing.assert_close(att(x), expected)


def test_attention_probabilities_are_hookable(full):
    seen = []
    blk = full.stages[3].blocks[1]
    h = blk.attn.attn_drop.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        full(torch.randn(1, 3, 32, 32))
    h.remove()
    assert seen[0].shape == (1, 24, 16, 16)  # 4x4 map = one 4x4 window
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(1, 24, 16))


def test_window_must_divide_the_feature_map(full):
    with pytest.raises(VitstudyError, match="divisible by window_size=4"):
        with torch.no_grad():
            full(torch.randn(1, 3, 24, 24))  # c3 is 6x6


def test_layer_specs_resolve(full):
    blocks = [l.name for l in layers.resolve(full, "blocks", (3, 32, 32))]
    assert len(blocks) == 17 and "stages.3.blocks.3" in blocks and "stages.1.blocks.3" in blocks
    assert len(layers.resolve(full, "all", (3, 32, 32))) > len(blocks)


def test_alternet_imagenet_variant():
    m = timm.create_model(
        "alternet50", layers=(1, 1, 1, 2), num_msa=(0, 0, 0, 1), channels=(32, 64, 128, 256), stem_chs=16, dim_head=8
    ).eval()
    assert m.stages[3].blocks[1].attn.window_size == 7
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_cka_within_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY,
            "dataset=synthetic",
            "dataset.image_size=32",
            "dataset.num_images=8",
            "dataset.batch_size=4",
            "layers=blocks",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "cka_within.csv")
    assert df.index_x.nunique() == 7  # 1 + 2 + 2 + 2 blocks
    assert json.loads((out / "run.json").read_text())["models"]["model"]["weights"] == "random-init"


def test_bad_build_up_is_one_line(tmp_path, capsys):
    code, _, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY,
            "model.kwargs.num_msa=[0,1,1,2]",
            "dataset=synthetic",
            "dataset.image_size=32",
            "dataset.num_images=8",
            f"hydra.run.dir={tmp_path / 'x'}",
        ],
        capsys,
    )
    assert code not in (0, None) and "num_msa[3]=2 is invalid" in err and err.strip().count("\n") == 0, err


def test_train_one_epoch(tmp_path, capsys):
    out = tmp_path / "train"
    code, _, err = cli(
        [
            "train",
            *TINY,
            "recipe=quick",
            "recipe.epochs=1",
            "recipe.warmup_epochs=0",
            "recipe.batch_size=16",
            "dataset=synthetic",
            "dataset.image_size=32",
            "dataset.size=32",
            "dataset.val_images=16",
            "dataset.batch_size=16",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code in (0, None), err
    df = pd.read_csv(out / "train.csv")
    assert len(df) == 1 and df.train_loss.notna().all()
    ckpt = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert ckpt["model_config"]["name"] == "alternet50_cifar"
    assert any("attn.rel_pos_bias" in k for k in ckpt["state_dict"])
    # analysed with the preset, whose kwargs (the full 3-4-6-4 build-up) are not the checkpoint's: its own win
    code, stdout, err = cli(
        [
            "run",
            "analysis=cka_within",
            "model=alternet50_cifar",
            f"model.checkpoint={out / 'checkpoints/last.pt'}",
            "dataset=synthetic",
            "dataset.image_size=32",
            "dataset.num_images=8",
            "dataset.batch_size=4",
            f"hydra.run.dir={tmp_path / 'cka'}",
        ],
        capsys,
    )
    assert code == 0, err
    assert "the checkpoint's dim_head=8, layers=(1, 2, 2, 2), num_msa=(0, 1, 1, 1) replace the config's" in stdout


# --------------------------------------------------------------------------- AlterNet's MSAs are attention sublayers


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model(
        "alternet50_cifar",
        layers=[1, 2, 2, 2],
        num_msa=[0, 1, 1, 1],
        channels=[32, 64, 128, 256],
        stem_chs=16,
        dim_head=8,
    ).eval()


def test_latents_label_the_msas_attention(tiny):
    from vitstudy.anatomy.latents import latent_kinds

    kinds = latent_kinds(tiny)
    assert {n for n, k in kinds.items() if k == "attention"} == set(attn_blocks(tiny))
    assert kinds["stages.1.blocks.0"] == "conv"


def test_msa_residual_branch_and_its_removal_by_hand(tiny):
    from vitstudy.anatomy.residual import branches, remove_skip

    brs = {b.block: b for b in branches(tiny)}
    name = "stages.2.blocks.1"
    b = brs[name]
    assert (b.sublayer, b.skip, b.branch, b.post) == ("attn", f"{name}:in", f"{name}.drop_path", name)
    block = dict(tiny.named_modules())[name]
    x = torch.randn(2, 128, 8, 8)  # stage 2 (channels 128) of a 32 px input: 8x8
    with torch.no_grad():
        full = block(x)
        with remove_skip(tiny, [name]):
            lesioned = block(x)
    torch.testing.assert_close(lesioned, full - x, rtol=1e-5, atol=1e-5)  # f(z) alone: z + f(z) minus z


def test_skip_ratio_of_an_msa_equals_hand_computed_norms(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=skip_ratio",
            *TINY,
            "dataset=synthetic",
            "dataset.image_size=32",
            "dataset.num_images=8",
            "dataset.batch_size=4",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "skip_ratio.csv")
    attn = df[df.sublayer == "attn"]
    assert set(attn.block) == {"stages.1.blocks.1", "stages.2.blocks.1", "stages.3.blocks.1"}
    # by hand: the MSA's input z and z + f(z) from hooks, per-position norms over channels, mean of ratios
    import numpy as np

    from vitstudy.pipeline import data

    indices = pd.read_csv(out / "images.csv").dataset_index.tolist()
    torch.manual_seed(0)
    net = timm.create_model(
        "alternet50_cifar",
        layers=[1, 2, 2, 2],
        num_msa=[0, 1, 1, 1],
        channels=[32, 64, 128, 256],
        stem_chs=16,
        dim_head=8,
    ).eval()
    from vitstudy.pipeline.models import eval_transform

    tf, _ = eval_transform(net)
    ds = data.SyntheticImages(50000, 32, 10, 0)
    x = torch.stack([tf(ds[i][0]) for i in indices])
    seen = {}
    block = net.stages[2].blocks[1]
    block.register_forward_hook(lambda m, a, o: seen.update(z=a[0].double(), out=o.double()))
    with torch.no_grad():
        net(x)
    ratio = (seen["z"].norm(dim=1) / (seen["out"] - seen["z"]).norm(dim=1)).flatten(1).mean(0).numpy()
    got = attn[attn.block == "stages.2.blocks.1"].sort_values("token").ratio.to_numpy()
    np.testing.assert_allclose(got, ratio, rtol=1e-4)


@pytest.mark.parametrize("analysis", ["receptive_field", "skip_ablation", "lesion", "fourier"])
def test_msa_blocks_are_analysed(analysis, tmp_path, capsys):
    out = tmp_path / "run"
    extra = {
        "receptive_field": ["analysis.num_images=4"],
        "skip_ablation": ["analysis.blocks=[stages.2.blocks.1]"],
        "lesion": ["analysis.conv=conv3x3"],
        "fourier": ["reference=resnet_mini_cifar", "reference.pretrained=false"],
    }[analysis]
    code, _, err = cli(
        [
            "run",
            f"analysis={analysis}",
            *TINY,
            *extra,
            "dataset=synthetic",
            "dataset.image_size=32",
            "dataset.num_images=8",
            "dataset.batch_size=4",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / f"{analysis}.csv")
    if analysis == "receptive_field":
        assert "stages.2.blocks.1.drop_path" in set(df.layer)
    elif analysis == "lesion":
        assert set(df[df.kind == "attention"].unit) == {
            "stages.1.blocks.1.attn",
            "stages.2.blocks.1.attn",
            "stages.3.blocks.1.attn",
        }
    elif analysis == "fourier":
        assert set(df[(df.model == "model") & (df.kind == "attention")].latent) == {
            "stages.1.blocks.1",
            "stages.2.blocks.1",
            "stages.3.blocks.1",
        }


def test_importing_the_package_registers_the_models_with_timm():
    """In a notebook: `import vitstudy`, then timm's own create_model knows vitstudy's architectures."""
    import subprocess
    import sys

    code = (
        "import vitstudy, timm; m = timm.create_model('alternet50_cifar', layers=[1, 2, 2, 2], num_msa=[0, 1, 1, 1]); "
        "print(type(m).__name__, timm.is_model('vit_mini_cifar'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ResNetV2", "True"]
