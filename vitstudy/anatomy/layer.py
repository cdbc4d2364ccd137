"""A layer: one representation of a model, named by its module path (the lingua franca of timm, hooks and users).

The suffix `:in` names the *input* of a module: `blocks.3.norm2:in` is the residual stream after block 3's
attention sublayer, which no module outputs on its own. A trailing `[i]` picks element i of a module that returns a
tuple or list (`stages.0.blocks.1[0]`: an MViT-v2 block returns (tokens, feature size); `blocks.2[1]`: a TNT block
returns (pixel tokens, patch tokens)) or, after `:in`, its i-th positional input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INPUT = ":in"
_SPEC = re.compile(r"^(?P<module>.*?)(?P<input>:in)?(?:\[(?P<index>\d+)\])?$")


def parse(spec: str) -> tuple[str, bool, int | None]:
    """'blocks.3.norm2:in' -> ('blocks.3.norm2', True, None); 'stages.0.blocks.1[0]' -> (..., False, 0)."""
    m = _SPEC.match(spec)
    return m["module"], m["input"] is not None, None if m["index"] is None else int(m["index"])


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One representation: a module path, whether it is the module's input, its output layout."""

    name: str  # as written in outputs, e.g. 'blocks.3' or 'blocks.3.norm2:in'
    module: str  # module path
    is_input: bool
    shape: tuple  # per-image shape seen in the probe (without batch)
    layout: str  # 'NCHW', 'NHWC', 'NLC' (tokens) or 'NC'
    index: int | None = None  # element of a tuple/list output (or positional input) that is this layer
    grid: tuple | None = None  # tokens (NLC): (rows, cols, prefix tokens) found by the probe for the input it ran on
    blocks: int | None = (
        None  # NesT: edge of the nested blocks the module's (B, T, N, C) tensor holds; taken un-blocked
    )

    def of_input(self, args: tuple):
        """This layer's tensor from a module's positional inputs (forward pre-hook)."""
        return self.unblocked(args[self.index or 0]) if args else None

    def of_output(self, out):
        """This layer's tensor from a module's output (forward hook)."""
        return self.unblocked(out if self.index is None else out[self.index])

    def unblocked(self, t):
        """NesT's (B, T, N, C) nested blocks as the (B, H, W, C) map they were cut from (timm's `deblockify`), so
        every reader sees one position per image location (`anatomy.tokens.nested_blocks`)."""
        if self.blocks is None:
            return t
        from timm.models.nest import deblockify

        return deblockify(t, self.blocks)
