"""`vitstudy train OVERRIDES`: the Hydra app of training (the loop is `vitstudy.train.loop`).

The primary config is `conf/train.yaml`: a model preset (`model=vit_mini_cifar`), a data set preset
(`dataset=cifar10`) and a recipe (`recipe=quick|park_kim|park_kim_weak|demo`); the schema is `config.TrainConfig`.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..compose import compose as compose_config
from ..compose import precheck as precheck_config
from ..errors import VitstudyError, fail

GROUPS = {"model": "model", "dataset": "dataset", "recipe": "recipe"}


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
    return compose_config(overrides, "train")


def precheck(args: list[str]) -> None:
    """Unknown presets (model, dataset, recipe) and configs that do not compose fail in one line."""
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
