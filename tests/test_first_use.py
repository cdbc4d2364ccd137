"""What a new user meets first (issue 20, items 8-13): progress in logs, offline runs, unreadable images, start-up
time, help and list output, compare's errors, the API's entry points, the report's settings lines."""

import os
import subprocess
import sys

import pytest

from helpers import SMALL_DATA, TINY_VIT, cli


def test_report_labels_probe_splits_not_repeats():
    """linear_probe records one image set per split (train/val/test), with no batches: the report says so."""
    from vitstudy.report.settings import settings

    run = {
        "analysis": "linear_probe",
        "config": {"dataset": {"batch_size": 100}},
        "images": [
            {"repeat": 0, "split": "train", "images": 600, "batches": None},
            {"repeat": 1, "split": "val", "images": 250, "batches": None},
            {"repeat": 2, "split": "test", "images": 150, "batches": None},
        ],
    }
    line = settings(run)["images"]
    assert line == "train 600, val 250, test 150 images", line
    assert "None" not in line and "repeats" not in line
    cka = {
        "analysis": "cka_within",
        "config": {"dataset": {"batch_size": 64}},
        "images": [{"repeat": r, "images": 512, "batches": 8} for r in range(3)],
    }
    assert settings(cka)["images"] == "512 images x 3 repeats, 8 batches of 64"


