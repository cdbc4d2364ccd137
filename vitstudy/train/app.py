"""`vitstudy train OVERRIDES`: the Hydra app and config schema of training (see `vitstudy/train.py`).

The primary config is `conf/train.yaml`: a model preset (`model=vit_mini_cifar`), a data set preset
(`dataset=cifar10`) and a recipe (`recipe=quick|park_kim|park_kim_weak`). The schema extends the run
schema's model and data set nodes with the training-only keys, so the same presets serve both.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..config import DatasetConfig, ModelConfig, register
from ..cli import fail
from ..errors import VitstudyError

GROUPS = {"model": "model", "dataset": "dataset", "recipe": "recipe"}


@dataclass
class TrainModelConfig(ModelConfig):
    pretrained: bool = False
    remove_skip: Optional[List[int]] = None  # ViT blocks trained without their residual connections (Raghu Fig. 8)
    global_pool: Optional[str] = None  # 'avg' with class_token=false: GAP ViT (Raghu Figs 10, 11); null: the model's own
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
    debug_kill: Optional[str] = None  # tests only: 'step:N': Ctrl-C after update N; 'save:N': hard exit inside epoch N's last.pt write


def store() -> None:
    register()
    ConfigStore.instance().store(name="vitstudy_train_schema", node=TrainConfig)


store()


@hydra.main(version_base="1.3", config_path="pkg://vitstudy.conf", config_name="train")
def hydra_app(cfg: DictConfig) -> None:
    from .loop import train

    hc = HydraConfig.get()
    try:
        summary = train(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task))
    except VitstudyError as err:
        fail(str(err))
    print(f"vitstudy: training done; {summary}")


def compose(overrides: list[str]) -> DictConfig:
    """The resolved training config for `overrides`; errors become one-line VitstudyErrors."""
    from ..cli import compose as compose_config

    return compose_config(overrides, "train")


def precheck(args: list[str]) -> None:
    """Unknown presets (model, dataset, recipe) and configs that do not compose fail in one line."""
    from ..cli import precheck as precheck_config

    precheck_config(args, GROUPS, "train")


def main(args: list[str] | None = None) -> None:
    """`vitstudy train ARGS` (and `python -m vitstudy.train.app ARGS`): pre-checks, then the Hydra app."""
    args = sys.argv[1:] if args is None else list(args)
    try:
        precheck(args)
        sys.argv = [sys.argv[0]] + args
        hydra_app()
    except VitstudyError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume from the last checkpoint", code=130)


if __name__ == "__main__":
    main()
