"""Images: data sets, sampling without replacement, batches of at least 4, one transform per model.

Data sets yield `(PIL RGB image, label)`; the loader applies every model's own eval transform to the
same image, so two models in one run can differ in resolution and normalisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, Dataset

from ..errors import VitstudyError

MIN_BATCH = 4
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "stripes", "checker", "dots", "bars")


class SyntheticImages(Dataset):
    """Deterministic procedurally generated labelled images; no download.

    The label is the shape drawn (circle, square, triangle, ...): each image holds a textured background
    and one to three instances of its class shape at random positions, sizes and colours. Image i depends
    only on (seed, i), so any subset is reproducible; any resolution.
    """

    def __init__(self, size: int = 50000, image_size: int = 224, num_classes: int = 10, seed: int = 0):
        if not 1 <= num_classes <= len(SHAPES):
            raise VitstudyError(
                f"dataset.num_classes must be between 1 and {len(SHAPES)} for synthetic images, got {num_classes}"
            )
        if image_size < 8:
            raise VitstudyError(f"dataset.image_size must be at least 8 pixels, got {image_size}")
        self.size, self.image_size, self.num_classes, self.seed = size, image_size, num_classes, seed
        self.classes = list(SHAPES[:num_classes])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(self.num_classes))
        s = self.image_size
        base = rng.uniform(0, 1, 3)
        # smooth random background: low-resolution noise upsampled, tinted
        noise = rng.uniform(0, 1, (4, 4, 3)) * 0.5 + base * 0.5
        img = Image.fromarray((noise * 255).astype(np.uint8)).resize((s, s), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            self._draw(draw, SHAPES[label], rng, s)
        if rng.uniform() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, s / 112))))
        return img, label

    @staticmethod
    def _draw(draw: ImageDraw.ImageDraw, shape: str, rng: np.random.Generator, s: int) -> None:
        r = rng.uniform(0.08, 0.3) * s
        cx, cy = rng.uniform(r, s - r, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [cx - r, cy - r, cx + r, cy + r]
        w = max(1, int(r / 4))
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        elif shape == "cross":
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
        elif shape == "ring":
            draw.ellipse(box, outline=colour, width=w)
        elif shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
        elif shape == "stripes":
            for k in range(-3, 4):
                x = cx + k * r / 3.5
                draw.line([(x, cy - r), (x, cy + r)], fill=colour, width=max(1, w // 2))
        elif shape == "checker":
            step = r / 2
            for i in range(4):
                for j in range(4):
                    if (i + j) % 2 == 0:
                        x0, y0 = cx - r + i * step, cy - r + j * step
                        draw.rectangle([x0, y0, x0 + step, y0 + step], fill=colour)
        elif shape == "dots":
            for _ in range(6):
                dx, dy = rng.uniform(-r, r, 2)
                draw.ellipse([cx + dx - w, cy + dy - w, cx + dx + w, cy + dy + w], fill=colour)
        else:  # bars
            for k in range(-2, 3):
                y = cy + k * r / 2.5
                draw.line([(cx - r, y), (cx + r, y)], fill=colour, width=w)


def to_rgb(img: Image.Image) -> Image.Image:
    """Greyscale, palette, RGBA, CMYK, 16-bit ... -> RGB (transparency composited on black)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray((arr / top * 255).astype(np.uint8))
    return img.convert("RGB")