def _modules_after(args):
    """The heavy modules `vitstudy ARGS` imported, its exit code and stderr, in a fresh interpreter."""
    code = (
        "import sys\nfrom vitstudy.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    c = e.code\n"
        "else:\n    c = 0\nprint('MODULES', sorted(m for m in ('torch', 'timm', 'matplotlib', 'torchvision') if m in sys.modules),"
        " file=sys.stderr)\nsys.exit(c)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["list"], ["run", "model=vit_b61"], []])
def test_help_list_and_unknown_presets_import_no_torch(args):
    code, out, err = _modules_after(args)
    assert "MODULES []" in err, err
    if args == ["run", "model=vit_b61"]:
        assert code == 2 and "unknown model 'vit_b61'" in err
    elif not args:  # no command: the usage on stderr, exit 2 (a usage error)
        assert code == 2 and err.startswith("usage: vitstudy COMMAND") and out == ""
    else:
        assert code == 0


def test_import_vitstudy_still_registers_its_models_with_timm():
    code = (
        "import sys, vitstudy\nassert 'timm' not in sys.modules and 'torch' not in sys.modules\n"
        "assert {'run', 'cka_matrix', 'compose'} <= set(dir(vitstudy))\n"
        "import timm\nprint(timm.is_model('alternet50_cifar'), timm.is_model('vit_mini_cifar'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["True", "True"], proc.stderr


def test_run_help_is_vitstudy_s_own(capsys):
    code, out, _ = cli(["run", "--help"], capsys)
    assert code == 0 and out.startswith("vitstudy run: ") and "is powered by Hydra" not in out.splitlines()[0]


def test_list_an_analysis_shows_the_cka_settings_it_reads(capsys):
    code, out, _ = cli(["list", "cka_across"], capsys)
    assert code == 0
    for line in ("cka.estimator=unbiased", "cka.repeats=1", "cka.tail=fold", "cka.gram_dtype=float32", "cka.null=0"):
        assert line in out, out
    code, out, _ = cli(["list", "cka_within"], capsys)
    assert "cka.repeats=1" in out and "cka.null" not in out  # the permutation null is cka_across's only


def test_list_shows_experiment_descriptions_whole(capsys):
    from importlib import resources

    code, out, _ = cli(["list"], capsys)
    lines = {l.split()[0]: l for l in out.splitlines() if l.startswith("  ")}
    # the header's first paragraph, written out from conf/experiment/parkkim_fig1a.yaml
    assert lines["parkkim_fig1a"].endswith("on a 21 x 21 grid of filter-normalised random directions."), lines[
        "parkkim_fig1a"
    ]
    folder = resources.files("vitstudy.conf") / "experiment"
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            assert lines[entry.name[:-5]].rstrip().endswith((".", ")", ":")), lines[entry.name[:-5]]


def test_preprocessing_warning_goes_to_stderr(tmp_path, capsys):
    """A checkpoint without a data config: mean/std are the architecture's guesses, said on stderr, not stdout."""
    import timm
    import torch

    path = tmp_path / "w.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3).state_dict(), path)
    code, out, err = cli(
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
    assert code == 0, err
    warning = (
        "WARNING: mean, std are the architecture's defaults"  # the preprocessing warning, not the few-batches note
    )
    assert warning in err and warning not in out


def test_compare_bad_selection_lists_the_columns(tmp_path, capsys):
    import numpy as np

    from test_uncertainty import _fake_run

    _fake_run(tmp_path / "a", "in1k", np.arange(4.0), np.ones((5, 4)), np.arange(5, dtype=np.int64))
    code, _, err = cli(["compare", str(tmp_path / "a"), "--a", "blok==0", "--b", "block==1"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "blok" in lines[0]
    assert "columns: model, block, head, mean_distance" in lines[0], lines[0]


def test_cka_matrix_takes_a_preset_name_like_the_cli():
    """`cka_matrix("vit_cifar10_demo", ...)` builds the bundled model as `model=vit_cifar10_demo` does; anything else
    that is not a module is one VitstudyError saying what it takes."""
    import timm
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import vitstudy

    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x), batch_size=8)
    by_name = vitstudy.cka_matrix("vit_cifar10_demo", loader)
    module = timm.create_model("vit_mini_cifar.demo_cifar10", pretrained=True)
    by_module = vitstudy.cka_matrix(module, loader)
    assert len(by_name) == len(by_module) > 1
    assert by_name.cka.tolist() == pytest.approx(by_module.cka.tolist(), abs=1e-6)
    with pytest.raises(vitstudy.VitstudyError, match="torch.nn.Module or a model preset / timm name"):
        vitstudy.cka_matrix(42, loader)


def test_unreadable_images_are_reported_before_the_count_and_leave_no_empty_log(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.jpg").write_text("not a jpeg")
    run_dir = tmp_path / "run"
    code, out, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY_VIT,
            "dataset=imagefolder",
            f"dataset.root={folder}",
            "dataset.num_images=1024",
            f"hydra.run.dir={run_dir}",
        ],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cannot read image" in lines[0] and "6 of 6" in lines[0], err
    assert "larger than the data set" not in err
    assert not list(run_dir.glob("*.log")), list(run_dir.iterdir())  # no empty log left behind


def test_offline_weights_error_names_the_config_entry_to_change(tmp_path, capsys):
    """Offline (conftest: HF_HUB_OFFLINE=1, an empty HF_HOME) with the model's weights turned off, the default
    pretrained reference is what fails, and the one line says how to change *it*; likewise a compare entry."""
    from helpers import assert_one_line_error

    assert_one_line_error(
        ["run", "analysis=cka_across", *TINY_VIT, *SMALL_DATA],
        "reference.checkpoint=/path/to/weights.safetensors (or .pth) or reference.pretrained=false",
        tmp_path / "a",
        capsys,
    )
    assert_one_line_error(
        ["run", "analysis=attention_distance", *TINY_VIT, *SMALL_DATA, "analysis.compare=[vit_s16]"],
        "give analysis.compare entry 0 as a mapping with a checkpoint",
        tmp_path / "b",
        capsys,
    )


def test_layers_needs_no_weights_offline(capsys):
    """`vitstudy layers model=vit_b16 layers=all` (a README command) lists module names without the pretrained weights."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    code, out, err = cli(["layers", "model=vit_b16", "layers=blocks"], capsys)
    assert code == 0, err
    assert [l.split()[0] for l in out.strip().splitlines()] == [f"blocks.{i}" for i in range(12)]
    assert all(l.endswith("NLC   (197, 768)") for l in out.strip().splitlines()), (
        out
    )  # 14 x 14 patches + CLS, width 768


def test_progress_lines_count_batches_images_per_second_and_time_left():
    """The log-mode line, against numbers worked out by hand from a fake clock: 4 batches of 8 images, 2 s each."""
    from vitstudy.pipeline.progress import LogLines

    ticks = iter([0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 10.0])
    lines = []
    items = [(None, [0] * 8)] * 5
    out = list(LogLines(items, "cka", every=3.0, write=lines.append, clock=lambda: next(ticks)))
    assert out == items
    # a line once 3 s have passed since the last: after batch 2 (4 s, 16 images, 3 batches x 2 s left) and batch 4
    # (8 s), then the end (10 s)
    assert lines == [
        "vitstudy: cka 2/5 batches, 4.0 images/s, 0:00:06 left",
        "vitstudy: cka 4/5 batches, 4.0 images/s, 0:00:02 left",
        "vitstudy: cka 5/5 batches, 4.0 images/s, done in 0:00:10",
    ]
    ticks = iter([0.0, 5.0, 5.0])
    lines = []
    list(LogLines(items[:1], "cka", every=3.0, write=lines.append, clock=lambda: next(ticks)))
    assert lines == ["vitstudy: cka 1/1 batches, 1.6 images/s, done in 0:00:05"]  # said once, not twice


@pytest.mark.parametrize("progress", ["auto", "log", "false", "true"])
def test_progress_modes_from_the_command_line(progress, tmp_path, capsys, monkeypatch):
    """Output not a terminal (pytest captures it): auto and log print timed lines to stderr and the run's log,
    false prints nothing, true forces the tqdm bar."""
    monkeypatch.setenv("VITSTUDY_PROGRESS_SECONDS", "0")
    run_dir = tmp_path / "run"
    code, out, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY_VIT,
            *SMALL_DATA,
            f"progress={progress}",
            "cache.results=false",
            f"hydra.run.dir={run_dir}",
        ],
        capsys,
    )
    assert code == 0, err
    lines = [l for l in err.splitlines() if l.startswith("vitstudy: cka ")]
    if progress in ("auto", "log"):
        assert lines[0].startswith("vitstudy: cka 1/3 batches, ") and "images/s" in lines[0] and "left" in lines[0], err
        assert lines[-1].startswith("vitstudy: cka 3/3 batches, ") and "done in" in lines[-1]
        log = (run_dir / "cka_within.log").read_text()
        assert "cka 1/3 batches" in log and "cka 3/3 batches" in log
    else:
        assert lines == []
        assert ("\r" in err or "it/s" in err) == (progress == "true"), err
    code, _, err = cli(
        [
            "run",
            "analysis=cka_within",
            *TINY_VIT,
            *SMALL_DATA,
            "progress=sometimes",
            f"hydra.run.dir={tmp_path / 'bad'}",
        ],
        capsys,
    )
    assert code == 2 and "progress must be auto, true" in err
