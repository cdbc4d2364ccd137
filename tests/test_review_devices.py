"""Issue 20 leftovers: a device this machine lacks fails before any job of a local sweep starts and before a training
run creates its directory (the pre-check, not each job), while a cluster launcher's jobs are left to their nodes."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import SMALL_DATA, TINY_VIT, cli


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_local_sweep_with_a_missing_device_fails_before_any_job(tmp_path, capsys, monkeypatch):
    from vitstudy.pipeline import models

    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("a job started before the device was checked"))
    args = [
        "run",
        "-m",
        "analysis=cka_within",
        *TINY_VIT,
        *SMALL_DATA,
        "device=cpu,gpu0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    code, _, err = cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "unknown device 'gpu0'; valid on this machine: auto, cpu" in lines[0], err
    assert not (tmp_path / "sweep").exists()


def test_a_cluster_sweep_leaves_the_device_to_its_nodes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from vitstudy.compose import precheck

    precheck(["analysis=cka_within", "device=cuda", "hydra/launcher=slurm"])  # no error: the nodes have the GPUs
    with pytest.raises(Exception, match="device 'cuda' is not available"):
        precheck(["analysis=cka_within", "device=cuda"])


def test_training_on_a_missing_device_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "train"
    code, _, err = cli(
        ["train", "model=resnet_mini_cifar", "recipe=quick", "device=gpu0", f"hydra.run.dir={out}"], capsys
    )
    assert code == 2 and err.strip().count("\n") == 0 and "unknown device 'gpu0'" in err, err
    assert not out.exists() or os.listdir(out) == []
