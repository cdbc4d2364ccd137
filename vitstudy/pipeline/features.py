"""A bounded on-disk cache of captured activations, so several analyses on the same model and images share
one forward pass (`cache.features=true`).

Entries are per model and image: `<root>/<namespace>/<image index>.pt` holds {layer name: float32 tensor}.
The namespace hashes everything the activations depend on: the model's name, architecture and every parameter
and buffer, its eval transform, the data set's identity, and how the forward ran (precision, tf32 included, and
the device: its type and GPU model) — a bf16 run's activations are never served to an fp32 run. The least
recently used files are deleted beyond the size limit. Used by the CKA analyses (their reducers only need the
tapped tensors). docs/caching.md says what each cache keys on and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from .results import atomic_path

DATASET_KEYS = ("name", "root", "split", "seed", "image_size", "num_classes", "size")


KEYED_ON = (
    "model name",
    "architecture (module repr)",
    "every parameter and buffer",
    "eval transform and data config",
    "data set identity (" + ", ".join(DATASET_KEYS) + ")",
    "forward precision (tf32 counts as fp32 off CUDA)",
    "device type and GPU model",
)


def forward_identity(precision: str, device) -> dict[str, str]:
    """How the forward ran, as far as it changes a captured tensor: the effective precision and the device."""
    device = torch.device(device)
    effective = "fp32" if precision == "tf32" and device.type != "cuda" else precision  # runtime: tf32 is CUDA only
    out = {"precision": effective, "device": device.type}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _no_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)  # a lambda's repr: the same transform in every process


class FeatureCache:
    """The cache of one run: `precision` and `device` are how its forwards run (part of every namespace)."""

    def __init__(self, root: str | Path, max_gb: float = 10.0, precision: str = "fp32", device="cpu"):
        self.root, self.max_bytes = Path(root), int(max_gb * 1e9)
        self.forward = forward_identity(precision, device)
        self.served = self.computed = 0  # batches per model served from disk / run through the forward

    def namespace(self, model, dataset_cfg) -> str:
        """A hash of the model's architecture and weights, its transform, the images' identity and the forward."""
        h = hashlib.sha256(model.name.encode())
        h.update(_no_addresses(repr(model.module)).encode())
        for name, t in list(model.module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        h.update(json.dumps(model.data_config, sort_keys=True, default=str).encode())
        h.update(_no_addresses(repr(model.transform)).encode())
        h.update(json.dumps({k: dataset_cfg.get(k) for k in DATASET_KEYS}, sort_keys=True, default=str).encode())
        h.update(json.dumps(self.forward, sort_keys=True).encode())
        return h.hexdigest()[:24]

    def describe(self) -> dict:
        """For run.json: what the namespaces key on, this run's forward, and how many batches were served."""
        return {
            "dir": str(self.root),
            "keyed_on": list(KEYED_ON),
            "forward": self.forward,
            "batches_served": self.served,
            "batches_computed": self.computed,
        }

    def get(self, namespace: str, indices: Sequence[int], names: Sequence[str]) -> dict[str, torch.Tensor] | None:
        """The stacked tensors of `names` for these images, or None unless every one is cached."""
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        paths = [self.root / namespace / f"{i}.pt" for i in indices]
        for path in paths:
            if not path.is_file():
                return self._miss()
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged entry is a miss
                return self._miss()
            if any(n not in entry for n in names):
                return self._miss()
            for n in names:
                parts[n].append(entry[n])
        for path in paths:
            os.utime(path)  # recently used
        self.served += 1
        return {n: torch.stack(v) for n, v in parts.items()}

    def _miss(self) -> None:
        self.computed += 1
        return None

    def put(self, namespace: str, indices: Sequence[int], captured: dict[str, torch.Tensor]) -> None:
        folder = self.root / namespace
        for k, i in enumerate(indices):
            path = folder / f"{i}.pt"
            entry = {}
            if path.is_file():
                try:
                    entry = torch.load(path, map_location="cpu", weights_only=True)
                except Exception:
                    entry = {}
            entry.update({n: t[k].clone() for n, t in captured.items()})
            with atomic_path(path) as tmp:
                torch.save(entry, tmp)

    def prune(self) -> None:
        """Delete the least recently used entries until the cache fits its size limit."""
        if not self.root.is_dir():
            return
        files = sorted(self.root.rglob("*.pt"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.max_bytes:
                break
            total -= path.stat().st_size
            path.unlink()
