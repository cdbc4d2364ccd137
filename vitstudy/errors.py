"""The one exception type vitstudy raises for bad input; the CLI prints its message as one line."""

from __future__ import annotations

import difflib
import sys
from typing import Iterable


class VitstudyError(Exception):
    """A problem with the user's input or environment, described in one line.

    The message says what is wrong and what would be right. When the error crosses a DataLoader worker,
    torch re-raises it with the worker's traceback folded into the message; the original line is recovered.
    """

    def __init__(self, message: str):
        message = str(message)
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split("VitstudyError: ", 1)[-1]
        super().__init__(" ".join(message.split()))


def closest(name: str, choices: Iterable[str], n: int = 5) -> str:
    """A short 'did you mean' phrase: the closest matches, or the first few valid choices."""
    choices = sorted(set(choices))
    near = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if near:
        return "closest: " + ", ".join(near)
    head = ", ".join(choices[:n])
    return f"valid: {head}" + (f", ... ({len(choices)} in all)" if len(choices) > n else "")


def fail(message: str, code: int = 2) -> None:
    """End the command with one line on stderr and a non-zero exit (the CLI's answer to bad input)."""
    print(f"vitstudy: error: {message}", file=sys.stderr)
    raise SystemExit(code)
