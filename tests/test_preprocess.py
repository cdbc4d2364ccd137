"""Preprocessing is part of a model's config (issue 10 §1): model.data keys, a training checkpoint's data config,
the architecture's defaults, in that order; the transform line says where each value came from.

Numbers are checked against images preprocessed by hand (numpy) and CKA written out in float64."""

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from helpers import cli, minibatch_reference
from vitstudy.pipeline import data, preprocess
from vitstudy.train.app import main as train_main

VIT32 = [
    "model.name=vit_tiny_patch16_224",
    "model.pretrained=false",
    "model.kwargs.img_size=32",
    "model.kwargs.patch_size=8",
    "model.kwargs.depth=2",
]
DATA32 = ["dataset=synthetic", "dataset.image_size=32", "dataset.num_images=16", "dataset.batch_size=8"]


def by_hand(indices, mean, std, size=32):
    """Synthetic 32 px images as the model should see them with crop_pct 1.0: to [0, 1], minus mean, over std."""
    ds = data.SyntheticImages(50000, size, 10, 0)
    x = np.stack([np.asarray(ds[i][0], dtype=np.float64) / 255.0 for i in indices])  # (N, H, W, 3)
    x = (x - np.asarray(mean)) / np.asarray(std)
    return torch.from_numpy(x.transpose(0, 3, 1, 2)).float()


