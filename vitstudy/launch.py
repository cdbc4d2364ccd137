"""Sweeps through submitit (`hydra/launcher=slurm`, `hydra/launcher=local`): what vitstudy adds to the launch of
hydra-submitit-launcher, and the record of failed jobs.

- Jobs whose run directory already holds their finished result (same cache key; for training, a complete
  `run.json` with the same settings) are not submitted: a rerun of a finished sweep submits nothing, a rerun after
  failures submits only the failed or missing jobs.
- `sbatch` refusing the jobs (memory, partition, account, GPUs, ...) or SLURM missing ends the command with one
  line naming sbatch's message and the launcher key to change; no traceback.
- The wait is bounded without accounting: submitit alone polls `sacct`, which fails without slurmdbd, and waits
  forever for a job that died without writing its result. Here a job that has left the queue (`squeue`) without a
  result is a failed job, with SLURM's state and the job's last error line.
- Failed jobs (`failed.json` written by the job, or no result) are printed with their log paths, recorded in
  `failed.json` (read by `vitstudy collect`) and end the sweep with exit 1 naming them.

`submitit_launch()` installs this for one `vitstudy run` / `vitstudy train` command (cli.py). The jobs themselves run
the plugin's unchanged `__call__` and `checkpoint`: on submitit's pre-timeout or preemption signal (USR2) the job
requeues itself with the same arguments and the Hydra job starts again, resuming from vitstudy's own checkpoints
(the reducers' sums in `cache.dir`, `checkpoints/last.pt` of training).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, Sequence

from .errors import VitstudyError, fail

FAILED: list[str] = []  # run directories of this command's failed jobs (the CLI's exit names them)

# sbatch's refusal -> the launcher key to change (first match wins)
SBATCH_KEYS = [
    (r"memory|mem-per|requested node configuration", "hydra.launcher.mem_gb"),
    (r"partition", "hydra.launcher.partition"),
    (r"account", "hydra.launcher.account"),
    (r"qos", "hydra.launcher.qos"),
    (r"gres|gpu", "hydra.launcher.gpus_per_node"),
    (r"processors|cpu", "hydra.launcher.cpus_per_task"),
    (r"time limit", "hydra.launcher.timeout_min"),
    (r"feature|constraint", "hydra.launcher.constraint"),
    (r"node name|nodelist", "hydra.launcher.exclude or additional_parameters.nodelist"),
]
POLL_S = 5  # squeue poll interval
GRACE_S = 15  # how long a result file may lag behind the job leaving the queue (shared file systems)
SILENT_S = 600  # squeue failing this long: stop waiting
STUCK = (
    "PartitionConfig",
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "ReqNodeNotAvail",
    "BadConstraints",
    "QOSMaxMemoryPerJob",
    "AssocMaxJobsLimit",
    "InvalidAccount",
    "InvalidQOS",
)


def job_failed(out_dir: str, err: Exception, overrides: Sequence[str]) -> dict:
    """Inside a sweep job: write `failed.json` (error line, overrides, log paths), print the line, remember the job.
    Returns what the job hands back to the submitting process."""
    from .pipeline.results import write_json

    info = {"error": str(err), "overrides": list(overrides), **_own_logs()}
    write_json(Path(out_dir) / "failed.json", info)
    if out_dir not in FAILED:
        FAILED.append(out_dir)
    print(f"vitstudy: error in {out_dir}: {err}", file=sys.stderr, flush=True)
    return {"failed": str(out_dir), **info}


def _own_logs() -> dict:
    """The submitit job id and log paths of the running job (empty outside submitit)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return {}
    try:
        import submitit

        env = submitit.JobEnvironment()
        return {"job_id": env.job_id, "log": str(env.paths.stderr), "stdout": str(env.paths.stdout)}
    except Exception:  # a log path is a convenience, never a reason to fail
        return {}


