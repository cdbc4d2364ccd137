"""Band-limited noise (the official FreqAttack written out in numpy) and sublayer lesions."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, assert_one_line_error, cli
from vitstudy.analyses.robustness import lesion_units, zeroed
from vitstudy.metrics import fourier as F


def official_mask(h, f_pi, s_pi):
    """ops/adversarial.FreqAttack: mask1 - mask2 of `_center_mask` squares, f and s in radians."""
    f, s = f_pi * math.pi, s_pi * math.pi

    def center(w1, w2):
        w1 = max(min(w1, w2), 0)
        return np.pad(np.ones((w1, w1)), int((w2 - w1) / 2))

    return center(int(((f + s) * h) / (2 * math.pi)) * 2, h) - center(int(((f - s) * h) / (2 * math.pi)) * 2, h)


def official_band_pass(x, mask):
    h, w = x.shape[-2:]
    spec = np.roll(np.fft.fft2(x), (int(h / 2), int(w / 2)), axis=(2, 3))
    spec = np.abs(spec) * mask * np.exp(1j * np.angle(spec))
    return np.fft.ifft2(np.roll(spec, (int(h / 2), int(w / 2)), axis=(2, 3))).real


def mirror(mask):
    h, w = mask.shape
    return mask[(h - np.arange(h)) % h][:, (w - np.arange(w)) % w]


@pytest.mark.parametrize("h", [32, 224])
@pytest.mark.parametrize("s", [0.1, 0.05])
def test_mask_is_the_official_square_annulus(h, s):
    for f in np.round(np.arange(0.1, 1.0, 0.1), 2):
        np.testing.assert_array_equal(F.band_mask(h, h, f, s).numpy(), official_mask(h, f, s), err_msg=f"f={f}")


def test_band_pass_matches_official_and_has_no_energy_outside_the_annulus():
    h = 32
    noise = F.sign_noise((2, 3, h, h), 0.5, torch.Generator().manual_seed(0), "cpu").double()
    for f in (0.1, 0.5, 0.9):
        mask = F.band_mask(h, h, f, 0.1)
        got = F.band_pass(noise, mask.double()).numpy()
        np.testing.assert_allclose(got, official_band_pass(noise.numpy(), mask.numpy()), atol=1e-12)
        spectrum = np.roll(np.abs(np.fft.fft2(got)), (h // 2, h // 2), axis=(2, 3))
        support = (mask.numpy() + mirror(mask.numpy())) > 0
        assert spectrum[..., ~support].max() < 1e-9
        assert spectrum[..., support].mean() > 0.1


def test_band_passed_sign_noise_has_the_expected_power():
    """White ±ε noise keeps ε²·mean(((M + mirror M)/2)²) of its power (the real part splits the mask)."""
    h, eps = 32, 0.2
    mask = F.band_mask(h, h, 0.5, 0.1)
    noise = F.sign_noise((64, 3, h, h), eps, torch.Generator().manual_seed(1), "cpu")
    power = float(F.band_pass(noise, mask).pow(2).mean())
    m = mask.numpy()
    assert power == pytest.approx(eps**2 * (((m + mirror(m)) / 2) ** 2).mean(), rel=0.03)


def test_zeroed_branch_equals_zero_weights(tiny_vit, tiny_resnet, images):
    x = images[:4]
    for model, path, params in (
        (tiny_vit, "blocks.1.attn", ["blocks.1.attn.proj"]),
        (tiny_vit, "blocks.2.mlp", ["blocks.2.mlp.fc2"]),
        (tiny_resnet, "layer2.0.bn2", ["layer2.0.bn2"]),
    ):
        twin = copy.deepcopy(model)
        mods = dict(twin.named_modules())
        for p in params:
            torch.nn.init.zeros_(mods[p].weight)
            torch.nn.init.zeros_(mods[p].bias)
        with torch.no_grad():
            with zeroed(model, path):
                lesioned = model(x)
            intact = model(x)
            torch.testing.assert_close(lesioned, twin(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(intact, lesioned)


def test_conv3x3_lesion_removes_the_conv_after_its_norm():
    """Zeroing conv2 alone leaves bn2's shift (a constant map); the lesion equals conv2 and bn2 set to zero."""
    torch.manual_seed(0)
    r50 = timm.create_model("resnet50", layers=[1, 1, 1, 1], zero_init_last=False).eval()
    for m in r50.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_mean, -0.5, 0.5), torch.nn.init.uniform_(m.running_var, 0.5, 2)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5), torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(2, 3, 32, 32)
    path = lesion_units(r50, "conv3x3")[0][0]
    twin = copy.deepcopy(r50)
    torch.nn.init.zeros_(twin.layer1[0].conv2.weight)
    torch.nn.init.zeros_(twin.layer1[0].bn2.weight), torch.nn.init.zeros_(twin.layer1[0].bn2.bias)
    only_conv = copy.deepcopy(r50)
    torch.nn.init.zeros_(only_conv.layer1[0].conv2.weight)
    with torch.no_grad(), zeroed(r50, path):
        lesioned = r50(x)
    with torch.no_grad():
        torch.testing.assert_close(lesioned, twin(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(lesioned, only_conv(x), atol=1e-3)


def test_alternet_attention_blocks_are_lesion_units():
    net = timm.create_model(
        "alternet50_cifar",
        layers=[1, 2, 2, 2],
        num_msa=[0, 1, 1, 1],
        channels=[32, 64, 128, 256],
        stem_chs=16,
        dim_head=8,
    )
    units = dict(lesion_units(net, "conv3x3"))
    assert (
        units["stages.1.blocks.1.attn"] == "stages.1.blocks.1"
        and units["stages.3.blocks.1.attn"] == "stages.3.blocks.1"
    )


def test_lesion_units():
    units = lesion_units(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2))
    assert units == [
        ("blocks.0.attn", "blocks.0.norm2:in"),
        ("blocks.0.mlp", "blocks.0"),
        ("blocks.1.attn", "blocks.1.norm2:in"),
        ("blocks.1.mlp", "blocks.1"),
    ]
    r50 = timm.create_model("resnet50", layers=[1, 1, 1, 1])
    assert lesion_units(r50)[0] == ("layer1.0.bn3", "layer1.0")
    assert lesion_units(r50, "conv3x3")[0] == ("layer1.0.bn2", "layer1.0")
    assert lesion_units(timm.create_model("convnext_atto"))[0] == ("stages.0.blocks.0.mlp", "stages.0.blocks.0")


def test_lesion_of_a_zero_branch_changes_nothing(tmp_path, capsys):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3)
    torch.nn.init.zeros_(vit.blocks[1].attn.proj.weight)
    torch.nn.init.zeros_(vit.blocks[1].attn.proj.bias)
    path = tmp_path / "w.pth"
    torch.save(vit.state_dict(), path)
    out = tmp_path / "run"
    code, _, err = cli(
        ["run", "analysis=lesion", *TINY_VIT, f"model.checkpoint={path}", *SMALL_DATA, f"hydra.run.dir={out}"], capsys
    )
    assert code == 0, err
    df = pd.read_csv(out / "lesion.csv")
    assert df.unit.tolist() == [f"blocks.{i}.{s}" for i in range(3) for s in ("attn", "mlp")]
    assert df.kind.tolist() == ["attention", "mlp"] * 3 and (df.metric == "agreement").all()
    row = df[df.unit == "blocks.1.attn"].iloc[0]
    assert row.value == 100.0 and row.delta == 0.0 and row.intact == 100.0
    assert (out / "lesion.png").stat().st_size > 0 and (df.num_images == 24).all()


