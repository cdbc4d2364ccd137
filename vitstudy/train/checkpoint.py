"""Training state on disk: checkpoints written atomically (a kill leaves the previous one whole), every RNG's
state (torch, CUDA, numpy, Python) so a resumed run continues bitwise, and the check that a rerun is the same run.

A checkpoint holds only tensors and plain containers (loadable with `torch.load(weights_only=True)`): `state_dict`,
`model_config` (timm name and kwargs), `data_config`, optimizer, scheduler, grad scaler, RNG states, the epoch
history and the config.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..config import TRAIN_RESUME_FREE, flatten, is_neutral
from ..errors import VitstudyError
from ..pipeline import results

FORMAT = "vitstudy-train-1"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "python_gauss": random.getstate()[2],
    }  # random.gauss caches its second value (RandAugment's mstd uses it)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), state.get("python_gauss")))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, state: dict, kill_here: bool = False) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a partial `path`."""
    with results.atomic_path(path) as tmp:
        torch.save(state, tmp)
        if kill_here:  # test hook: a kill after the data is written, before it is renamed into place
            os._exit(137)


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise VitstudyError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0][:160]}; "
            f"delete it or pass resume=false to start over"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VitstudyError(f"{path} is not a vitstudy training checkpoint; pass resume=false to start over")
    return ckpt


def check_same_run(saved: dict, current: dict, ckpt_path: Path) -> None:
    a, b = flatten(saved), flatten(current)
    for key in sorted(set(a) | set(b)):
        if is_neutral(key, TRAIN_RESUME_FREE + ("model.layers", "recipe.epochs")):
            continue  # recipe.epochs may change: the run is extended or shortened (the schedule is recomputed)
        if a.get(key) != b.get(key):
            raise VitstudyError(
                f"{ckpt_path} was trained with {key}={a.get(key)!r}, this command has {key}={b.get(key)!r}; "
                f"rerun with the same settings to resume, pass resume=false to start over, or choose another hydra.run.dir"
            )


# ---------------------------------------------------------------- loop