@contextmanager
def submitit_launch():
    """While the block runs, hydra-submitit-launcher's launchers (slurm, local) launch through `launch` below."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        yield  # the cluster extra is not installed: compose.check_launcher says so when it is asked for
        return
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra scans (and re-executes) its plugin modules once: patch the class it will instantiate
    base = sys.modules["hydra_plugins.hydra_submitit_launcher.submitit_launcher"].BaseSubmititLauncher
    original = base.launch
    base.launch = launch
    try:
        yield
    finally:
        base.launch = original


def sbatch_line(message: str) -> str:
    """One line for sbatch's refusal: its own words, the launcher key to change and what the cluster offers."""
    lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()]
    said = [re.sub(r"^sbatch: error: (Batch job submission failed: )?", "", l) for l in lines if "error" in l.lower()]
    said = list(dict.fromkeys(said or lines[-1:] or ["no message"]))
    text = "; ".join(said)
    key = next((k for pattern, k in SBATCH_KEYS if re.search(pattern, text, re.I)), None)
    if not key:
        return f"sbatch refused the jobs: {text}; check the hydra.launcher.* keys (hydra.launcher.additional_parameters for other options)"
    offer = _offer(key)
    return f"sbatch refused the jobs: {text}; change {key}" + (f" ({offer})" if offer else "")


