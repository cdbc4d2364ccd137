"""Progress of a loop over batches: a tqdm bar on a terminal, timed log lines where output goes to a file.

`progress` (the config key; `vitstudy.run(progress=...)`): `auto` (default) shows the bar when stderr is a terminal
and otherwise prints a line every `VITSTUDY_PROGRESS_SECONDS` seconds (default 30), so a nohup or SLURM log shows
where a job is; `true`/`bar`: the bar always; `log`: the lines always; `false`: nothing. A line names the loop,
the batches done, the images per second and the time left, on stderr and in the run's Hydra log file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Iterable, Iterator

MODES = ("auto", "bar", "log", "off")
DEFAULT_SECONDS = 30.0


def mode(progress) -> str:
    """The mode a config value asks for: None/'auto', True/'true'/'bar', 'log', False/'false'/'off'."""
    if progress is None or progress == "auto":
        return "auto"
    if progress is True or str(progress).lower() in ("true", "bar", "on", "yes"):
        return "bar"
    if progress is False or str(progress).lower() in ("false", "off", "no", "none"):
        return "off"
    if str(progress).lower() == "log":
        return "log"
    from ..errors import VitstudyError

    raise VitstudyError(f"progress must be auto, true (a bar), log (timed lines) or false; got {progress!r}")


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("VITSTUDY_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def log_line(message: str) -> None:
    """`message` on stderr and in every log file the root logger writes (the run directory's `<job>.log`)."""
    print(message, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("vitstudy", logging.INFO, "", 0, message, None, None))


def _images(item) -> int | None:
    """Images in a loader item `(inputs, labels)`: the labels' length."""
    try:
        return len(item[1])
    except (TypeError, IndexError):
        return None


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LogLines:
    """Iterates `iterable`, printing a progress line once `every` seconds have passed since the last one (and a
    final line when any was printed), through `write`."""

    def __init__(
        self,
        iterable: Iterable,
        desc: str,
        total: int | None = None,
        every: float | None = None,
        write: Callable[[str], None] = log_line,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.iterable, self.desc, self.every, self.write, self.clock = iterable, desc, every, write, clock
        if total is None:
            try:
                total = len(iterable)  # a DataLoader: its number of batches
            except TypeError:
                total = None
        self.total = total
        self.every = interval() if every is None else every

    def line(self, done: int, images: int, elapsed: float) -> str:
        text = f"vitstudy: {self.desc} {done}/{self.total if self.total is not None else '?'} batches"
        if images and elapsed > 0:
            text += f", {images / elapsed:.1f} images/s"
        if self.total and done:
            left = (self.total - done) * elapsed / done
            text += f", {_clock(left)} left" if done < self.total else f", done in {_clock(elapsed)}"
        return text

    def __iter__(self) -> Iterator:
        start = last = self.clock()
        done, images, printed = 0, 0, -1  # printed: the batch count of the last line (-1: none yet)
        for item in self.iterable:
            yield item
            done += 1
            images += _images(item) or 0
            now = self.clock()
            if now - last >= self.every:
                self.write(self.line(done, images, now - start))
                last, printed = now, done
        if 0 <= printed < done and (self.total is None or done == self.total):  # the end, unless just said
            self.write(self.line(done, images, self.clock() - start))


def track(iterable: Iterable, desc: str, progress=None, total: int | None = None) -> Iterable:
    """`iterable` with the progress display `progress` asks for (see the module docstring)."""
    m = mode(progress)
    if m == "auto":
        m = "bar" if sys.stderr.isatty() else "log"
    if m == "off":
        return iterable
    if m == "log":
        return LogLines(iterable, desc, total)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, disable=False)
