"""Structured config schema (Hydra ConfigStore): types, defaults and the keys each group accepts.

Wrong types and unknown keys are rejected by OmegaConf when the YAML presets and the command-line
overrides are merged into these dataclasses. The schema is stored without a group (`vitstudy_schema`), so it
never shows up as a user choice; the primary config lists it first in its defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


TIMM_KWARGS = ("img_size", "patch_size", "depth", "embed_dim", "num_heads", "num_classes", "global_pool",
               "class_token", "drop_path_rate", "window_size")


@dataclass
class DataConfig:
    """A model's preprocessing: timm's data-config keys; unset keys come from the checkpoint or the architecture.

    Resolution order (vitstudy.pipeline.preprocess): these keys, then `preset`, then `model.kwargs.img_size` (size), then
    the data config a vitstudy training checkpoint carries, then timm's pretrained config of the architecture.
    """

    input_size: Optional[List[int]] = None  # (C, H, W) the model sees, e.g. [3, 32, 32]
    mean: Optional[List[float]] = None  # per-channel normalisation
    std: Optional[List[float]] = None
    crop_pct: Optional[float] = None  # resize to size / crop_pct, then centre crop to size (1.0: no crop)
    crop_mode: Optional[str] = None  # 'center', 'squash' or 'border' (timm)
    interpolation: Optional[str] = None  # 'bicubic', 'bilinear', ...
    preset: Optional[str] = None  # cifar10, cifar100 (32 px, their mean/std, no crop), imagenet, inception (mean/std)


@dataclass
class ModelConfig:
    """A timm model: `name` is a timm name, optionally with a pretrained tag (`arch.tag`)."""

    name: str = MISSING
    pretrained: bool = True
    checkpoint: Optional[str] = None  # local weights file (.pth/.pt/.safetensors); overrides `pretrained`
    # passed to timm.create_model; null entries are left out. The common ones are declared so that
    # `model.kwargs.depth=6` works without Hydra's `+`; others: `+model.kwargs.NAME=VALUE`.
    kwargs: Dict[str, Any] = field(default_factory=lambda: dict.fromkeys(TIMM_KWARGS))
    layers: Any = "${layers}"  # 'blocks', 'all', a regex, or a list of module names / regexes
    data: DataConfig = field(default_factory=DataConfig)  # preprocessing (model.data.mean=[...], model.data.preset=cifar10)
    label: Optional[str] = None  # display name in figures; defaults to the timm name without its tag


@dataclass
class DatasetConfig:
    """Images to analyse; each model applies its own timm eval transform to the same images."""

    name: str = "synthetic"
    root: Optional[str] = None
    split: str = "test"
    download: bool = False
    num_images: int = 512
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0  # synthetic images only: the seed that generates the images (sampling uses the top-level seed)
    image_size: int = 224  # synthetic images only: side length in pixels
    num_classes: int = 10  # synthetic images only
    size: int = 50000  # synthetic images only: size of the virtual data set sampled from


@dataclass
class CKAConfig:
    estimator: str = "unbiased"  # 'unbiased' (minibatch, Nguyen et al. 2021) or 'biased' (full set, Kornblith et al. 2019)
    repeats: int = 1  # independent samples of images; mean and std are reported
    tail: str = "fold"  # a last batch of fewer than 4 images: 'fold' into the previous batch, or 'drop'
    gram_dtype: str = "float32"  # dtype of the per-batch Gram product (after centring); HSIC sums are float64


@dataclass
class CacheConfig:
    dir: str = "${oc.env:VITSTUDY_CACHE,outputs/.cache}"  # result index + resumable checkpoints; "" disables
    results: bool = True  # skip a job whose result exists for the same resolved config and weights
    checkpoint_every: int = 10  # batches between atomic reducer checkpoints (0: never)
    features: bool = False  # keep captured activations on disk so later CKA runs on the same model and images skip the forward
    features_max_gb: float = 10.0  # size limit of the feature cache (least recently used entries go first)


@dataclass
class Config:
    analysis: Dict[str, Any] = field(default_factory=dict)  # `name` + the analysis' own parameters
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    cka: CKAConfig = field(default_factory=CKAConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    force: bool = False  # recompute even when a cached result exists
    models: List[str] = field(default_factory=list)  # cka_grid: model presets or timm names
    layers: Any = "blocks"
    tokens: str = "flatten"  # transformer outputs: 'flatten' (all tokens), 'cls', 'mean' (patch tokens)
    seed: int = 0
    device: str = "auto"
    progress: Optional[bool] = None  # tqdm bars: None shows them only on a terminal


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="vitstudy_schema", node=Config)
