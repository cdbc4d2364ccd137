"""The one driver loop every analysis shares: batch -> each model's forward -> reducers.

A reducer sees each captured tensor inside the forward hook (so it can reduce and drop it at once) and
is told when a batch is complete. Everything runs under `torch.inference_mode()`; reducers run with autocast
off whatever the forward precision. A model's forward stops once its last tapped layer has been captured,
unless the reducer needs the model's outputs (`Reducer.needs_outputs`): layers after it cost nothing.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .layers import Layer
from .models import LoadedModel
from .progress import track
from .taps import tap

if TYPE_CHECKING:
    from .features import FeatureCache


class Reducer:
    """Streaming statistics over batches; subclasses override what they need."""

    needs_outputs = False  # True: end_batch reads the models' outputs (logits), so every forward runs to the end

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        pass

    def end_batch(self, labels: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class FeatureSource:
    """Where `stream` finds and keeps the tapped tensors (`cache.features=true`): the run's feature cache, each
    model's namespace in it (in the models' order) and each batch's image indices (in the loader's order)."""

    cache: FeatureCache
    namespaces: Sequence[str]
    batches: Sequence[Sequence[int]]


class _Captured(Exception):
    """Raised from the hook of a model's last tapped layer: its forward has produced everything asked for."""


def stream(
    models: Sequence[LoadedModel],
    layers: Sequence[Sequence[Layer]],
    loader,
    reducer: Reducer,
    device: torch.device,
    desc: str = "batches",
    progress: bool | str | None = None,
    after_batch: Callable[[int], None] | None = None,
    features: FeatureSource | None = None,
    stop_early: bool | None = None,
) -> int:
    """Run every model once per batch with its layers tapped; returns the number of images seen.

    `after_batch(k)` is called once the k-th batch is fully reduced (e.g. to checkpoint the reducer).
    `features` serves a batch's tensors from the feature cache when every one is there (no forward pass; the
    model's output is then None) and stores them otherwise. Only for reducers that need nothing but the tapped tensors. `stop_early` (default: unless the
    reducer needs outputs) ends each forward after its last tapped layer (the output is then None); where each
    model stopped is kept in `LoadedModel.stopped_after`.
    """
    stop = not reducer.needs_outputs if stop_early is None else stop_early
    device = torch.device(device)
    amp = torch.is_autocast_enabled(device.type)

    def off():  # statistics in their own precision, never autocast; nothing to switch off in an fp32/tf32 forward
        return torch.autocast(device.type, enabled=False) if amp else nullcontext()

    seen = 0
    done = 0
    with torch.inference_mode():
        for b, (inputs, labels) in enumerate(track(loader, desc, progress)):
            outputs = []
            for i, m in enumerate(models):
                if features is not None:
                    names = [layer.name for layer in layers[i]]
                    hit = features.cache.get(features.namespaces[i], features.batches[b], names)
                    if hit is not None:
                        with off():
                            for layer in layers[i]:
                                reducer.on_tensor(i, layer, hit[layer.name].to(device))
                        outputs.append(None)
                        continue
                captured: dict[str, torch.Tensor] | None = {} if features is not None else None
                pending = {layer.name for layer in layers[i]}

                def on_tensor(layer, t, _i=i, _captured=captured, _pending=pending):
                    with off():
                        reducer.on_tensor(_i, layer, t)
                    if _captured is not None:  # a copy: later in-place ops (ReLU(inplace), `x += shortcut`) change t
                        _captured[layer.name] = t.detach().to("cpu", torch.float32, copy=True)
                    _pending.discard(layer.name)
                    if stop and not _pending:
                        raise _Captured(layer.name)

                x = inputs[i].to(device, non_blocking=True)
                with tap(m.module, layers[i], on_tensor):
                    try:
                        outputs.append(m.module(x))
                        m.stopped_after = None
                    except _Captured as last:
                        outputs.append(None)
                        m.stopped_after = str(last)
                if captured is not None:
                    features.cache.put(features.namespaces[i], features.batches[b], captured)
            with off():
                reducer.end_batch(labels, outputs)
            seen += len(labels)
            done += 1
            if after_batch is not None:
                after_batch(done)
    return seen
