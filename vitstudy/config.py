"""Structured config schemas (Hydra ConfigStore): types, defaults and the keys each group accepts.

`Config` is `vitstudy run`'s config and `TrainConfig` `vitstudy train`'s; both are stored without a group
(`vitstudy_schema`, `vitstudy_train_schema`), so they never show up as a user choice, and the primary configs list
them first in their defaults. Each analysis' own parameters are a dataclass beside the analysis, stored as an
option of the `analysis` group (vitstudy.analyses). Wrong types and unknown keys are rejected when presets and
command-line overrides are composed, before anything loads. `RESULT_NEUTRAL` lists, once, the keys that never
change a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Keys that never change what a run computes, whichever command: how and where it runs. The result cache and
# `vitstudy collect` ignore them; training also resumes across them (and across `TRAIN_RESUME_FREE`).
RESULT_NEUTRAL = (
    "device",
    "progress",
    "force",
    "cache",
    "dataset.num_workers",
    "dataset.download",
    "resume",
    "threads",
    "debug_kill",
)
TRAIN_RESUME_FREE = RESULT_NEUTRAL + ("dataset.root", "dataset.batch_size")  # data moved; evaluation batch size


def is_neutral(key: str, keys=RESULT_NEUTRAL) -> bool:
    """Whether a dotted config key is (inside) one of `keys`."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def flatten(d, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: nested config containers as dotted keys."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


TIMM_KWARGS = (
    "img_size",
    "patch_size",
    "depth",
    "embed_dim",
    "num_heads",
    "num_classes",
    "global_pool",
    "class_token",
    "drop_path_rate",
    "window_size",
)


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
    data: DataConfig = field(
        default_factory=DataConfig
    )  # preprocessing (model.data.mean=[...], model.data.preset=cifar10)
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
    estimator: str = (
        "unbiased"  # 'unbiased' (minibatch, Nguyen et al. 2021) or 'biased' (full set, Kornblith et al. 2019)
    )
    repeats: int = 1  # independent samples of images; mean and std are reported
    tail: str = "fold"  # a last batch of fewer than 4 images: 'fold' into the previous batch, or 'drop'
    gram_dtype: str = "float32"  # dtype of the per-batch Gram product (after centring); HSIC sums are float64
    null: int = 0  # cka_across: permutations of the image pairing within each batch (no extra forward): chance level and p-value per cell


@dataclass
class CacheConfig:
    dir: str = "${oc.env:VITSTUDY_CACHE,outputs/.cache}"  # result index + resumable checkpoints; "" disables
    results: bool = True  # skip a job whose result exists for the same resolved config and weights
    checkpoint_every: int = 10  # batches between atomic reducer checkpoints (0: never)
    features: bool = (
        False  # keep captured activations on disk so later CKA runs on the same model and images skip the forward
    )
    features_max_gb: float = 10.0  # size limit of the feature cache (least recently used entries go first)


@dataclass
class Config:
    analysis: Any = MISSING  # the analysis' Params schema, chosen by `analysis=NAME` (stored by vitstudy.analyses)
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    cka: CKAConfig = field(default_factory=CKAConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    force: bool = False  # recompute even when a cached result exists
    layers: Any = "blocks"
    tokens: str = "flatten"  # transformer outputs: 'flatten' (all tokens), 'cls', 'mean' (patch tokens)
    seed: int = 0
    device: str = "auto"
    precision: str = (
        "fp32"  # the models' forward passes: fp32, tf32 (CUDA), bf16 or fp16 (autocast); statistics stay float64
    )
    progress: Any = "auto"  # auto: a bar on a terminal, else a line every 30 s (stderr, run log); true: bar; log: lines; false: none


@dataclass
class TrainModelConfig(ModelConfig):
    pretrained: bool = False
    remove_skip: Optional[List[int]] = None  # ViT blocks trained without their residual connections (Raghu Fig. 8)
    global_pool: Optional[str] = (
        None  # 'avg' with class_token=false: GAP ViT (Raghu Figs 10, 11); null: the model's own
    )
    class_token: Optional[bool] = None


@dataclass
class TrainDatasetConfig(DatasetConfig):
    fraction: float = 1.0  # a class-balanced subset of the training split, in (0, 1]
    fraction_seed: int = 0  # the subset depends on this seed only (not on `seed`), so runs can share it
    train_split: str = "train"
    val_split: str = "test"  # image folders: ROOT/<train_split> and ROOT/<val_split> (falls back to 'val')
    val_images: Optional[int] = None  # a seeded sample of the validation split; null: all of it


@dataclass
class RecipeConfig:
    name: str = "quick"
    epochs: int = 3  # main schedule epochs; warm-up epochs come in addition (warmup_prefix, as Park & Kim)
    warmup_epochs: int = 0
    batch_size: int = 64
    opt: str = "adamw"  # any timm.optim.create_optimizer_v2 name
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    sched: str = "cosine"  # any timm.scheduler.create_scheduler_v2 name (cosine, multistep, step, ...)
    min_lr: float = 0.0
    warmup_lr: float = 1e-6
    decay_milestones: List[int] = field(default_factory=list)  # multistep: epochs counted after warm-up
    decay_rate: float = 0.1
    clip_grad: Optional[float] = None  # max gradient norm
    smoothing: float = 0.0  # label smoothing
    mixup: float = 0.0  # Mixup alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    auto_augment: Optional[str] = None  # timm string, e.g. 'rand-m9-n2-mstd1.0' (RandAugment m9 n2)
    crop: str = "pad"  # 'pad': RandomCrop(size, padding) as on CIFAR; 'rrc': RandomResizedCrop as on ImageNet
    crop_padding: int = 4
    hflip: float = 0.5
    color_jitter: Optional[float] = None
    reprob: float = 0.0  # random erasing probability
    drop_path: float = 0.0  # stochastic depth rate (timm scales it linearly with depth)


@dataclass
class TrainConfig:
    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    dataset: TrainDatasetConfig = field(default_factory=TrainDatasetConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    layers: Any = "blocks"  # only so model presets (layers: ${layers}) resolve; unused in training
    seed: int = 0  # weights, data order, augmentation
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 autocast on CUDA, off on CPU; 'bf16', 'fp16' (with a grad scaler), 'off'
    channels_last: Optional[bool] = None  # null: on for CNNs on CUDA
    resume: bool = True  # continue from <run dir>/checkpoints/last.pt when it exists; false: start over
    threads: Optional[int] = None  # torch.set_num_threads
    progress: Optional[bool] = None
    debug_kill: Optional[str] = (
        None  # tests only: 'step:N': Ctrl-C after update N; 'save:N': hard exit inside epoch N's last.pt write
    )


def register() -> None:
    """The run and training schemas, stored without a group so they never show up as user choices."""
    cs = ConfigStore.instance()
    cs.store(name="vitstudy_schema", node=Config)
    cs.store(name="vitstudy_train_schema", node=TrainConfig)
