"""Build timm models: pretrained weights, local checkpoints (never executing code from them), eval mode."""

from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping

import timm
import torch

from ..errors import VitstudyError, closest
from ..zoo import alternet  # noqa: F401  (alternet, cifar_models: register vitstudy's own models with timm)
from . import preprocess


@dataclass(kw_only=True)
class LoadedModel:
    """A model ready for analysis, with the key that names it in outputs and its own eval transform."""

    key: str  # 'model' or 'reference'
    name: str  # timm name (with tag)
    label: str  # display name
    module: torch.nn.Module
    transform: Any
    data_config: dict
    weights: str  # where the weights came from: 'random-init', 'timm:<tag>', or 'file:<path>'
    data_sources: dict = field(default_factory=dict)  # data-config key -> where its value came from
    transform_line: str = ""  # the one line printed at the start of a run (preprocess.line)
    stopped_after: str | None = (
        ""  # the engine's last forward: '' none yet, None to the output, else the layer it ended at
    )


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


def weights_hint(key: str) -> str:
    """How to give the weights of the model at config key `key` another way (offline, not in the cache)."""
    if key in ("model", "reference"):
        return f"pass {key}.checkpoint=/path/to/weights.safetensors (or .pth) or {key}.pretrained=false"
    if key.startswith("compare") and key[7:].isdigit():
        return (
            f"give analysis.compare entry {key[7:]} as a mapping with a checkpoint, e.g. "
            f"{{name: NAME, checkpoint: /path/to/weights.safetensors}}, or {{name: NAME, pretrained: false}}"
        )
    return (
        f"give the analysis.models entry '{key}' as a mapping with a checkpoint, e.g. {{name: NAME, checkpoint: PATH}}, "
        f"or set analysis.pretrained=false"
    )


def create(
    name: str, pretrained: bool = False, checkpoint: str | None = None, *, config_key: str = "model", **kwargs
) -> torch.nn.Module:
    """`timm.create_model` with weights from the Hub/cache (`pretrained`) or a local `checkpoint` file;
    `config_key` (model, reference, compare0, ...) names the config entry an error tells the user to change."""
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
                f"pretrained weights for {config_key} '{name}' are not available (offline and not in the Hugging Face "
                f"cache): {weights_hint(config_key)}"
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
    except Exception as err:  # corrupt, foreign, or holding Python objects
        raise VitstudyError(_unreadable(path, err)) from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitstudyError(
            f"checkpoint {path} holds no state dict of tensors (keys: {list(state)[:5] if isinstance(state, Mapping) else type(state).__name__})"
        )
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def _unreadable(path: str, err: Exception) -> str:
    """Why a weights file could not be read: not a torch/safetensors file at all, or objects beyond tensors."""
    text = str(err).strip()
    with open(path, "rb") as f:
        head = f.read(8)
    torch_file = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # a torch zip archive or a pickle
    if (
        isinstance(err, pickle.UnpicklingError)
        and torch_file
        and ("weights only" in text.lower() or "unsupported" in text.lower())
    ):
        reason = next(
            (l.strip() for l in text.splitlines() if "Unsupported" in l or "global" in l.lower()), text.splitlines()[0]
        )
        return (
            f"refusing checkpoint {path}: it holds Python objects beyond tensors and plain containers ({reason[:120]}); "
            f"vitstudy loads with weights_only=True so no code runs; re-save it as "
            f"torch.save(model.state_dict(), ...) or as .safetensors"
        )
    kind = "a .safetensors file" if path.endswith(".safetensors") else "a torch file (torch.save) or .safetensors"
    first = text.splitlines()[0][:120] if text else type(err).__name__
    return (
        f"{path} is not a readable checkpoint: not {kind} ({type(err).__name__}: {first}); give the weights file itself"
    )


def load_weights(model: torch.nn.Module, path: str, name: str = "model") -> None:
    """Load a checkpoint strictly; a mismatch is reported with a few of the offending keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
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


def training_metadata(path: str) -> dict | None:
    """`model_config` and `data_config` of a vitstudy training checkpoint (None for other weight files)."""
    if not os.path.isfile(path) or path.endswith(".safetensors"):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_config"), dict):
        return None
    return {"model_config": ckpt["model_config"], "data_config": ckpt.get("data_config")}


def eval_transform(model: torch.nn.Module, input_size=None, kwargs: Mapping | None = None):
    """The model's timm eval transform and data config (see `preprocess.resolve` for the full resolution)."""
    config, _ = preprocess.resolve(model, {"input_size": input_size}, None, kwargs)
    return preprocess.transform(config), config


