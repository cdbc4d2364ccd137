"""The images training sees: the train and validation splits, a seeded class-balanced subset, and timm's
training transform (RandAugment, flip, random erasing; CIFAR's pad-and-crop)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from ..errors import VitstudyError
from ..pipeline import data


class Transformed(Dataset):
    """`base[indices[i]]` with a transform applied to the image: item -> (tensor, label)."""

    def __init__(self, base: Dataset, indices, transform):
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[self.indices[i]]
        return self.transform(img), label


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> list[int]:
    """A seeded class-balanced subset: round(fraction * n_c) (at least 1) random images of every class c."""
    if not 0 < fraction <= 1:
        raise VitstudyError(f"dataset.fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        chosen += rng.choice(members, size=k, replace=False).tolist()
    return sorted(chosen)


def split_datasets(cfg) -> tuple[Dataset, Dataset, list[str] | int]:
    """(train, validation, classes) for the config's data set; synthetic images get a second seed for validation."""
    d = cfg.dataset
    if d.name == "synthetic":
        train = data.SyntheticImages(d.size, d.image_size, d.num_classes, d.seed)
        val = data.SyntheticImages(d.val_images or max(d.size // 5, 1), d.image_size, d.num_classes, d.seed + 1)
        return train, val, train.classes
    train, val = data.build_dataset(d, d.train_split), data.build_dataset(d, d.val_split)
    if not train.classes or train.classes != val.classes:
        raise VitstudyError(
            f"{d.root}: the {d.train_split} and {d.val_split} splits must hold the same classes "
            f"(image folders: the same class subfolders)"
        )
    return train, val, train.classes


def train_transform(data_config: dict, recipe):
    """timm's training transform (RandAugment, flip, random erasing, normalisation); 'pad' crops as on CIFAR."""
    from timm.data import create_transform
    from torchvision import transforms as T

    size = tuple(data_config["input_size"][-2:])
    primary, secondary, final = create_transform(
        input_size=data_config["input_size"],
        is_training=True,
        hflip=recipe.hflip,
        color_jitter=recipe.color_jitter,
        auto_augment=recipe.auto_augment,
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=recipe.reprob,
        separate=True,
    )
    if recipe.crop == "pad":
        primary = T.Compose(
            [T.Resize(size), T.RandomCrop(size, padding=recipe.crop_padding), T.RandomHorizontalFlip(recipe.hflip)]
        )
    elif recipe.crop != "rrc":
        raise VitstudyError(f"recipe.crop must be 'pad' or 'rrc', got {recipe.crop!r}")
    return T.Compose([primary, secondary, final])


# ---------------------------------------------------------------- model


def splits(cfg) -> tuple[Dataset, Dataset, list, list[int], list[int]]:
    """(train set, validation set, classes, train indices, validation indices) of a training config."""
    train_base, val_base, classes = split_datasets(cfg)
    train_idx = balanced_subset(data.labels(train_base), cfg.dataset.fraction, cfg.dataset.fraction_seed)
    val_idx = list(range(len(val_base)))
    if cfg.dataset.val_images and cfg.dataset.name != "synthetic" and cfg.dataset.val_images < len(val_base):
        val_idx = sorted(
            np.random.default_rng(cfg.seed).choice(len(val_base), cfg.dataset.val_images, replace=False).tolist()
        )
    if len(train_idx) < cfg.recipe.batch_size:
        raise VitstudyError(
            f"the training subset has {len(train_idx)} images, fewer than recipe.batch_size={cfg.recipe.batch_size}; "
            f"use a smaller batch or a larger dataset.fraction"
        )
    return train_base, val_base, classes, train_idx, val_idx