class ImageFiles(Dataset):
    """A folder of images: class subfolders (labels in sorted folder order) or a flat folder (label -1)."""

    def __init__(self, root: str):
        if not root or not os.path.isdir(root):
            raise VitstudyError(
                f"dataset root not found: {root!r}; set dataset.root=/path/to/images (class subfolders or a flat folder)"
            )
        self.root = root
        subdirs = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        files: list[tuple[str, int]] = []
        flat = [os.path.join(root, f) for f in sorted(os.listdir(root)) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if subdirs and not flat:
            self.classes = subdirs
            for label, d in enumerate(subdirs):
                for dirpath, _, names in sorted(os.walk(os.path.join(root, d))):
                    files += [
                        (os.path.join(dirpath, f), label) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)
                    ]
        else:
            self.classes = []
            files = [(p, -1) for p in flat]
        if not files:
            raise VitstudyError(f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) under {root}")
        self.samples = files
        self.check_readable()

    def check_readable(self, probes: int = 16) -> None:
        """Open the headers of up to `probes` files spread over the folder: unreadable images are named before
        any count or batch error (a folder of broken files would first be reported as too small)."""
        n = len(self.samples)
        picks = range(n) if n <= probes else sorted({round(i * (n - 1) / (probes - 1)) for i in range(probes)})
        bad = []
        for i in picks:
            try:
                with Image.open(self.samples[i][0]):
                    pass
            except Exception as err:
                bad.append((self.samples[i][0], err))
        if bad:
            path, err = bad[0]
            raise VitstudyError(
                f"cannot read image {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                f" ({len(bad)} of {len(picks)} files checked under {self.root} are unreadable)"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img.load()
                return to_rgb(img), label
        except Exception as err:
            raise VitstudyError(f"cannot read image {path}: {type(err).__name__}: {err}") from None


class TorchvisionImages(Dataset):
    """A torchvision data set (CIFAR-10/100, Imagenette) yielding RGB PIL images."""

    def __init__(self, name: str, root: str | None, split: str, download: bool):
        import torchvision.datasets as tvd

        root = os.path.expanduser(root or os.path.join("~", ".cache", "vitstudy", name))
        train = split == "train"
        expected = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "imagenette": "imagenette2"}[name]
        try:
            if name == "cifar10":
                self.ds = tvd.CIFAR10(root, train=train, download=download)
            elif name == "cifar100":
                self.ds = tvd.CIFAR100(root, train=train, download=download)
            else:
                self.ds = tvd.Imagenette(root, split="train" if train else "val", size="full", download=download)
        except Exception as err:
            if not download:
                raise VitstudyError(
                    f"{name} not found under {root} (expected {os.path.join(root, expected)}); "
                    f"pass dataset.download=true to fetch it, or dataset.root=DIR where it is"
                ) from None
            raise VitstudyError(f"cannot download {name} to {root}: {type(err).__name__}: {err}") from None
        self.classes = list(getattr(self.ds, "classes", []))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        img, label = self.ds[index]
        return to_rgb(img), int(label)


TORCHVISION = ("cifar10", "cifar100", "imagenette")
CIFAR10_SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "cifar10_sample"  # see its README.md


def build_dataset(cfg, split: str | None = None) -> Dataset:
    """The data set a config names (`synthetic`, `cifar10_sample`, `imagefolder`, `cifar10`, `cifar100`, `imagenette`).

    `split` picks a torchvision split (default `cfg.split`) or, for an image folder, the subfolder `root/<split>`
    (`test` falls back to `val`); synthetic images have no splits (training draws its own validation set).
    """
    if cfg.name == "synthetic":
        return SyntheticImages(cfg.size, cfg.image_size, cfg.num_classes, cfg.seed)
    if cfg.name == "cifar10_sample":  # bundled: 1,000 CIFAR-10 test JPEGs, 100 per class
        if split not in (None, "test"):
            raise VitstudyError(
                "dataset=cifar10_sample is 1,000 CIFAR-10 test images, too few to train on; "
                "train with dataset=cifar10 or dataset=imagefolder dataset.root=DIR"
            )
        return ImageFiles(str(CIFAR10_SAMPLE))
    if cfg.name == "imagefolder":
        if split is None:
            return ImageFiles(cfg.root)
        if not cfg.root or not os.path.isdir(cfg.root):
            raise VitstudyError(
                f"dataset root not found: {cfg.root!r}; set dataset.root=DIR holding {split}/ class folders"
            )
        path = os.path.join(cfg.root, split)
        if not os.path.isdir(path) and split == "test" and os.path.isdir(os.path.join(cfg.root, "val")):
            path = os.path.join(cfg.root, "val")
        if not os.path.isdir(path):
            raise VitstudyError(
                f"{cfg.root} has no {split}/ folder of class subfolders (set the split's folder name, "
                f"e.g. dataset.train_split / dataset.val_split for training)"
            )
        return ImageFiles(path)
    if cfg.name in TORCHVISION:
        return TorchvisionImages(cfg.name, cfg.root, split or cfg.split, cfg.download)
    raise VitstudyError(
        f"unknown dataset '{cfg.name}'; valid: synthetic, cifar10_sample, imagefolder, {', '.join(TORCHVISION)}"
    )


