"""Build timm models: pretrained weights, local checkpoints (never executing code from them), eval mode."""
from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Mapping

import timm
import torch
from timm.data import create_transform, resolve_data_config

from . import alternet, cifar_models  # noqa: F401  (register vitstudy's own models with timm)
from .errors import VitstudyError, closest


@dataclass
class LoadedModel:
    """A model ready for analysis, with the key that names it in outputs and its own eval transform."""

    key: str  # 'model' or 'reference'
    name: str  # timm name (with tag)
    label: str  # display name
    module: torch.nn.Module
    transform: Any
    data_config: dict
    weights: str  # where the weights came from: 'random-init', 'timm:<tag>', or 'file:<path>'


@contextmanager
def requires_grad(module: torch.nn.Module, flag: bool):
    """Set every parameter's requires_grad inside the block; each one's own flag is restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def check_name(name: str) -> None:
    if not timm.is_model(name):
        arch = name.split(".", 1)[0]
        if timm.is_model(arch):
            tags = timm.list_pretrained(f"{arch}.*")
            raise VitstudyError(
                f"unknown pretrained tag in '{name}'; {closest(name, tags)} (or set model.pretrained=false)"
            )
        raise VitstudyError(f"unknown timm model '{name}'; {closest(name, timm.list_models())}")


def create(name: str, pretrained: bool = False, checkpoint: str | None = None, **kwargs) -> torch.nn.Module:
    """`timm.create_model` with weights from the Hub/cache (`pretrained`) or a local `checkpoint` file."""
    check_name(name)
    if checkpoint:
        pretrained = False
    try:
        with _hub_session(pretrained):
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise VitstudyError(f"cannot build timm model '{name}' with kwargs {dict(kwargs)}: {err}") from None
    except VitstudyError:
        raise
    except Exception as err:  # hub and cache failures surface as OSError/RuntimeError subclasses
        if pretrained and _is_offline_error(err):
            raise VitstudyError(
                f"pretrained weights for '{name}' are not available (offline and not in the Hugging Face cache): "
                f"pass model.checkpoint=/path/to/weights.safetensors (or .pth) or model.pretrained=false"
            ) from None
        raise VitstudyError(f"cannot build timm model '{name}': {type(err).__name__}: {err}") from None
    if checkpoint:
        load_weights(model, checkpoint, name)
    return model.eval()


@contextmanager
def _hub_session(pretrained: bool):
    """Quiet Hub retries; if the Hub's host does not even resolve, use the local cache only.

    Without this an offline machine spends about a minute in retries, logging a warning for each,
    before the one-line error below; cached weights still load either way.
    """
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    constants, offline = None, None
    if pretrained:
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE
        if not offline and not _resolves(constants.ENDPOINT):
            constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_logger.setLevel(level)
        if constants is not None:
            constants.HF_HUB_OFFLINE = offline


def _resolves(url: str) -> bool:
    import socket
    from urllib.parse import urlparse

    try:
        socket.getaddrinfo(urlparse(url).hostname, 443)
        return True
    except (OSError, UnicodeError):
        return False


def _is_offline_error(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    keys = ("localentrynotfound", "offline", "connection", "hub", "huggingface", "resolve", "timed out", "cache")
    return isinstance(err, FileNotFoundError) or any(k in text for k in keys)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read weights from .safetensors or a torch file with `weights_only=True` (no code is executed).

    A dict holding `state_dict`, `model` or `state_dict_ema` is unwrapped; a `module.` prefix is stripped.
    """
    if not os.path.isfile(path):
        raise VitstudyError(f"checkpoint file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported object"
        raise VitstudyError(
            f"refusing checkpoint {path}: it holds Python objects beyond tensors and plain containers "
            f"({reason[:120]}); vitstudy loads with weights_only=True so no code runs; re-save it as "
            f"torch.save(model.state_dict(), ...) or as .safetensors"
        ) from None
    except Exception as err:  # corrupt or foreign files
        raise VitstudyError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitstudyError(f"checkpoint {path} holds no state dict of tensors (keys: {list(state)[:5] if isinstance(state, Mapping) else type(state).__name__})")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights(model: torch.nn.Module, path: str, name: str = "model") -> None:
    """Load a checkpoint strictly; a mismatch is reported with a few of the offending keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise VitstudyError(
            f"checkpoint {path} does not fit '{name}': {'; '.join(parts)}; "
            f"set model.name and model.kwargs (e.g. num_classes, img_size, depth) to the architecture it was saved from"
        )
    model.load_state_dict(state, strict=True)


def eval_transform(model: torch.nn.Module, input_size=None, kwargs: Mapping | None = None):
    """The model's own timm eval transform (resize, crop, normalise), from its pretrained config."""
    args = {}
    if input_size is not None:
        args["input_size"] = tuple(input_size)
    elif kwargs and "img_size" in kwargs:
        size = kwargs["img_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        args["input_size"] = (3, *size)
    data_config = resolve_data_config(args, model=model)
    return create_transform(**data_config, is_training=False), data_config


def load(cfg, key: str = "model") -> LoadedModel:
    """Build one model from its config node (`name`, `pretrained`, `checkpoint`, `kwargs`, ...)."""
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.to_container(cfg.kwargs, resolve=True) if isinstance(cfg.kwargs, DictConfig) else dict(cfg.kwargs or {})
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if v is not None}
    name = cfg.name
    if cfg.checkpoint:  # a vitstudy training checkpoint knows the architecture it was saved from
        from .train import saved_model_config

        saved = saved_model_config(cfg.checkpoint)
        if saved:
            if saved["name"].split(".")[0] != name.split(".")[0]:
                raise VitstudyError(
                    f"checkpoint {cfg.checkpoint} was saved from '{saved['name']}', but {key}.name is '{name}'; "
                    f"set {key}.name={saved['name']} (its kwargs come from the checkpoint)")
            kwargs = {**{k: v for k, v in saved.get("kwargs", {}).items() if v is not None}, **kwargs}
    model = create(name, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, **kwargs)
    transform, data_config = eval_transform(model, cfg.get("input_size"), kwargs)
    if cfg.checkpoint:
        weights = f"file:{os.path.abspath(cfg.checkpoint)}"
    elif cfg.pretrained:
        weights = f"timm:{model.pretrained_cfg.get('tag') or cfg.name}"
    else:
        weights = "random-init"
    label = cfg.get("label") or name.split(".")[0]
    return LoadedModel(key, name, label, model, transform, data_config, weights)