def node(entry, layers=None, pretrained: bool | None = None):
    """A model config node from a preset name (conf/model/<name>.yaml), a timm name, or a mapping of model keys.

    Nothing is inherited from another model's node: a compare or grid model has its own weights, kwargs and data.
    `layers` and `pretrained`, when given, are set on the node (a mapping's own `pretrained` wins).
    """
    from importlib import resources

    from omegaconf import DictConfig, OmegaConf

    from ..config import ModelConfig

    base = OmegaConf.structured(ModelConfig)
    if isinstance(entry, (dict, DictConfig)):
        given = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
        if "name" not in given:
            raise VitstudyError(f"a model entry needs a name (a preset or timm name), got {given}")
        preset = resources.files("vitstudy.conf") / "model" / f"{given['name']}.yaml"
        spec = (
            OmegaConf.merge(OmegaConf.load(str(preset)), {k: v for k, v in given.items() if k != "name"})
            if preset.is_file()
            else given
        )
        explicit_pretrained = "pretrained" in given
    else:
        name = str(entry)
        preset = resources.files("vitstudy.conf") / "model" / f"{name}.yaml"
        spec = OmegaConf.load(str(preset)) if preset.is_file() else {"name": name}
        explicit_pretrained = False
    try:
        out = OmegaConf.merge(base, spec)
    except Exception as err:
        raise VitstudyError(f"bad model entry {entry!r}: {str(err).splitlines()[0]}") from None
    own = spec.get("layers") if hasattr(spec, "get") else None
    out.layers = layers if layers is not None else own if own is not None else "blocks"
    if pretrained is not None and not explicit_pretrained:
        out.pretrained = pretrained
    return out


def default_name(key: str) -> str | None:
    """The timm name of the model preset that `conf/config.yaml` picks for `key` when none is given."""
    from importlib import resources

    from omegaconf import OmegaConf

    root = resources.files("vitstudy.conf")
    for entry in OmegaConf.load(str(root / "config.yaml")).defaults:
        if isinstance(entry, dict) and f"model@{key}" in entry:
            preset = root / "model" / f"{entry[f'model@{key}']}.yaml"
            return OmegaConf.load(str(preset)).get("name") if preset.is_file() else None
    return None


def load(cfg, key: str = "model", name_given: bool | None = None) -> LoadedModel:
    """Build one model from its config node (`name`, `pretrained`, `checkpoint`, `kwargs`, `data`, ...).

    A vitstudy training checkpoint carries the architecture and preprocessing it was trained with: its
    kwargs fill what the node leaves unset, and when the name was not given by the user (`name_given`
    False, or None and the name is the default preset's) the saved architecture is built instead.
    """
    from omegaconf import DictConfig, OmegaConf

    raw = (
        OmegaConf.to_container(cfg.kwargs, resolve=True)
        if isinstance(cfg.kwargs, DictConfig)
        else dict(cfg.kwargs or {})
    )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if v is not None}
    user_kwargs = dict(kwargs)
    name = cfg.name
    saved = training_metadata(cfg.checkpoint) if cfg.checkpoint else None
    if saved:
        saved_name = saved["model_config"]["name"]
        if saved_name.split(".")[0] != name.split(".")[0]:
            if name_given is None:
                name_given = name != default_name(key)
            if name_given:
                raise VitstudyError(
                    f"checkpoint {cfg.checkpoint} was saved from '{saved_name}', but {key}.name is '{name}'; "
                    f"set {key}.name={saved_name} or leave {key}.name out (its kwargs come from the checkpoint)"
                )
            print(
                f"vitstudy: {key}: building '{saved_name}', the architecture checkpoint {cfg.checkpoint} was saved from"
            )
            name = saved_name
        # the architecture the weights were trained as wins over the config's (a preset's defaults, e.g. AlterNet's
        # num_msa, would not fit them); a differing value is said
        own = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in saved["model_config"].get("kwargs", {}).items()
            if v is not None
        }
        differ = sorted(k for k in kwargs if k in own and kwargs[k] != own[k])
        if differ:
            print(
                f"vitstudy: {key}: the checkpoint's {', '.join(f'{k}={own[k]}' for k in differ)} replace the config's "
                f"{', '.join(f'{k}={kwargs[k]}' for k in differ)}"
            )
        kwargs = {**kwargs, **own}
    model = create(name, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, config_key=key, **kwargs)
    saved_data = dict((saved or {}).get("data_config") or {})
    saved_size = (saved or {}).get("model_config", {}).get("kwargs", {}).get("img_size")
    if "input_size" not in saved_data and saved_size is not None:  # older checkpoints: the size they were built at
        saved_data["input_size"] = (saved_size, saved_size) if isinstance(saved_size, int) else tuple(saved_size)
    data = cfg.get("data")
    user = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data or {})
    data_config, sources = preprocess.resolve(model, user, saved_data, user_kwargs)
    transform = preprocess.transform(data_config)
    if cfg.checkpoint:
        weights = f"file:{os.path.abspath(cfg.checkpoint)}"
    elif cfg.pretrained:
        tag = model.pretrained_cfg.get("tag")
        weights = (
            f"timm:{model.pretrained_cfg.get('architecture', name.split('.')[0])}.{tag}" if tag else f"timm:{name}"
        )
    else:
        weights = "random-init"
    arch_tag = (
        f"{model.pretrained_cfg.get('architecture', name.split('.')[0])}.{model.pretrained_cfg.get('tag') or 'default'}"
    )
    line = preprocess.line(key, name, data_config, sources, transform, cfg.checkpoint, arch_tag)
    label = cfg.get("label") or name.split(".")[0]
    return LoadedModel(
        key=key,
        name=name,
        label=label,
        module=model,
        transform=transform,
        data_config=data_config,
        weights=weights,
        data_sources=sources,
        transform_line=line,
    )
