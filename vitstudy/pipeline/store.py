"""A bounded on-disk store of every image's token-reduced features, one file per layer, for the measures that need
the whole image set at once (the full-set path of the similarity analyses, docs/measures_fullset.md).

`FeatureStore` is a Reducer: inside each forward hook it reduces the layer's tensor exactly as CKA does
(`layers.features`), casts it to the store's dtype (float32 or float16) and appends the batch's rows to that layer's
raw file, so nothing per image stays in memory as images and layers grow. Rows are images in batch order.
`read(key, rows)` gives float64 rows back through a read-only memory map. The folder is temporary (under the run's
cache dir when there is one) and `close()` removes it; `reopen` continues a fill after a kill (truncated to the
rows of the last checkpoint).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import VitstudyError
from .engine import Reducer
from .layers import Layer, features

DTYPES = ("float32", "float16")


@dataclass
class StoredLayer:
    """One layer's file: `rows` images of `width` features each, in the store's dtype."""

    path: Path
    width: int
    rows: int = 0


class FeatureStore(Reducer):
    """Per batch: every tapped layer's token-reduced features appended to its file (no tensor is kept)."""

    def __init__(
        self,
        models,
        layers,
        tokens: str,
        root: str | Path | None = None,
        dtype: str = "float32",
        folder: str | Path | None = None,
    ):
        if dtype not in DTYPES:
            raise VitstudyError(f"analysis.store_dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.tokens = tokens
        self.modules = [m.module for m in models]
        self.dtype = np.dtype(dtype)
        self.names = [[layer.name for layer in ls] for ls in layers]
        if folder is None:
            if root is not None:
                Path(root).mkdir(parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(prefix="vitstudy-store-", dir=root)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[tuple[int, str], StoredLayer] = {}
        self.rows = 0  # images of every completed batch

    def keys(self) -> list[tuple[int, str]]:
        """(model index, layer name) of every stored layer, in model then layer order."""
        return [(i, name) for i, names in enumerate(self.names) for name in names]

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        x = features(tensor, layer, self.tokens, self.modules[model_index])
        # written at once (a copy): later in-place ops on the live tensor (ReLU(inplace), `x += shortcut`) cannot reach it
        a32 = x.detach().to("cpu", torch.float32).reshape(x.shape[0], -1).numpy()
        with np.errstate(over="ignore"):  # an overflow is refused just below
            a = a32.astype(self.dtype)
        if self.dtype == np.float16 and np.isinf(a).any() and np.isfinite(a32).all():
            raise VitstudyError(
                f"layer '{layer.name}' has features beyond float16's range (|x| > 65504): "
                "use analysis.store_dtype=float32"
            )
        key = (model_index, layer.name)
        entry = self.files.get(key)
        if entry is None:
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in layer.name)
            entry = self.files[key] = StoredLayer(
                self.folder / f"m{model_index}_{len(self.files)}_{safe}.bin", a.shape[1]
            )
        if a.shape[1] != entry.width or entry.rows != self.rows:
            raise VitstudyError(
                f"layer '{layer.name}' gave {a.shape[1]} features per image after {entry.width} "
                f"(or was captured twice in one batch): it cannot be stored"
            )
        with open(entry.path, "ab") as f:
            f.write(np.ascontiguousarray(a).tobytes())
        entry.rows += len(a)

    def end_batch(self, labels, outputs) -> None:
        self.rows += len(labels)
        short = [name for (i, name), e in self.files.items() if e.rows != self.rows]
        missing = [name for i, name in self.keys() if (i, name) not in self.files]
        if short or missing:
            raise VitstudyError(f"layers {', '.join(short + missing)} were not captured for every image of the batch")

    def read(self, key: tuple[int, str], rows=None) -> np.ndarray:
        """The layer's features as float64 (images x features): all rows, a slice, or an index array."""
        entry = self.files[key]
        if entry.rows == 0:
            raise VitstudyError(f"layer '{key[1]}' holds no images in the feature store")
        mm = np.memmap(entry.path, dtype=self.dtype, mode="r", shape=(entry.rows, entry.width))
        try:
            return np.array(mm if rows is None else mm[rows], dtype=np.float64)
        finally:
            del mm

    def state(self) -> dict:
        """What `reopen` needs to continue the fill after a kill (plain types: a torch checkpoint holds it)."""
        return {
            "folder": str(self.folder),
            "rows": self.rows,
            "dtype": self.dtype.name,
            "files": [[i, name, e.path.name, e.width] for (i, name), e in self.files.items()],
        }

    @classmethod
    def reopen(cls, state: dict, models, layers, tokens: str) -> "FeatureStore | None":
        """The store of a checkpoint, its files cut back to the checkpoint's rows; None when they are gone."""
        store = cls(models, layers, tokens, dtype=state["dtype"], folder=state["folder"])
        rows = int(state["rows"])
        for i, name, fname, width in state["files"]:
            path = store.folder / fname
            size = rows * int(width) * store.dtype.itemsize
            if not path.is_file() or path.stat().st_size < size:
                return None
            os.truncate(path, size)
            store.files[(int(i), name)] = StoredLayer(path, int(width), rows)
        store.rows = rows
        return store

    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(e.rows * e.width * self.dtype.itemsize for e in self.files.values())

    def close(self) -> None:
        """Remove the store's folder and files."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.files = {}
