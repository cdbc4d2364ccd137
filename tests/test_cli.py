"""End to end through `vitstudy run`, and every bad input: one line, non-zero exit, nothing finished-looking."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, assert_one_line_error, cli, minibatch_reference
from vitstudy import cka_matrix


def test_cka_across_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(
        [
            "run",
            "analysis=cka_across",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            "dataset.num_images=27",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    assert "cka_across done" in stdout
    df = pd.read_csv(out / "cka_across.csv")
    assert len(df) == 3 * 8 and set(df.layer_x) == {"blocks.0", "blocks.1", "blocks.2"}
    assert {
        "model_x",
        "layer_x",
        "index_x",
        "model_y",
        "layer_y",
        "index_y",
        "cka",
        "estimator",
        "tokens",
        "num_images",
    } <= set(df.columns)
    assert df.num_images.unique().tolist() == [27] and df.estimator.unique().tolist() == ["unbiased"]
    assert df.cka.between(-1, 1).all()
    for f in ("cka_across.png", "cka_across.pdf", "images.csv"):
        assert (out / f).stat().st_size > 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["model"]["kwargs"]["depth"] == 3
    assert record["images"][0]["tail"] == "folded" and record["images"][0]["images"] == 27  # 8+8+11
    assert {"load_models", "analysis", "write"} <= set(record["timings_s"]) and "torch" in record["versions"]
    assert len(pd.read_csv(out / "images.csv").dataset_index.unique()) == 27


def test_cka_within_end_to_end_all_layers_and_repeats(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY_VIT,
            *SMALL_DATA,
            "layers=all",
            "cka.repeats=2",
            "tokens=mean",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "cka_within.csv")
    m = df.pivot(index="index_x", columns="index_y", values="cka").to_numpy()
    assert m.shape == (20, 20)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-9)
    assert df.cka_std.notna().all() and (df.tokens == "mean").all() and (df.repeats == 2).all()


def test_pipeline_matches_independent_float64_minibatch_cka(tiny_vit, tiny_resnet, images):
    """The hooked, streamed, float32-Gram pipeline against features captured by hand and a numpy formula."""
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=8)
    df = cka_matrix(
        tiny_vit, loader, other=tiny_resnet, layers=["blocks.0", "blocks.2"], other_layers=["layer1.0", "layer4.1"]
    )
    feats = {n: [] for n in ("blocks.0", "blocks.2", "layer1.0", "layer4.1")}
    mods = {**dict(tiny_vit.named_modules()), **dict(tiny_resnet.named_modules())}
    hooks = [
        mods[n].register_forward_hook(lambda m, a, o, n=n: feats[n].append(o.reshape(len(o), -1).double().numpy()))
        for n in feats
    ]
    with torch.no_grad():
        for x, _ in loader:
            tiny_vit(x), tiny_resnet(x)
    for h in hooks:
        h.remove()
    for row in df.itertuples():
        want = minibatch_reference(feats[row.layer_x], feats[row.layer_y])
        assert row.cka == pytest.approx(want, abs=1e-5), (row.layer_x, row.layer_y)


def test_constant_cls_token_is_reported_not_hidden(tmp_path, capsys):
    """Before the first attention the CLS token is the same for every image: CKA is undefined there."""
    code, _, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY_VIT,
            *SMALL_DATA,
            "layers=[blocks.0.norm1,blocks.1]",
            "tokens=cls",
            f"hydra.run.dir={tmp_path}",
        ],
        capsys,
    )
    assert code == 2 and "'blocks.0.norm1'" in err and "same features for every image" in err


def test_list_shows_analyses_models_and_datasets(capsys):
    code, out, _ = cli(["list"], capsys)
    assert code == 0
    for word in ("cka_within", "cka_across", "vit_b16", "resnet50", "bit_r50x1", "swin_t", "synthetic", "imagefolder"):
        assert word in out


def test_cfg_job_prints_the_config(capsys):
    code, out, _ = cli(["run", "--cfg", "job", "model=vit_b16"], capsys)
    assert code == 0 and "vit_base_patch16_224.augreg_in21k_ft_in1k" in out


def test_multirun_runs_each_job(tmp_path, capsys):
    code, _, err = cli(
        [
            "run",
            "-m",
            "analysis=cka_within",
            *TINY_VIT,
            *SMALL_DATA,
            "model.kwargs.depth=2,3",
            f"hydra.sweep.dir={tmp_path}",
        ],
        capsys,
    )
    assert code == 0, err
    sizes = sorted(len(pd.read_csv(tmp_path / j / "cka_within.csv")) for j in ("0", "1"))
    assert sizes == [4, 9]


BAD = {
    "unknown analysis": (["analysis=ckaa"], "unknown analysis 'ckaa'; closest: cka_"),
    "unknown model preset": (["model=vit_b61"], "unknown model 'vit_b61'"),
    "unknown reference preset": (["reference=resnet5"], "unknown reference 'resnet5'; closest: resnet50"),
    "unknown timm name": (["model.name=vit_tinny_patch16_224"], "unknown timm model"),
    "unknown dataset": (["dataset=imagenet22"], "unknown dataset"),
    "unknown layer": (["layers=[blocks.0,blocks.99]"], "no layer 'blocks.99'"),
    "bad type": (["dataset.num_images=many"], "could not be converted"),
    "unknown key": (
        ["model.pretrianed=false"],
        "unknown key model.pretrianed: no 'pretrianed' in model; closest: pretrained",
    ),
    "missing root": (["dataset=imagefolder", "dataset.root=/no/such/dir"], "dataset root not found"),
    "too few images": (["dataset.num_images=3"], "too few"),
    "more images than data": (["dataset.size=10", "dataset.num_images=11"], "larger than the data set"),
    "missing checkpoint": (["model.checkpoint=/no/such/w.pth"], "checkpoint file not found"),
    "offline weights": (["model.pretrained=true"], "model.pretrained=false"),
    "bad estimator": (["cka.estimator=rbf"], "cka.estimator"),
    "unknown analysis parameter": (
        ["analysis=skip_ratio", "analysis.agregate=x"],
        "unknown parameter analysis.agregate for skip_ratio; closest: aggregate",
    ),
    "bad analysis parameter type": (["analysis=skip_ratio", "analysis.heatmap_tokens=many"], "heatmap_tokens"),
    "bad analysis parameter value": (
        ["analysis=skip_ratio", "analysis.heatmap_tokens=0"],
        "analysis.heatmap_tokens must be at least 1",
    ),
}


@pytest.mark.parametrize("sweep", ["analysis.agregate=x,y", "analysis.heatmap_tokens=5,0"])
def test_bad_analysis_parameters_fail_before_any_model_is_built(sweep, tmp_path, capsys):
    """With the default *pretrained* models offline, the parameter is what the one line names (checked first);
    in a sweep every value is checked before the first job starts."""
    code, out, err = cli(["run", "-m", "analysis=skip_ratio", sweep, f"hydra.sweep.dir={tmp_path}"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "analysis." in lines[0] and "pretrained" not in lines[0], err
    assert not list(tmp_path.rglob("*.json"))


def test_list_shows_an_analysis_parameters(capsys):
    code, out, _ = cli(["list", "skip_ratio"], capsys)
    assert code == 0 and "analysis.aggregate=mean_of_ratios" in out and "analysis.heatmap_tokens=10" in out
    assert "ratio_of_means (mean ||z|| / mean ||f(z)||)" in out  # the field's own comment


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_line(case, tmp_path, capsys):
    extra, expected = BAD[case]
    assert_one_line_error(
        ["run", "analysis=cka_within", *TINY_VIT, *SMALL_DATA, *extra], expected, tmp_path / "run", capsys
    )


def test_checkpoint_that_does_not_fit(tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    code, _, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY_VIT,
            *SMALL_DATA,
            f"model.checkpoint={path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert code == 2 and "does not fit" in err and len(err.strip().splitlines()) == 1


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "vitstudy")
    proc = subprocess.run([exe, "run", "analysis=nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_diagonal_pairs_layer_i_with_layer_i(tmp_path, capsys):
    same = [
        "reference.name=vit_tiny_patch16_224",
        "reference.pretrained=false",
        "reference.kwargs.img_size=32",
        "reference.kwargs.patch_size=8",
        "reference.kwargs.depth=3",
    ]
    code, _, err = cli(
        [
            "run",
            "analysis=cka_across",
            "analysis.diagonal=true",
            *TINY_VIT,
            *same,
            *SMALL_DATA,
            f"hydra.run.dir={tmp_path}",
        ],
        capsys,
    )
    assert code == 0, err
    full = pd.read_csv(tmp_path / "cka_across.csv")
    diag = pd.read_csv(tmp_path / "cka_diagonal.csv")
    assert diag.layer_x.tolist() == ["blocks.0", "blocks.1", "blocks.2"] and diag.depth.tolist() == [0, 0.5, 1]
    want = full[full.index_x == full.index_y].cka.to_numpy()
    np.testing.assert_array_equal(diag.cka.to_numpy(), want)
    code, _, err = cli(
        [
            "run",
            "analysis=cka_across",
            "analysis.diagonal=true",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            f"hydra.run.dir={tmp_path / 'b'}",
        ],
        capsys,
    )
    assert code == 2 and "pairs layer i with layer i" in err


def test_layers_command_lists_module_paths(capsys):
    code, out, err = cli(["layers", "model.name=resnet18", "model.pretrained=false", "layers=blocks"], capsys)
    assert code == 0, err
    assert [l.split()[0] for l in out.strip().splitlines()] == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]


def test_shell_completion_goes_through_hydra(tmp_path):
    env = dict(os.environ, COMP_LINE="vitstudy run mod", COMP_POINT="16")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "vitstudy"), "-sc", "query=bash"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and "model=" in proc.stdout and "model." in proc.stdout
