"""Where and with what a run executes: the device, package versions, the git revision, and the part of every
run.json record (analysis runs and training runs alike) that says so."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("vitstudy", "torch", "torchvision", "timm", "hydra-core", "omegaconf", "numpy", "pandas", "seaborn", "matplotlib"):
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
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def record(started: datetime, wall_time_s: float, device: torch.device, overrides, config: dict, **fields) -> dict[str, Any]:
    """The fields every run.json shares (times, overrides, config, revision, versions, device), then `fields`."""
    return {"status": "complete", "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
            "wall_time_s": round(wall_time_s, 3), "overrides": list(overrides or []), "config": config, **fields,
            "git_revision": git_revision(), "versions": versions(), **device_info(device)}