def test_frequency_noise_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=frequency_noise",
            "analysis.bands=[0.3,0.9]",
            *TINY_VIT,
            "model.kwargs.num_classes=10",
            *TINY_RESNET,
            *SMALL_DATA,
            "dataset.num_images=16",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "frequency_noise.csv")
    assert len(df) == 4 and df.band.tolist() == [0.3, 0.9, 0.3, 0.9]
    assert df[df.model == "model"].metric.unique().tolist() == ["top1"]  # 10 synthetic classes, 10 outputs
    assert df[df.model == "reference"].metric.unique().tolist() == ["agreement"]  # 1000 outputs
    assert (df[df.model == "reference"].clean == 100.0).all()
    np.testing.assert_allclose(df["drop"], df.value - df.clean)
    assert (df.noise_rms > 0).all() and (df.band_low == [0.2, 0.8, 0.2, 0.8]).all()
    assert (out / "frequency_noise.pdf").stat().st_size > 0


BAD = {
    "bands": (["analysis=frequency_noise", "analysis.bands=[0.5,1.5]"], "analysis.bands"),
    "space": (["analysis=frequency_noise", "analysis.space=lab"], "analysis.space"),
    "accuracy without labels": (
        ["analysis=frequency_noise", "analysis.metric=accuracy"],
        "use analysis.metric=agreement",
    ),
    "conv mode": (["analysis=lesion", "analysis.conv=all"], "analysis.conv"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tmp_path, capsys):
    extra, expected = BAD[case]
    assert_one_line_error(["run", *extra, *TINY_VIT, *TINY_RESNET, *SMALL_DATA], expected, tmp_path / "run", capsys)