def test_model_data_keys_reach_the_transform_and_the_numbers(tmp_path, capsys):
    out = tmp_path / "run"
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    code, stdout, err = cli(
        [
            "run",
            "analysis=cka_within",
            *VIT32,
            *DATA32,
            f"model.data.mean=[{','.join(map(str, mean))}]",
            f"model.data.std=[{','.join(map(str, std))}]",
            "model.data.crop_pct=1.0",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    line = next(l for l in stdout.splitlines() if l.startswith("vitstudy: model vit_tiny_patch16_224"))
    assert "3x32x32, resize 32 bicubic, centre crop 32, mean 0.4914,0.4822,0.4465" in line
    assert "crop_pct from model.data.crop_pct" in line and "WARNING" not in line
    record = json.loads((out / "run.json").read_text())["models"]["model"]
    assert (
        record["data_sources"]["mean"] == "model.data.mean"
        and record["data_sources"]["input_size"] == "model.kwargs.img_size"
    )
    assert record["data_config"]["crop_pct"] == 1.0 and record["transform"] == line[len("vitstudy: ") :]
    # the same CKA from images normalised by hand, the run's model (the runner seeds torch with cfg.seed before
    # building it) and Song et al.'s formula in float64
    indices = pd.read_csv(out / "images.csv").dataset_index.tolist()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    feats = {0: [], 1: []}
    hooks = [
        model.blocks[i].register_forward_hook(lambda m, a, o, i=i: feats[i].append(o.flatten(1).double().numpy()))
        for i in range(2)
    ]
    x = by_hand(indices, mean, std)
    with torch.no_grad():
        for b in range(0, 16, 8):
            model(x[b : b + 8])
    for h in hooks:
        h.remove()
    expected = minibatch_reference(feats[0], feats[1])
    df = pd.read_csv(out / "cka_within.csv")
    got = df[(df.layer_x == "blocks.0") & (df.layer_y == "blocks.1")].cka.item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_preset_is_one_override_and_user_keys_win():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4)
    config, sources = preprocess.resolve(model, {"preset": "cifar10", "std": [1, 1, 1]}, None, {"img_size": 32})
    assert config["mean"] == preprocess.CIFAR10_MEAN and config["std"] == (1.0, 1.0, 1.0) and config["crop_pct"] == 1.0
    assert sources["mean"] == "model.data.preset=cifar10" and sources["std"] == "model.data.std"
    assert sources["interpolation"] == preprocess.ARCH  # not in the preset: the architecture's
    with pytest.raises(Exception, match="unknown model.data.preset 'cifar1'.*closest: cifar10"):
        preprocess.resolve(model, {"preset": "cifar1"})


def test_timm_resnet_checkpoint_without_data_keys_is_flagged(tmp_path, capsys):
    """A foreign checkpoint analysed with the architecture's ImageNet defaults: the line says so plainly."""
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path)
    code, stdout, err = cli(
        [
            "run",
            "analysis=cka_within",
            "model.name=resnet18",
            f"model.checkpoint={path}",
            "model.kwargs.num_classes=10",
            *DATA32,
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert code == 0, err
    line = next(l for l in err.splitlines() if l.startswith("vitstudy: model resnet18"))  # a warning: on stderr
    assert "3x224x224" in line and "WARNING: input_size, mean, std are the architecture's defaults" in line
    assert "model.data.preset=cifar10" in line
    code, stdout, err = cli(
        [
            "run",
            "analysis=cka_within",
            "model.name=resnet18",
            f"model.checkpoint={path}",
            "model.kwargs.num_classes=10",
            "model.data.preset=cifar10",
            *DATA32,
            f"hydra.run.dir={tmp_path / 'run2'}",
        ],
        capsys,
    )
    assert code == 0, err
    line = next(l for l in stdout.splitlines() if l.startswith("vitstudy: model resnet18"))
    assert "3x32x32" in line and "WARNING" not in line


@pytest.fixture(scope="module")
def plain_timm_checkpoint(tmp_path_factory):
    """`vitstudy train` of a plain timm ViT (DeiT-Ti, not the default model) at img_size=32 with CIFAR-10 statistics (1 short epoch, synthetic images)."""
    out = tmp_path_factory.mktemp("train") / "run"
    try:
        train_main(
            [
                "model.name=deit_tiny_patch16_224",
                "model.kwargs.img_size=32",
                "model.kwargs.patch_size=8",
                "model.kwargs.depth=2",
                "model.data.preset=cifar10",
                "recipe=quick",
                "recipe.epochs=1",
                "recipe.warmup_epochs=0",
                "dataset=synthetic",
                "dataset.image_size=32",
                "dataset.size=32",
                "dataset.val_images=16",
                "recipe.batch_size=16",
                "dataset.batch_size=16",
                f"hydra.run.dir={out}",
            ]
        )
    except SystemExit as exit:
        assert exit.code in (0, None)
    return out


def test_train_of_a_plain_timm_architecture_trains_at_its_img_size(plain_timm_checkpoint):
    record = json.loads((plain_timm_checkpoint / "run.json").read_text())
    assert record["data_config"]["input_size"] == [3, 32, 32]
    assert record["data_config"]["mean"] == list(preprocess.CIFAR10_MEAN)
    ckpt = torch.load(plain_timm_checkpoint / "checkpoints" / "last.pt", weights_only=True)
    assert list(ckpt["data_config"]["input_size"]) == [3, 32, 32] and ckpt["data_config"]["crop_pct"] == 1.0


def test_checkpoint_with_the_default_model_builds_its_own_architecture(plain_timm_checkpoint, tmp_path, capsys):
    best = plain_timm_checkpoint / "checkpoints" / "last.pt"
    out = tmp_path / "run"
    code, stdout, err = cli(
        ["run", "analysis=cka_within", f"model.checkpoint={best}", *DATA32, f"hydra.run.dir={out}"], capsys
    )
    assert code == 0, err
    assert "building 'deit_tiny_patch16_224'" in stdout
    record = json.loads((out / "run.json").read_text())["models"]["model"]
    assert record["data_sources"]["mean"] == "checkpoint" and record["data_sources"]["input_size"] == "checkpoint"
    assert (
        record["data_config"]["input_size"] == [3, 32, 32]
        and record["data_config"]["mean"] == list(preprocess.CIFAR10_MEAN)
        and record["data_config"]["crop_pct"] == 1.0
    )
    assert "WARNING" not in record["transform"]
    # an explicit, different name stays an error
    code, _, err = cli(["run", "analysis=cka_within", "model=resnet18", f"model.checkpoint={best}", *DATA32], capsys)
    assert code == 2 and "was saved from 'deit_tiny_patch16_224'" in err and err.count("\n") == 1, err
