"""Helpers several analyses share: the model-input tap, and a loader over freshly sampled images."""

from __future__ import annotations

from ..pipeline.layers import Layer

# the model's own input: a pre-hook on the root module
INPUT = Layer(name="input", module="", is_input=True, shape=(), layout="NCHW")


def sample_loader(ctx, models, num_images: int | None = None, repeat: int = 0, tail: str = "fold"):
    """A loader that gives each of `models` its own transform of freshly sampled images (seed + repeat), and the
    sample's record for `Result.images`. CKA analyses pass `tail=cfg.cka.tail`: their batches need 4 images."""
    batching, record = ctx.sample(num_images, tail=tail, repeat=repeat)
    return ctx.loader(models, batching), record
