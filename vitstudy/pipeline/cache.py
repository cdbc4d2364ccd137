"""Result cache and resumable checkpoints for sweeps.

A result is identified by what determines it: the resolved config, less where and how it runs (device,
workers, progress bars, cache settings), and the identity of each model's weights (a checkpoint file's
SHA-256, or the timm name with its resolved pretrained tag). The forward precision is part of the config, so
part of the key; the device is not: a result computed on a GPU is served to a CPU run (they differ at float32
rounding), and the run says so (`other_device`, `served_on` in run.json). A rerun of a finished job copies the
finished outputs instead of recomputing; a killed job continues from its last reducer checkpoint, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ..config import flatten, is_neutral
from .results import RECORD, atomic_path, write_json


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_id(model_cfg) -> str:
    """What the weights are, independent of where they were read from: a file's SHA-256, or the timm name with its
    pretrained tag and, once they are in the Hugging Face cache, the snapshot's revision (so results computed with
    other weights under the same tag, e.g. the stand-ins of a dry run, are not served as cached)."""
    if model_cfg.checkpoint:
        return "sha256:" + file_sha256(model_cfg.checkpoint) if os.path.isfile(model_cfg.checkpoint) else "missing"
    if model_cfg.pretrained:
        from timm.models import get_pretrained_cfg, split_model_name_tag

        arch, tag = split_model_name_tag(model_cfg.name)
        if not tag:
            pcfg = get_pretrained_cfg(arch)
            tag = getattr(pcfg, "tag", "") if pcfg is not None else ""
        return f"timm:{arch}.{tag}" + _hub_revision(f"{arch}.{tag}")
    return "random-init"


def _hub_revision(name: str) -> str:
    """'@<revision>' of the cached Hugging Face snapshot timm loads `name` from ('' when not cached or not on the Hub),
    or '@sha256:<prefix>' of the local file a pretrained tag names."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    local = getattr(pcfg, "file", None) if pcfg is not None else None
    if local:  # a packaged file (the bundled demo models): its content
        return "@sha256:" + file_sha256(local)[:16] if os.path.isfile(local) else "@missing"
    hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    if not hub_id:
        return ""
    repo, _, revision = hub_id.partition("@")
    for filename in (getattr(pcfg, "hf_hub_filename", None) or "model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(path, str):
            return "@" + Path(path).parent.name
    return ""


def other_device(record: dict, device: torch.device) -> str | None:
    """A line saying that a cached result was computed on another device (type or GPU model) than `device`, else None."""
    from ..runtime import device_info

    here = device_info(torch.device(device))
    there_type = str(record.get("device", "")).split(":")[0]
    if there_type == here["device"].split(":")[0] and record.get("gpu") == here.get("gpu"):
        return None

    def show(d, gpu):
        return f"{d} ({gpu})" if gpu else str(d)

    return (
        f"the cached result was computed on {show(record.get('device', 'an unrecorded device'), record.get('gpu'))}, "
        f"this run is on {show(here['device'], here.get('gpu'))}: numbers may differ at float32 rounding "
        f"(force=true recomputes)"
    )


def run_key(cfg, nodes: dict) -> str:
    """A short hash of everything that determines a run's result: the config (less how and where it runs, and
    the model nodes the analysis does not use) and the weights of every model it declares (`nodes`)."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    conf = {
        k: v
        for k, v in flat.items()
        if not is_neutral(k) and not is_neutral(k, tuple(key for key in ("model", "reference") if key not in nodes))
    }  # e.g. cka_within: no reference
    weights = {key: weights_id(node) for key, node in nodes.items()}
    from .._version import __version__

    payload = json.dumps({"config": conf, "weights": weights, "vitstudy": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class Cache:
    """The cache folder: `results/<key>.json` points at a finished run dir; `partial/<key>.pt` is a checkpoint."""

    def __init__(self, root: str | Path, key: str, every: int = 10):
        self.root, self.key, self.every = Path(root), key, every

    @property
    def index(self) -> Path:
        return self.root / "results" / f"{self.key}.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "partial" / f"{self.key}.pt"

    def lookup(self) -> Path | None:
        """The run dir of a finished result for this key, if it still exists and is complete."""
        if not self.index.is_file():
            return None
        run_dir = Path(json.loads(self.index.read_text())["run_dir"])
        record = run_dir / RECORD
        if not record.is_file():
            return None
        status = json.loads(record.read_text()).get("status")
        return run_dir if status == "complete" else None

    def finished_in(self, out_dir: Path) -> list[Path] | None:
        """The outputs of `out_dir` when it already holds a finished result of this key, else None."""
        record_path = Path(out_dir) / RECORD
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            return None
        if record.get("cache_key") != self.key or record.get("status") not in ("complete", "cached"):
            return None
        outputs = [Path(out_dir) / name for name in record.get("outputs", [])]
        return outputs if all(p.is_file() for p in outputs) else None

    def store(self, run_dir: Path) -> None:
        write_json(self.index, {"run_dir": str(Path(run_dir).resolve())})
        self.clear_checkpoint()

    def copy_result(self, source: Path, out_dir: Path, device: torch.device | None = None) -> list[Path]:
        """Copy a finished run's outputs into `out_dir`; its run.json says where they came from, and, served to
        `device`, where it was served and whether that is another device than the one it was computed on."""
        record = json.loads((source / RECORD).read_text())
        if device is not None:
            from ..runtime import device_info

            served = device_info(torch.device(device))
            record.update(
                served_on={k: v for k, v in served.items() if k != "threads"}, other_device=other_device(record, device)
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in record.get("outputs", []):
            if name == RECORD or not (source / name).is_file():
                continue
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(source / name, tmp)
            written.append(out_dir / name)
        record.update(status="cached", cached_from=str(source.resolve()))
        write_json(out_dir / RECORD, record)
        return written + [out_dir / RECORD]

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception:  # an unreadable checkpoint is only lost work: start again
            return None

    def clear_checkpoint(self) -> None:
        """Remove this key's checkpoint and any half-written copy of it left by a kill during a write."""
        self.checkpoint_path.unlink(missing_ok=True)
        for leftover in self.checkpoint_path.parent.glob(f".{self.checkpoint_path.name}.*"):
            leftover.unlink(missing_ok=True)
