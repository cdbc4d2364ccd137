"""`vitstudy train`: the quick recipe learns, a killed run resumes bitwise, fraction subsets, remove_skip,
GAP ViTs, checkpoints reload into `vitstudy run`, and bad input gets one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from helpers import cli
from vitstudy.anatomy import tokens
from vitstudy.pipeline import data, models
from vitstudy.train import data as train
from vitstudy.train.app import compose, main
from vitstudy.zoo import cifar as cifar_models

SYN = [
    "dataset=synthetic",
    "dataset.image_size=32",
    "dataset.size=128",
    "dataset.val_images=32",
    "dataset.batch_size=32",
    "recipe.batch_size=16",
]
QUICK = ["model=resnet_mini_cifar", "recipe=quick", "recipe.epochs=3", "recipe.lr=3e-3", *SYN, "dataset.size=64"]
TINY_VIT = ["model=vit_mini_cifar", "model.kwargs.depth=2", "model.kwargs.embed_dim=48"]


def train_cli(args, capsys):
    """Run `vitstudy train ARGS` in this process: (exit code, stdout, stderr)."""
    return cli(["train", *args], capsys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet_mini_cifar trained with the quick recipe (1 warm-up + 3 epochs) on 64 synthetic 32 px images."""
    out = tmp_path_factory.mktemp("train") / "run"
    try:
        main([*QUICK, f"hydra.run.dir={out}"])
    except SystemExit as exit:
        assert exit.code in (0, None)
    return out


