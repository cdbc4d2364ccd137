"""Where and with what a run executes: the device, package versions, the git revision, and the part of every
run.json record (analysis runs and training runs alike) that says so."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def valid_devices() -> list[str]:
    """The `device=` values this machine can run: auto, cpu, and each CUDA GPU (or Apple's mps) it has."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str) -> torch.device:
    """The torch device of `device=NAME` ('auto': the first GPU if there is one), or a one-line VitstudyError naming
    the valid ones, before any model loads (torch itself fails deep in the first forward, 17-31 lines)."""
    from .errors import VitstudyError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = valid_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise VitstudyError(f"unknown device {name!r}; valid on this machine: {', '.join(valid)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and torch.cuda.is_available():
        if device.index is None or device.index < torch.cuda.device_count():
            return device
        raise VitstudyError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); valid: {', '.join(valid)}"
        )
    if device.type == "mps" and "mps" in valid:
        return device
    why = {
        "cuda": "no CUDA GPU is visible (torch.cuda.is_available() is False)",
        "mps": "no Apple GPU is visible (torch.backends.mps.is_available() is False)",
    }.get(device.type, "vitstudy runs on cpu, cuda or mps")
    raise VitstudyError(f"device {name!r} is not available: {why}; valid on this machine: {', '.join(valid)}")


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@contextmanager
def forward_precision(name: str, device: torch.device):
    """The precision of the models' forward passes inside the block: fp32 (exact), tf32 (CUDA matmuls and convs in
    TensorFloat-32; the same as fp32 on a CPU), bf16 or fp16 (autocast). Statistics stay float64: the engine runs
    every reducer with autocast off."""
    if name not in PRECISIONS:
        from .errors import VitstudyError

        raise VitstudyError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if name == "tf32" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
    try:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in (
        "vitstudy",
        "torch",
        "torchvision",
        "timm",
        "hydra-core",
        "omegaconf",
        "numpy",
        "pandas",
        "seaborn",
        "matplotlib",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def record(
    started: datetime, wall_time_s: float, device: torch.device, overrides, config: dict, **fields
) -> dict[str, Any]:
    """The fields every run.json shares (times, overrides, config, revision, versions, device), then `fields`."""
    return {
        "status": "complete",
        "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "wall_time_s": round(wall_time_s, 3),
        "overrides": list(overrides or []),
        "config": config,
        **fields,
        "git_revision": git_revision(),
        "versions": versions(),
        **device_info(device),
    }