def labels(ds: Dataset, indices=None) -> np.ndarray:
    """The labels of `indices` (default: all) without decoding images where the data set keeps them apart."""
    indices = range(len(ds)) if indices is None else indices
    if isinstance(ds, ImageFiles):
        return np.array([ds.samples[i][1] for i in indices], dtype=np.int64)
    if isinstance(ds, TorchvisionImages) and hasattr(ds.ds, "targets"):
        return np.asarray(ds.ds.targets)[list(indices)]
    if isinstance(ds, SyntheticImages):  # the label is the first draw of image i's generator
        return np.array(
            [int(np.random.default_rng([ds.seed, i]).integers(ds.num_classes)) for i in indices], dtype=np.int64
        )
    return np.array([ds[i][1] for i in indices], dtype=np.int64)


def sample_indices(total: int, num_images: int, seed: int) -> list[int]:
    """`num_images` distinct indices drawn with `seed` (without replacement)."""
    if num_images < MIN_BATCH:
        raise VitstudyError(
            f"dataset.num_images={num_images} is too few: CKA's unbiased estimator needs at least {MIN_BATCH} images"
        )
    if num_images > total:
        raise VitstudyError(
            f"dataset.num_images={num_images} is larger than the data set ({total} images); use at most {total}"
        )
    rng = np.random.default_rng(seed)
    return rng.choice(total, size=num_images, replace=False).tolist()


@dataclass
class Batching:
    batches: list[list[int]]
    tail: str  # 'none' (every batch full), 'folded' or 'dropped'
    dropped: int  # images dropped from a short tail

    @property
    def num_images(self) -> int:
        return sum(len(b) for b in self.batches)


def make_batches(indices: Sequence[int], batch_size: int, tail: str = "fold") -> Batching:
    """Consecutive batches of `batch_size`; a last batch under 4 images is folded into the previous one or dropped."""
    if batch_size < MIN_BATCH:
        raise VitstudyError(
            f"dataset.batch_size={batch_size} is too small: every batch needs at least {MIN_BATCH} images"
        )
    if tail not in ("fold", "drop"):
        raise VitstudyError(f"cka.tail must be 'fold' or 'drop', got {tail!r}")
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    if not batches or len(batches[-1]) >= MIN_BATCH:
        return Batching(batches, "none", 0)
    short = batches.pop()
    if not batches:
        raise VitstudyError(f"{len(short)} images are too few: at least {MIN_BATCH} are needed")
    if tail == "drop":
        return Batching(batches, "dropped", len(short))
    batches[-1] += short
    return Batching(batches, "folded", 0)


class MultiTransform(Dataset):
    """Applies each model's transform to the same image: item -> ((x_model1, x_model2, ...), label)."""

    def __init__(self, base: Dataset, transforms: Sequence[Callable]):
        self.base, self.transforms = base, list(transforms)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        img, label = self.base[index]
        return tuple(t(img) for t in self.transforms), label


def loader(base: Dataset, batching: Batching, transforms: Sequence[Callable], num_workers: int = 0) -> DataLoader:
    return DataLoader(
        MultiTransform(base, transforms),
        batch_sampler=batching.batches,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def describe(base: Dataset) -> str:
    n = len(base)
    classes = getattr(base, "classes", [])
    return f"{type(base).__name__} with {n} images" + (f" in {len(classes)} classes" if classes else "")


__all__ = [
    "SyntheticImages",
    "ImageFiles",
    "TorchvisionImages",
    "build_dataset",
    "labels",
    "sample_indices",
    "make_batches",
    "loader",
]