def _offer(key: str) -> str:
    """What the cluster's nodes offer for a launcher key, from `sinfo` (empty when sinfo says nothing)."""
    try:
        text = subprocess.run(["sinfo", "-h", "-o", "%R|%c|%m|%G"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    rows = [l.split("|") for l in text.splitlines() if l.count("|") == 3]
    if not rows:
        return ""
    if key.endswith("mem_gb"):
        mem = max(int(re.sub(r"\D", "", r[2]) or 0) for r in rows) // 1024
        return f"the largest node has {mem} GB: at most hydra.launcher.mem_gb={mem}"
    if key.endswith("cpus_per_task"):
        return f"the largest node has {max(int(re.sub(r'[^0-9]', '', r[1]) or 0) for r in rows)} CPUs"
    if key.endswith("partition"):
        return "valid: " + ", ".join(sorted({r[0] for r in rows}))
    if key.endswith("gpus_per_node"):
        gres = sorted({r[3] for r in rows if r[3] not in ("(null)", "")})
        return f"node gres: {', '.join(gres)}" if gres else "no node has GPUs: hydra.launcher.gpus_per_node=0"
    return ""


def _check_slurm() -> None:
    missing = [c for c in ("sbatch", "srun", "squeue") if shutil.which(c) is None]
    if missing:
        raise VitstudyError(
            f"hydra/launcher=slurm needs SLURM, but {', '.join(missing)} is not on PATH: run on a cluster's "
            "login node, start a one-node cluster with scripts/slurm_local.sh, or use hydra/launcher=local"
        )


def _finished(sweep_config, out_dir: Path) -> bool:
    """A job whose run directory already holds its finished result: an analysis the runner would report cached, or
    a training run that ended (see `_trained`)."""
    from omegaconf import open_dict, read_write

    try:
        cfg = sweep_config.copy()
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        if "analysis" not in cfg:
            return _trained(cfg, out_dir)
        from . import analyses
        from .pipeline.cache import Cache, run_key

        if cfg.force or not cfg.cache.dir or not cfg.cache.results:
            return False
        cache = Cache(cfg.cache.dir, run_key(cfg, analyses.get(cfg.analysis.name).models(cfg)))
        return cache.finished_in(out_dir) is not None
    except Exception:  # anything unusual: let the job decide
        return False


def _trained(cfg, out_dir: Path) -> bool:
    """`vitstudy train`: the run directory's `run.json` says complete, its `checkpoints/last.pt` is there and it was
    trained with these settings (up to the keys a resume may change, as `train.checkpoint.check_same_run`).
    `resume=false` always trains again. Submitting such a job would only reload the last epoch and rewrite outputs."""
    from omegaconf import OmegaConf

    from .config import TRAIN_RESUME_FREE, flatten, is_neutral
    from .pipeline.results import RECORD

    record = out_dir / RECORD
    if not cfg.get("resume", True) or not record.is_file() or not (out_dir / "checkpoints" / "last.pt").is_file():
        return False
    saved = json.loads(record.read_text())
    if saved.get("command") != "train" or saved.get("status") != "complete":
        return False
    a, b = flatten(saved.get("config")), flatten(OmegaConf.to_container(cfg, resolve=True))
    return all(
        a.get(k) == b.get(k) for k in set(a) | set(b) if not is_neutral(k, TRAIN_RESUME_FREE + ("model.layers",))
    )


def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """BaseSubmititLauncher.launch with finished jobs skipped, one-line refusals, a bounded wait and failures
    recorded (see the module docstring). `self` is the plugin's launcher."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides
    from omegaconf import OmegaConf, open_dict

    slurm = self._EXECUTOR == "slurm"
    if slurm:
        try:
            _check_slurm()
        except VitstudyError as err:
            fail(str(err))
    sweep_dir = Path(str(self.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in self.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

    returns: dict[int, Any] = {}
    todo = []  # (idx, overrides, run dir)
    for n, overrides in enumerate(job_overrides):
        idx = initial_job_idx + n
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = idx
        out_dir = sweep_dir / str(sweep_config.hydra.sweep.subdir)
        if _finished(sweep_config, out_dir):
            again = "force=true recomputes" if "analysis" in sweep_config else "resume=false trains again"
            print(f"vitstudy: job {idx} already finished in {out_dir}; not submitted ({again})", flush=True)
            returns[idx] = JobReturn(overrides=list(overrides), working_dir=str(out_dir), status=JobStatus.COMPLETED)
        else:
            todo.append((idx, list(overrides), out_dir))
    if not todo:
        print(f"vitstudy: all {len(returns)} job(s) of the sweep already finished; nothing submitted", flush=True)
        return [returns[i] for i in sorted(returns)]

    params = dict(self.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
    job_params = [(o, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()) for idx, o, _ in todo]
    for idx, o, _ in todo:
        print(f"vitstudy: #{idx} : {' '.join(filter_overrides(o))}", flush=True)
    said = io.StringIO()  # submitit prints sbatch's stderr before raising: the one line below says it instead
    try:
        with redirect_stderr(said):
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
            executor.update_parameters(**params)
            jobs = executor.map_array(self, *zip(*job_params))
    except submitit.core.utils.FailedJobError as err:  # sbatch said no
        fail(sbatch_line(str(err) or said.getvalue()))
    except (RuntimeError, ValueError, OSError) as err:
        fail(f"cannot submit the jobs ({self._EXECUTOR}): {' '.join(str(err).split())}")
    _announce(jobs, slurm, self.params)

    outcomes = _wait(jobs, slurm)
    for (idx, overrides, out_dir), job, (ret, error) in zip(todo, jobs, outcomes):
        if error is None and isinstance(ret, JobReturn) and ret.status == JobStatus.FAILED:
            e = ret._return_value
            error = f"{type(e).__name__}: {' '.join(str(e).split())}"
        if (
            error is None
            and isinstance(ret, JobReturn)
            and isinstance(ret._return_value, dict)
            and "failed" in ret._return_value
        ):
            error = ret._return_value.get("error", "failed")
            if not (out_dir / "failed.json").is_file():  # a job dir on another file system view: write it here too
                _record(out_dir, error, overrides, job)
        elif error is not None:
            _record(out_dir, error, overrides, job)
        if error is not None:
            if str(out_dir) not in FAILED:
                FAILED.append(str(out_dir))
            print(
                f"vitstudy: error in {out_dir} (job {job.job_id}): {error}; log: {job.paths.stderr}",
                file=sys.stderr,
                flush=True,
            )
            ret = JobReturn(overrides=overrides, working_dir=str(out_dir), status=JobStatus.COMPLETED)
        returns[idx] = ret
    return [returns[i] for i in sorted(returns)]


def _announce(jobs, slurm: bool, params: dict) -> None:
    ids = sorted({j.job_id.split("_")[0] for j in jobs})
    logs = f"{jobs[0].paths.stdout.parent.parent}/<job id>/, e.g. {jobs[0].paths.stderr}"
    if slurm:
        at_once = min(len(jobs), params.get("array_parallelism") or len(jobs))
        kind = (
            f"array job {ids[0]} (tasks 0-{len(jobs) - 1}, at most {at_once} at once)"
            if len(jobs) > 1
            else f"job {ids[0]}"
        )
        print(
            f"vitstudy: submitted {len(jobs)} job(s) to SLURM as {kind}; `squeue -j {','.join(ids)}` shows them; "
            f"logs: {logs}",
            flush=True,
        )
    else:
        print(f"vitstudy: started {len(jobs)} job(s) with submitit's local executor; logs: {logs}", flush=True)


def _wait(jobs, slurm: bool) -> list[tuple[Any, str | None]]:
    """Every job's (return value, None) or (None, error line), waiting until each has a result or has died."""
    from submitit.core.utils import UncompletedJobError

    out: dict[int, tuple[Any, str | None]] = {}
    gone: dict[int, float] = {}  # first time a job was missing from the queue
    reasons: set[tuple[str, str]] = set()
    last_poll, last_answer = 0.0, time.time()
    while len(out) < len(jobs):
        now = time.time()
        queue = None
        if slurm and now - last_poll >= POLL_S:
            last_poll = now
            queue = _squeue([j.job_id.split("_")[0] for j in jobs])
            if queue is not None:
                last_answer = now
            elif now - last_answer > SILENT_S:
                pending = [j.job_id for i, j in enumerate(jobs) if i not in out]
                fail(
                    f"squeue has not answered for {SILENT_S // 60} minutes (is slurmctld running?); jobs {', '.join(pending)} "
                    "may still run: check `squeue`, then rerun the same command (finished jobs are not submitted again)"
                )
        for i, job in enumerate(jobs):
            if i in out:
                continue
            has_result = job.paths.result_pickle.exists()
            if not has_result and not slurm and not job.done():  # the local executor knows its processes
                continue
            if not has_result and slurm:
                if queue is None:
                    continue
                if job.job_id in queue:
                    gone.pop(i, None)
                    state, reason = queue[job.job_id]
                    if state == "PENDING" and reason in STUCK and (job.job_id, reason) not in reasons:
                        reasons.add((job.job_id, reason))
                        print(
                            f"vitstudy: SLURM job {job.job_id} is pending with reason {reason}: it may never start "
                            "(scancel it and change the hydra.launcher.* request)",
                            file=sys.stderr,
                            flush=True,
                        )
                    continue
                first = gone.setdefault(i, now)
                if now - first < GRACE_S:
                    continue
                out[i] = (None, _died(job))
                continue
            try:
                out[i] = (job.results()[0], None)
            except UncompletedJobError as err:  # FailedJobError too: an exception outside the Hydra job, or no result
                out[i] = (None, _last_error(str(err)) if has_result else _died(job))
        if len(out) < len(jobs):
            time.sleep(1)
    return [out[i] for i in range(len(jobs))]


def _squeue(array_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id (123 or 123_4): (state, reason)} of the jobs still in the queue; None when squeue fails."""
    try:
        text = subprocess.run(
            ["squeue", "-h", "-r", f"--jobs={','.join(sorted(set(array_ids)))}", "-o", "%i %T %r"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if text.returncode != 0:
        # squeue -j of jobs that have all left the queue: "Invalid job id specified" (exit 1) means "none queued"
        return {} if "Invalid job id" in text.stderr else None
    queue = {}
    for line in text.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            queue[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return queue


def _died(job) -> str:
    """The error line of a job that left the queue without a result: SLURM's account of it and its last error line."""
    state = ""
    try:
        text = subprocess.run(
            ["scontrol", "show", "job", "-o", job.job_id], capture_output=True, text=True, timeout=30
        ).stdout
        fields = dict(re.findall(r"(\w+)=(\S+)", text))
        if fields:
            state = f" (SLURM: {fields.get('JobState', '?')}, exit code {fields.get('ExitCode', '?')}, reason {fields.get('Reason', '?')})"
    except (OSError, subprocess.TimeoutExpired):
        pass
    said = ""
    for path in (job.paths.stderr, job.paths.stdout):
        if Path(path).is_file():
            said = _last_error(Path(path).read_text(errors="replace"))
            if said:
                break
    return f"the job ended without a result{state}" + (f": {said}" if said else "")


def _last_error(text: str) -> str:
    """The most telling line of a log or a traceback: vitstudy's own error line, else the last exception line."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    ours = [l for l in lines if l.startswith("vitstudy: error")]
    if ours:
        return ours[-1].split(": ", 2)[-1] if ours[-1].count(": ") >= 2 else ours[-1]
    exc = [
        l
        for l in lines
        if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b.*:", l) or "CANCELLED" in l or "Killed" in l
    ]
    return exc[-1] if exc else ""


def _record(out_dir: Path, error: str, overrides: Sequence[str], job) -> None:
    """failed.json for a job that could not write it itself (and .hydra/overrides.yaml if it never started), so
    that `vitstudy collect` lists it with its log."""
    from .pipeline.results import write_json, write_text

    write_json(
        out_dir / "failed.json",
        {
            "error": error,
            "overrides": list(overrides),
            "job_id": job.job_id,
            "log": str(job.paths.stderr),
            "stdout": str(job.paths.stdout),
        },
    )
    hydra_dir = out_dir / ".hydra"
    if not hydra_dir.is_dir():
        write_text(hydra_dir / "overrides.yaml", "".join(f"- {json.dumps(o)}\n" for o in overrides))
