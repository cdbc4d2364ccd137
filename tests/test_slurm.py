"""Sweeps on a real SLURM cluster through the `hydra/launcher=slurm` preset: job arrays with array_parallelism,
failed jobs and a rerun that submits only them, sbatch refusals in one line, preemption and requeue of an analysis
(resumes from its reducer checkpoint) and of `vitstudy train` (resumes bitwise from its last epoch). docs/slurm.md
describes what these check.

The cluster tests need a one-node cluster on this machine (`scripts/slurm_local.sh start`, run by `.ci/run`); without
one they are skipped with the reason. The tests of what reaches sbatch use a stand-in `sbatch` and always run.
"""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, cli

ACROSS = ["analysis=cka_across", *TINY_VIT, *TINY_RESNET, *SMALL_DATA]
# small requests: the machine is shared (the local cluster lets up to 4 jobs share a CPU)
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


# SAME_THREADS: a job's numbers are compared with a run in this process to 1e-12, so the jobs (which inherit the
# environment through sbatch) get this process's thread count: float32 products summed in another order differ in
# the last bits (CKA 6.3e-8 apart between 1 and 2 threads), e.g. when OMP_NUM_THREADS=1 is exported and conftest
# sets 2 threads here.


def _cluster() -> str:
    """Why the cluster tests cannot run here ('' when they can)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM (sinfo/sbatch not on PATH): `sudo scripts/slurm_local.sh start` installs and starts a one-node cluster"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo did not answer ({err}): start the cluster with `sudo scripts/slurm_local.sh start`"
    if out.returncode != 0:
        return f"slurmctld not reachable ({' '.join(out.stderr.split())}): `sudo scripts/slurm_local.sh start`"
    host = socket.gethostname().split(".")[0]
    nodes = dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)
    if host not in nodes:  # jobs on other machines would not see this machine's tmp_path
        return f"SLURM's nodes ({', '.join(nodes) or 'none'}) do not include this machine ({host}); the tests need a local cluster"
    if nodes[host].rstrip("*~#$@+") not in ("idle", "mix", "alloc", "comp"):
        return f"node {host} is {nodes[host]}, not up: `sudo scripts/slurm_local.sh start`"
    return ""


NO_CLUSTER = _cluster()
if NO_CLUSTER:
    print(f"\ntests/test_slurm.py: cluster tests skipped: {NO_CLUSTER}")
needs_cluster = pytest.mark.skipif(bool(NO_CLUSTER), reason=NO_CLUSTER)


def statuses(sweep: Path) -> list[str]:
    return sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/run.json"))


def _stamp(line: str) -> float:
    """submitit's log time, `submitit INFO (2026-12-01 20:00:26,500) - ...`, in seconds."""
    text = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\)", line).group(1)
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def job_spans(sweep: Path) -> list[tuple[float, float]]:
    """(start, end) of every job's Python process, from submitit's own log lines."""
    spans = []
    for log in sweep.glob(".submitit/*/*_log.out"):  # submitit logs INFO to stdout
        lines = log.read_text().splitlines()
        start = [_stamp(l) for l in lines if l.startswith("submitit INFO") and "Starting with JobEnvironment" in l]
        end = [_stamp(l) for l in lines if l.startswith("submitit INFO") and "Exiting after" in l]
        spans.append((start[0], end[-1]))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda t: (t[0], t[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@needs_cluster
def test_sweep_runs_as_a_job_array_with_array_parallelism_and_is_collected(tmp_path, capsys, monkeypatch):
    """2 x 2 sweep as one SLURM array, at most 2 tasks at once (the node could run 8); collect gathers it; the
    same command again submits nothing; a job's numbers equal the same run in this process."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # see SAME_THREADS
    sweep = tmp_path / "sweep"
    args = [
        "run",
        "-m",
        *ACROSS,
        "model.kwargs.depth=2,3",
        "reference.name=resnet18,resnet10t",
        *SLURM,
        "hydra.launcher.array_parallelism=2",
        f"cache.dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
    ]
    t0 = time.time()
    code, out, err = cli(args, capsys)
    print(f"4-job SLURM sweep: {time.time() - t0:.0f} s")
    assert code == 0, err
    assert "submitted 4 job(s) to SLURM as array job" in out and "at most 2 at once" in out
    assert statuses(sweep) == ["complete"] * 4
    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --mem=1GB" in script and "#SBATCH --cpus-per-task=1" in script
    array = re.search(r"array job (\d+)", out).group(1)
    assert sorted(p.name for p in sweep.glob(".submitit/[0-9]*_*")) == [f"{array}_{i}" for i in range(4)]
    spans = job_spans(sweep)
    assert len(spans) == 4 and most_at_once(spans) <= 2, spans

    code, _, err = cli(["collect", str(sweep)], capsys)
    assert code == 0, err
    df = pd.read_csv(sweep / "summary" / "cka_across.csv")
    assert len(df) == (2 + 3) * (8 + 4) and {"model.kwargs.depth", "reference.name"} <= set(df.columns)
    assert (sweep / "summary" / "index.html").is_file()

    code, out, err = cli(args, capsys)  # the finished sweep again: nothing reaches SLURM
    assert code == 0, err
    assert "all 4 job(s) of the sweep already finished; nothing submitted" in out and "submitted 4" not in out

    # one job computed again in this process (fresh cache): the same numbers
    job = next(
        d
        for d in sweep.glob("[0-9]")
        if "model.kwargs.depth=3" in (d / ".hydra" / "overrides.yaml").read_text()
        and "resnet10t" in (d / ".hydra" / "overrides.yaml").read_text()
    )
    here = tmp_path / "here"
    code, _, err = cli(
        [
            "run",
            *ACROSS,
            "model.kwargs.depth=3",
            "reference.name=resnet10t",
            f"cache.dir={tmp_path / 'c2'}",
            f"hydra.run.dir={here}",
        ],
        capsys,
    )
    assert code == 0, err
    np.testing.assert_allclose(
        pd.read_csv(job / "cka_across.csv").cka, pd.read_csv(here / "cka_across.csv").cka, rtol=0, atol=1e-12
    )


@needs_cluster
def test_failed_job_is_recorded_and_a_rerun_submits_only_it(tmp_path, capsys):
    """num_images=3 is too few for unbiased CKA: that array task fails, the other finishes; the exit names the
    failed job; failed.json and collect's failed.csv point at the job's SLURM log, which holds the error. The same
    command again submits only the failed job (a plain job, not an array), which fails the same way."""
    sweep = tmp_path / "sweep"
    args = [
        "run",
        "-m",
        *ACROSS,
        "dataset.num_images=3,16",
        *SLURM,
        f"cache.dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
    ]
    t0 = time.time()
    code, out, err = cli(args, capsys)
    print(f"2-job SLURM sweep with a failure: {time.time() - t0:.0f} s")
    assert code == 1 and f"1 job(s) failed; see failed.json in: {sweep / '0'}" in err
    assert "Traceback" not in err
    assert (sweep / "1" / "cka_across.csv").is_file() and not (sweep / "0" / "cka_across.csv").exists()
    info = json.loads((sweep / "0" / "failed.json").read_text())
    assert "too few" in info["error"] and re.fullmatch(r"\d+_0", info["job_id"])
    assert "too few" in Path(info["log"]).read_text()  # the job's own stderr under .submitit/
    code, _, _ = cli(["collect", str(sweep)], capsys)
    failed = pd.read_csv(sweep / "summary" / "failed.csv")
    assert len(failed) == 1 and "too few" in failed.error[0] and "num_images=3" in failed.overrides[0]
    assert failed.log[0] == info["log"]

    before = {p.name for p in sweep.glob(".submitit/[0-9]*")}
    finished_at = (sweep / "1" / "run.json").stat().st_mtime_ns
    code, out, err = cli(args, capsys)  # the rerun: job 1 is found finished, only job 0 reaches SLURM
    assert code == 1 and f"1 job(s) failed; see failed.json in: {sweep / '0'}" in err, err
    assert f"job 1 already finished in {sweep / '1'}; not submitted" in out and "#1 :" not in out and "#0 :" in out
    new = re.search(r"submitted 1 job\(s\) to SLURM as job (\d+);", out)
    assert new, out
    assert {p.name for p in sweep.glob(".submitit/[0-9]*")} - before == {new.group(1)}
    assert json.loads((sweep / "0" / "failed.json").read_text())["job_id"] == new.group(1)
    assert statuses(sweep) == ["complete"] and (sweep / "1" / "run.json").stat().st_mtime_ns == finished_at


@needs_cluster
def test_sbatch_refusals_are_one_line(tmp_path, capsys):
    """More memory than the node has, a partition that does not exist: one line with sbatch's words, the key to
    change and what the cluster offers; exit 2; no job submitted, no traceback."""
    node_gb = (
        max(
            int(l.strip())
            for l in subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True, text=True).stdout.split()
        )
        // 1024
    )
    cases = [
        (
            "hydra.launcher.mem_gb=100000",
            "Memory specification can not be satisfied",
            f"change hydra.launcher.mem_gb (the largest node has {node_gb} GB: at most hydra.launcher.mem_gb={node_gb})",
        ),
        (
            "hydra.launcher.partition=no_such_partition",
            "invalid partition specified: no_such_partition",
            "change hydra.launcher.partition (valid: ",
        ),
    ]
    for override, said, right in cases:
        sweep = tmp_path / override.split(".")[-1].split("=")[0]
        code, out, err = cli(
            ["run", "-m", *ACROSS, "model.kwargs.depth=2,3", *SLURM, override, f"hydra.sweep.dir={sweep}"], capsys
        )
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("vitstudy: error: sbatch refused the jobs: "), err
        assert said in lines[0] and right in lines[0] and "Traceback" not in err + out
        assert "submitted" not in out and not list(sweep.glob("*/run.json"))


def _fake_slurm(tmp_path: Path, refusal: str | None) -> Path:
    """A directory with stand-in sbatch/srun/squeue: sbatch keeps the submission script it is given and refuses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": f'for a; do last=$a; done; cp "$last" {tmp_path}/submitted.sh\necho "sbatch: error: {refusal}" >&2\nexit 1\n',
        "srun": "exit 1\n",
        "squeue": "exit 0\n",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_site_keys_reach_the_sbatch_script(tmp_path, capsys, monkeypatch):
    """qos, constraint, exclude, setup lines and any other sbatch option (additional_parameters) end up in the script
    sbatch is given (submitit shell-quotes values; sbatch reads the quotes); a refusal naming the qos says to change
    hydra.launcher.qos."""
    bin_dir = _fake_slurm(tmp_path, "Batch job submission failed: Invalid qos specification")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, _, err = cli(
        [
            "run",
            "-m",
            *ACROSS,
            "model.kwargs.depth=2,3",
            *SLURM,
            "hydra.launcher.partition=gpu",
            "hydra.launcher.account=proj",
            "hydra.launcher.qos=high",
            "hydra.launcher.constraint=a100",
            "hydra.launcher.exclude=node3",
            "+hydra.launcher.additional_parameters.nodelist='node[1-2]'",
            "hydra.launcher.setup=[module load cuda,echo ready]",
            "+hydra.launcher.additional_parameters.mail-type=END",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Invalid qos specification; change hydra.launcher.qos" in lines[0], err
    script = (tmp_path / "submitted.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclude=node3",
        "#SBATCH --nodelist='node[1-2]'",
        "#SBATCH --array=0-1%2",
        "module load cuda",
        "echo ready",
        "#SBATCH --mail-type=END",
    ):
        assert line in script.splitlines(), (line, script)


def test_missing_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands at all
    code, out, err = cli(
        ["run", "-m", *ACROSS, "model.kwargs.depth=2,3", *SLURM, f"hydra.sweep.dir={tmp_path / 's'}"], capsys
    )
    lines = err.strip().splitlines()
    assert (
        code == 2
        and len(lines) == 1
        and "hydra/launcher=slurm needs SLURM, but sbatch, srun, squeue is not on PATH" in lines[0]
    )
    assert "scripts/slurm_local.sh" in lines[0] and "Traceback" not in err


def _signal_once_written(proc, sweep, written, times: dict) -> tuple[str, str]:
    """Wait until `written()` finds the job's first checkpoint, send the job submitit's preemption signal (USR2),
    then wait for the sweep command to end; returns its stdout and stderr. A failed test leaves no job behind."""
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not written() and proc.poll() is None:
            time.sleep(0.05)
        jobs = [p.name for p in sweep.glob(".submitit/[0-9]*")]  # one job: a plain job, not an array
        assert jobs and written(), "the job wrote no checkpoint"
        subprocess.run(["scancel", "--signal=USR2", jobs[0]], check=True)
        times["signalled"] = time.time()
        out, err = proc.communicate(timeout=600)
        times["finished"] = time.time()
        return out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            for job in sweep.glob(".submitit/[0-9]*"):
                subprocess.run(["scancel", job.name])


@needs_cluster
@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_from_its_reducer_checkpoint(tmp_path, capsys):
    """submitit's pre-timeout/preemption signal (USR2, what `--signal=USR2@signal_delay_s` sends before the time
    limit) after the first reducer checkpoint: the job requeues itself (`scontrol requeue`), starts again, resumes
    from the checkpoint and its CKA equals an uninterrupted run's to 1e-12."""
    vitstudy = os.path.join(os.path.dirname(os.sys.executable), "vitstudy")
    common = [
        "analysis=cka_within",
        "model.name=vit_tiny_patch16_224",
        "model.pretrained=false",
        "model.kwargs.depth=4",
        "dataset=synthetic",
        "dataset.num_images=480",
        "dataset.batch_size=8",
        "dataset.image_size=64",
        "cache.checkpoint_every=1",
        "layers=all",
    ]
    sweep, partial = tmp_path / "sweep", tmp_path / "cache" / "partial"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # see SAME_THREADS
    times = {"submitted": time.time()}
    proc = subprocess.Popen(
        [vitstudy, "run", "-m", *common, *SLURM, f"cache.dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = _signal_once_written(proc, sweep, lambda: list(partial.glob("*.pt")), times)
    assert proc.returncode == 0, err
    log = next(sweep.glob(".submitit/[0-9]*/*_log.out")).read_text().splitlines()
    starts = [_stamp(l) for l in log if l.startswith("submitit INFO") and "Starting with JobEnvironment" in l]
    requeued = [_stamp(l) for l in log if l.startswith("submitit INFO") and "Requeued job" in l]
    assert len(starts) == 2 and len(requeued) == 1, "\n".join(log)
    times.update(requeued=requeued[0], restarted=starts[1])
    record = json.loads((sweep / "0" / "run.json").read_text())
    resumed_at = record["images"][0]["resumed_at_batch"]
    with capsys.disabled():  # shown with -s (the CLI's capture below would swallow it)
        print(
            "\npreemption timeline (s after submission): "
            + ", ".join(f"{k} {v - times['submitted']:.1f}" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
            + f"; resumed at batch {resumed_at} of 60"
        )
    assert resumed_at > 0
    code, _, err = cli(
        ["run", *common, f"cache.dir={tmp_path / 'fresh'}", f"hydra.run.dir={tmp_path / 'whole'}"], capsys
    )
    assert code == 0, err
    resumed = pd.read_csv(sweep / "0" / "cka_within.csv").cka.to_numpy()
    whole = pd.read_csv(tmp_path / "whole" / "cka_within.csv").cka.to_numpy()
    print(f"largest |CKA resumed - uninterrupted| = {np.abs(resumed - whole).max():.3g}")
    np.testing.assert_allclose(resumed, whole, rtol=0, atol=1e-12)
    assert not list(partial.glob("*.pt"))  # the finished job cleared its checkpoint


TRAIN = [
    "model=vit_mini_cifar",
    "model.kwargs.depth=2",
    "model.kwargs.embed_dim=48",
    "recipe=quick",
    "recipe.epochs=9",
    "dataset=synthetic",
    "dataset.image_size=32",
    "dataset.size=128",
    "dataset.val_images=32",
    "dataset.batch_size=32",
    "recipe.batch_size=16",
    "dataset.num_workers=0",
    "threads=1",
]  # 10 epochs of 8 updates, about 1 s each


@needs_cluster
@pytest.mark.slow
def test_preempted_training_is_requeued_and_resumes_bitwise(tmp_path, capsys):
    """`vitstudy train -m` on SLURM, sent submitit's preemption signal (USR2) once the first epoch's checkpoint is
    written: the job requeues itself, starts again, resumes after its last complete epoch and ends with train.csv's
    losses, accuracies and learning rates bitwise equal to an uninterrupted run's, and the same final weights.
    The same command again submits nothing (the training is finished)."""
    vitstudy = os.path.join(os.path.dirname(os.sys.executable), "vitstudy")
    sweep = tmp_path / "sweep"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    times = {"submitted": time.time()}
    proc = subprocess.Popen(
        [vitstudy, "train", "-m", *TRAIN, *SLURM, f"hydra.sweep.dir={sweep}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = _signal_once_written(proc, sweep, lambda: list(sweep.glob("*/checkpoints/last.pt")), times)
    assert proc.returncode == 0, err
    lines = next(sweep.glob(".submitit/[0-9]*/*_log.out")).read_text().splitlines()
    info = [l for l in lines if l.startswith("submitit INFO")]
    starts = [_stamp(l) for l in info if "Starting with JobEnvironment" in l]
    requeued = [_stamp(l) for l in info if "Requeued job" in l]
    done = [_stamp(l) for l in info if "Exiting after successful completion" in l]
    assert len(starts) == 2 and len(requeued) == 1 and len(done) == 1, "\n".join(lines)
    resumed = [l for l in lines if l.startswith("vitstudy: resuming")]
    assert len(resumed) == 1, "\n".join(lines)
    after = int(re.search(r"after epoch (\d+)/10", resumed[0]).group(1))
    times.update(started=starts[0], requeued=requeued[0], resumed=starts[1], job_done=done[0])
    with capsys.disabled():  # shown with -s (the CLI's capture below would swallow it)
        print(
            "\ntrain preemption timeline (s after submission): "
            + ", ".join(f"{k} {v - times['submitted']:.1f}" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
            + f"; resumed after epoch {after} of 10"
        )
    run = next(sweep.glob("*/train.csv")).parent
    assert 1 <= after < 10 and json.loads((run / "run.json").read_text())["resumed_from_epoch"] == after

    torch_threads = torch.get_num_threads()
    try:  # the same training, uninterrupted, in this process
        code, _, err = cli(["train", *TRAIN, f"hydra.run.dir={tmp_path / 'whole'}"], capsys)
    finally:
        torch.set_num_threads(torch_threads)  # threads=1 is process-wide
    assert code in (0, None), err
    a, b = pd.read_csv(run / "train.csv"), pd.read_csv(tmp_path / "whole" / "train.csv")
    cols = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1"]
    with capsys.disabled():
        print(
            "largest |loss resumed - uninterrupted| = "
            f"{max(np.abs(a[c] - b[c]).max() for c in ('train_loss', 'val_loss')):.3g} over {len(a)} epochs"
        )
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    sa = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    jobs = {p.name for p in sweep.glob(".submitit/[0-9]*")}
    code, out, err = cli(["train", "-m", *TRAIN, *SLURM, f"hydra.sweep.dir={sweep}"], capsys)  # the same command again
    assert code in (0, None), err
    assert "all 1 job(s) of the sweep already finished; nothing submitted" in out and "submitted 1" not in out, out
    assert {p.name for p in sweep.glob(".submitit/[0-9]*")} == jobs


def test_a_finished_training_run_is_not_submitted_again(tmp_path, capsys):
    """The launcher's check before sbatch (launch._trained): a training run directory with a complete run.json and
    the same settings is finished; other settings, resume=false, a settings change a resume allows but a finished
    run has not had (recipe.epochs), or a missing run.json are not. Runs without a cluster."""
    from vitstudy.launch import _trained
    from vitstudy.train.app import compose

    small = [
        "model=vit_mini_cifar",
        "model.kwargs.depth=1",
        "model.kwargs.embed_dim=24",
        "recipe=quick",
        "recipe.epochs=1",
        "dataset=synthetic",
        "dataset.image_size=32",
        "dataset.size=32",
        "dataset.val_images=16",
        "dataset.batch_size=16",
        "recipe.batch_size=16",
        "dataset.num_workers=0",
    ]
    run = tmp_path / "run"
    code, _, err = cli(["train", *small, f"hydra.run.dir={run}"], capsys)
    assert code in (0, None), err
    assert _trained(compose(small), run)
    assert _trained(compose([*small, "dataset.batch_size=8", "device=cpu"]), run)  # evaluation batch, device: free
    assert not _trained(compose([*small, "recipe.epochs=2"]), run)  # longer: the job must extend it
    assert not _trained(compose([*small, "recipe.lr=1e-2"]), run)
    assert not _trained(compose([*small, "resume=false"]), run)
    assert not _trained(compose(small), tmp_path / "elsewhere")
    (run / "run.json").unlink()  # killed before the end: resumes
    assert not _trained(compose(small), run)