def test_quick_run_lowers_loss_and_writes_run_dir(trained):
    df = pd.read_csv(trained / "train.csv")
    assert list(df.columns) == [
        "epoch",
        "step",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_top1",
        "images_per_s",
        "wall_time_s",
    ]
    assert df.epoch.tolist() == [1, 2, 3, 4] and df.step.tolist() == [4, 8, 12, 16]  # 64 images / batch 16
    assert df.train_loss.iloc[-1] < df.train_loss.iloc[0] - 0.05
    assert (df.images_per_s > 0).all() and df.wall_time_s.is_monotonic_increasing
    for f in ("learning_curve.png", "learning_curve.pdf", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (trained / f).stat().st_size > 0
    record = json.loads((trained / "run.json").read_text())
    assert (
        record["status"] == "complete"
        and record["dataset"]["train_images"] == 64
        and record["dataset"]["val_images"] == 32
    )
    assert record["best"]["val_top1"] == df.val_top1.max() and record["amp"] == "off"
    ckpt = torch.load(trained / "checkpoints/last.pt", weights_only=True)  # tensors and plain containers only
    assert ckpt["epoch"] == 4 and ckpt["model_config"]["name"] == "resnet_mini_cifar"
    assert ckpt["model_config"]["kwargs"]["num_classes"] == 10 and set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    # the lr schedule: linear warm-up over epoch 1 (to recipe.lr), then cosine down to min_lr at the last update
    assert df.lr.iloc[0] == pytest.approx(3e-3) and df.lr.iloc[-1] == pytest.approx(1e-5, rel=1e-6)


def test_checkpoint_reloads_into_run_with_the_same_predictions(trained, tmp_path, capsys):
    best = trained / "checkpoints" / "best.pt"
    cfg = compose(["model=resnet_mini_cifar", f"model.checkpoint={best}"])
    m = models.load(cfg.model)
    assert m.weights.startswith("file:") and m.data_config["input_size"] == (3, 32, 32)
    # the validation set of training (synthetic, seed + 1), through the eval transform `vitstudy run` uses
    val = data.SyntheticImages(32, 32, 10, seed=1)
    x = torch.stack([m.transform(val[i][0]) for i in range(32)])
    y = torch.tensor([val[i][1] for i in range(32)])
    with torch.no_grad():
        logits = m.module(x)
    df = pd.read_csv(trained / "train.csv")
    record = json.loads((trained / "run.json").read_text())
    assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(df.val_top1[record["best"]["epoch"] - 1])
    ref = timm.create_model("resnet_mini_cifar", num_classes=10).eval()
    ref.load_state_dict(torch.load(best, weights_only=True)["state_dict"])
    with torch.no_grad():
        assert torch.equal(ref(x), logits)
    out = tmp_path / "cka"
    code, _, err = cli(
        [
            "run",
            "analysis=cka_within",
            "model=resnet_mini_cifar",
            f"model.checkpoint={best}",
            "dataset=synthetic",
            "dataset.image_size=32",
            "dataset.num_images=16",
            "dataset.batch_size=8",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["models"]["model"]["weights"] == f"file:{best}"


def test_resume_after_kills_continues_bitwise(tmp_path, capsys):
    args = [
        *TINY_VIT,
        "recipe=quick",
        "recipe.epochs=3",
        *SYN,
        "dataset.size=64",
        "recipe.mixup=0.8",
        "recipe.cutmix=1.0",
        "recipe.auto_augment=rand-m9-n2-mstd1.0",
        "recipe.drop_path=0.1",
        "dataset.num_workers=0",
    ]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    assert train_cli([*args, f"hydra.run.dir={ref}"], capsys)[0] in (0, None)
    # interrupted (Ctrl-C) mid epoch 2, after update 6 of 4 per epoch
    code, _, err = train_cli([*args, f"hydra.run.dir={run}", "debug_kill=step:6"], capsys)
    assert code == 130 and "interrupted; rerun the same command to resume" in err
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 1
    # resumed, then killed hard (os._exit) inside epoch 3's checkpoint write, after the data went to disk
    p = subprocess.run(
        [sys.executable, "-m", "vitstudy.train.app", *args, f"hydra.run.dir={run}", "debug_kill=save:3"],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
        timeout=300,
    )
    assert p.returncode == 137, p.stderr[-2000:]
    assert not (run / "run.json").exists()
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 2  # the last complete checkpoint
    assert list((run / "checkpoints").glob(".*.tmp*"))  # the write that was killed
    code, out, err = train_cli([*args, f"hydra.run.dir={run}"], capsys)
    assert code in (0, None), err
    assert "resuming" in out and "after epoch 2/4" in out
    assert not list((run / "checkpoints").glob(".*.tmp*"))
    a, b = pd.read_csv(ref / "train.csv"), pd.read_csv(run / "train.csv")
    cols = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1"]
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    sa = torch.load(ref / "checkpoints/last.pt", weights_only=True)["state_dict"]
    sb = torch.load(run / "checkpoints/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads((run / "run.json").read_text())["resumed_from_epoch"] == 2


def test_fraction_is_seeded_and_class_balanced():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    rng.shuffle(labels)
    a = train.balanced_subset(labels, 0.1, seed=3)
    assert a == train.balanced_subset(labels, 0.1, seed=3) and a != train.balanced_subset(labels, 0.1, seed=4)
    assert len(set(a)) == len(a) == 10 + 5 + 3 + 2 and a == sorted(a)
    assert np.bincount(labels[a]).tolist() == [10, 5, 3, 2]
    assert np.bincount(labels[train.balanced_subset(labels, 0.01, seed=0)]).tolist() == [
        1,
        1,
        1,
        1,
    ]  # at least one per class
    assert train.balanced_subset(labels, 1.0, seed=0) == list(range(200))
    syn = data.SyntheticImages(40, 16, 10, seed=2)
    assert data.labels(syn).tolist() == [syn[i][1] for i in range(40)]  # labels without rendering = rendered labels


def test_remove_skip_removes_the_additions():
    torch.manual_seed(0)
    model = timm.create_model("vit_mini_cifar", depth=3, embed_dim=48, remove_skip=[1]).eval()
    plain = timm.create_model("vit_mini_cifar", depth=3, embed_dim=48).eval()
    assert list(model.state_dict()) == list(plain.state_dict())  # same parameters and module paths
    x = torch.randn(2, 65, 48)
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            attn = blk.ls1(blk.attn(blk.norm1(x)))
            if i == 1:  # x -> attn branch -> mlp branch, no identity anywhere
                expected = blk.ls2(blk.mlp(blk.norm2(attn)))
            else:
                expected = (x + attn) + blk.ls2(blk.mlp(blk.norm2(x + attn)))
            torch.testing.assert_close(blk(x), expected, rtol=0, atol=0)
            x = expected


def test_gap_vit_has_no_cls_token(tmp_path, capsys):
    out = tmp_path / "gap"
    code, _, err = train_cli(
        [
            *TINY_VIT,
            "model.global_pool=avg",
            "model.class_token=false",
            "model.remove_skip=[1]",
            *SYN,
            "dataset.size=32",
            "recipe.epochs=1",
            "recipe.warmup_epochs=0",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code in (0, None), err
    ckpt = torch.load(out / "checkpoints/best.pt", weights_only=True)
    kw = ckpt["model_config"]["kwargs"]
    assert kw["global_pool"] == "avg" and kw["class_token"] is False and kw["remove_skip"] == [1]
    assert "cls_token" not in ckpt["state_dict"] and ckpt["state_dict"]["pos_embed"].shape[1] == 64  # 8x8 patches only
    model = timm.create_model("vit_mini_cifar", **kw)
    assert (
        model.cls_token is None
        and model.global_pool == "avg"
        and (tokens.prefix_tokens(model), tokens.has_cls(model)) == (0, False)
    )
    assert isinstance(model.blocks[1], cifar_models.NoSkipBlock)
    model.load_state_dict(ckpt["state_dict"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["recipe=fast"], "unknown recipe 'fast'"),
        (["dataset.fraction=0"], "dataset.fraction must be in (0, 1]"),
        (["dataset.fraction=1.5"], "dataset.fraction must be in (0, 1]"),
        (["model.remove_skip=[2]"], "remove_skip index 2 is out of range: the model has 2 blocks"),
        (["model=resnet_mini_cifar", "model.remove_skip=[0]"], "remove_skip is implemented for the ViTs"),
        (["model.class_token=false", "model.global_pool=token"], "global_pool=token needs the CLS token"),
    ],
)
def test_bad_input_one_line(args, message, tmp_path, capsys):
    code, _, err = train_cli([*TINY_VIT, *SYN, *args, f"hydra.run.dir={tmp_path / 'x'}"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x" / "run.json").exists()


def test_checkpoint_of_another_architecture_one_line(trained, tmp_path, capsys):
    best = trained / "checkpoints" / "best.pt"
    code, _, err = train_cli([*TINY_VIT, *SYN, f"model.checkpoint={best}", f"hydra.run.dir={tmp_path / 'x'}"], capsys)
    assert code == 2 and "does not fit 'vit_mini_cifar'" in err and err.count("\n") == 1, err
    code, _, err = cli(
        ["run", "analysis=cka_within", *TINY_VIT, f"model.checkpoint={best}", "dataset.image_size=32"], capsys
    )
    assert code == 2 and "was saved from 'resnet_mini_cifar'" in err and err.count("\n") == 1, err
    # resuming a run directory with other settings
    code, _, err = train_cli([*QUICK, "recipe.lr=1e-2", f"hydra.run.dir={trained}"], capsys)
    assert code == 2 and "recipe.lr=0.003" in err and "resume=false" in err and err.count("\n") == 1, err


def test_a_finished_run_is_extended_by_raising_epochs(trained, tmp_path, capsys):
    """recipe.epochs may change on resume: the kept epochs stay, the cosine schedule is rebuilt for the new length."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = pd.read_csv(out / "train.csv")
    code, outp, err = train_cli([*QUICK[:2], "recipe.epochs=5", *QUICK[3:], f"hydra.run.dir={out}"], capsys)
    assert code in (0, None), err
    assert "recipe.epochs changed from 3 to 5 on resume" in outp + err
    after = pd.read_csv(out / "train.csv")
    assert after.epoch.tolist() == [1, 2, 3, 4, 5, 6]
    pd.testing.assert_frame_equal(after.iloc[:4], before)
    assert after.lr.iloc[-1] == pytest.approx(1e-5, rel=1e-6)  # the new schedule ends at min_lr after 1 + 5 epochs
    assert json.loads((out / "run.json").read_text())["epochs"] == 6
