"""Each model's preprocessing: timm's data config, resolved key by key, with where every value came from.

A model only measures what it was trained to see when its images are resized, cropped and normalised the
way it was trained. timm's `resolve_data_config` takes those values from the architecture's pretrained
config, which is right for timm's own weights and silently wrong for a checkpoint trained otherwise (a ViT
trained at 32 px with CIFAR statistics gets mean = std = 0.5 and a 35 px resize). So every key is resolved
in this order, and its source is recorded and printed:

1. the user's `model.data.<key>` (`input_size`, `mean`, `std`, `crop_pct`, `crop_mode`, `interpolation`);
2. the user's `model.data.preset` (`cifar10`, `cifar100`, `imagenet`, `inception`);
3. for `input_size`: the user's `model.kwargs.img_size`;
4. the data config a vitstudy training checkpoint carries;
5. timm's pretrained config of the architecture (its pretrained tag).
"""

from __future__ import annotations

from typing import Any, Mapping

KEYS = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {"input_size": (3, 32, 32), "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "crop_pct": 1.0},
    "cifar100": {"input_size": (3, 32, 32), "mean": CIFAR100_MEAN, "std": CIFAR100_STD, "crop_pct": 1.0},
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "inception": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
}
ARCH = "architecture"  # source label of a value from timm's pretrained config


def _norm(key: str, value):
    if key in ("input_size", "mean", "std"):
        value = tuple(float(v) if key != "input_size" else int(v) for v in value)
        if key == "input_size" and len(value) == 2:
            value = (3, *value)
    return value


def resolve(
    model, user: Mapping | None = None, saved: Mapping | None = None, kwargs: Mapping | None = None
) -> tuple[dict, dict[str, str]]:
    """(timm data config, source of each key) for `model`; see the module docstring for the order."""
    from timm.data import resolve_data_config

    from ..errors import VitstudyError, closest

    user = {k: v for k, v in (user or {}).items() if v is not None}
    preset_name = user.pop("preset", None)
    if preset_name is not None and preset_name not in PRESETS:
        raise VitstudyError(f"unknown model.data.preset '{preset_name}'; {closest(preset_name, PRESETS)}")
    preset = PRESETS.get(preset_name, {})
    arch = resolve_data_config({}, model=model)
    img_size = (kwargs or {}).get("img_size")
    config, sources = {}, {}
    for key in KEYS:
        if key in user:
            value, source = user[key], f"model.data.{key}"
        elif key in preset:
            value, source = preset[key], f"model.data.preset={preset_name}"
        elif key == "input_size" and img_size is not None:
            value, source = (
                (img_size, img_size) if isinstance(img_size, int) else tuple(img_size),
                "model.kwargs.img_size",
            )
        elif saved and saved.get(key) is not None:
            value, source = saved[key], "checkpoint"
        else:
            value, source = arch[key], ARCH
        config[key] = _norm(key, value)
        sources[key] = source
    if len(config["mean"]) != config["input_size"][0] or len(config["std"]) != config["input_size"][0]:
        raise VitstudyError(
            f"model.data.mean/std need one value per input channel ({config['input_size'][0]}), "
            f"got mean {list(config['mean'])} and std {list(config['std'])}"
        )
    return config, sources


def transform(config: Mapping):
    """timm's eval transform for a data config (resize, centre crop, to tensor, normalise)."""
    from timm.data import create_transform

    return create_transform(**config, is_training=False)


def describe(tf) -> str:
    """The steps of a timm eval transform in a few words: 'resize 35 bicubic, centre crop 32, normalise'."""
    from torchvision import transforms as T

    steps = []
    for t in getattr(tf, "transforms", [tf]):
        if isinstance(t, T.Resize):
            size = t.size if isinstance(t.size, int) else "x".join(map(str, t.size))
            steps.append(f"resize {size} {t.interpolation.value}")
        elif isinstance(t, T.CenterCrop):
            steps.append(f"centre crop {'x'.join(map(str, t.size)) if t.size[0] != t.size[1] else t.size[0]}")
        elif isinstance(t, (T.ToTensor, T.Normalize)) or type(t).__name__ in ("MaybeToTensor", "ToTensor"):
            continue
        else:
            steps.append(type(t).__name__)
    return ", ".join(steps) or "no resize"


def _fmt(values) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def line(key: str, name: str, config: Mapping, sources: Mapping, tf, checkpoint: str | None, arch_tag: str) -> str:
    """One line saying what each image goes through before `name`, and where every value came from.

    With a checkpoint whose size or normalisation come from the architecture's defaults, it says so plainly:
    that is the case that goes wrong silently.
    """
    c, h, w = config["input_size"]
    text = f"{key} {name}: {c}x{h}x{w}, {describe(tf)}, mean {_fmt(config['mean'])} std {_fmt(config['std'])}"
    groups: dict[str, list[str]] = {}
    for k in KEYS:
        groups.setdefault(sources[k], []).append(k)
    origin = "; ".join(
        f"{', '.join(ks)} from {src if src != ARCH else f'{arch_tag} defaults'}" for src, ks in groups.items()
    )
    text += f" ({origin})"
    guessed = [k for k in ("input_size", "mean", "std") if sources[k] == ARCH]
    if checkpoint and guessed:
        text += (
            f"; WARNING: {', '.join(guessed)} are the architecture's defaults, not read from checkpoint "
            f"{checkpoint}: if it was trained otherwise, set {key}.data.* (e.g. {key}.data.preset=cifar10)"
        )
    return text
