"""`vitstudy train`: models trained under control, for the questions pretrained weights cannot answer.

`loop` (train, train_one_epoch, validate), `data` (splits, subsets, transforms), `checkpoint` (atomic, resumable
state), `app` (the Hydra command). `from vitstudy.train import train` trains from a composed config.
"""

from __future__ import annotations

from .loop import train

__all__ = ["train"]
