"""A bounded on-disk cache of captured activations, so several analyses on the same model and images share
one forward pass (`cache.features=true`).

Entries are per model and image: `<root>/<namespace>/<image index>.pt` holds {layer name: float32 tensor}.
The namespace hashes everything the activations depend on: the model's name and every parameter and buffer,
its eval transform, and the data set's identity. The least recently used files are deleted beyond the size
limit. Used by the CKA analyses (their reducers only need the tapped tensors).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from .results import atomic_path

DATASET_KEYS = ("name", "root", "split", "seed", "image_size", "num_classes", "size")


class FeatureCache:
    def __init__(self, root: str | Path, max_gb: float = 10.0):
        self.root, self.max_bytes = Path(root), int(max_gb * 1e9)

    def namespace(self, model, dataset_cfg) -> str:
        """A hash of the model's weights, its transform and the images' identity."""
        h = hashlib.sha256(model.name.encode())
        for name, t in list(model.module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        h.update(json.dumps(model.data_config, sort_keys=True, default=str).encode())
        h.update(json.dumps({k: dataset_cfg.get(k) for k in DATASET_KEYS}, sort_keys=True, default=str).encode())
        return h.hexdigest()[:24]

    def get(self, namespace: str, indices: Sequence[int], names: Sequence[str]) -> dict[str, torch.Tensor] | None:
        """The stacked tensors of `names` for these images, or None unless every one is cached."""
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        paths = [self.root / namespace / f"{i}.pt" for i in indices]
        for path in paths:
            if not path.is_file():
                return None
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged entry is a miss
                return None
            if any(n not in entry for n in names):
                return None
            for n in names:
                parts[n].append(entry[n])
        for path in paths:
            os.utime(path)  # recently used
        return {n: torch.stack(v) for n, v in parts.items()}

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
