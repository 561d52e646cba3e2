"""Progress on long work, on a terminal and in a log alike.

On a terminal, a tqdm bar. When stderr is a file or a pipe (a job's log, CI), a bar would be either
silent or a wall of carriage returns, so a plain line is printed instead every tenth of the way, as
the trainer does for its steps: ``eval shapes/colour: 250/500 prompts (50%), 41 s``. Callers say
whether progress is wanted at all (``enabled``); this module chooses the form.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm


class LogLines:
    """The tqdm calls a loop makes (``update``, ``set_postfix``, ``close``, a ``with`` block), written
    as one line per tenth of ``total``."""

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.n, self.tenths, self.postfix = 0, 0, ""
        self.started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        tenths = min(10, self.n * 10 // self.total) if self.total > 0 else 0
        if tenths > self.tenths:
            self.tenths = tenths
            seconds = time.perf_counter() - self.started
            extra = f", {self.postfix}" if self.postfix else ""
            done = f"{self.n}/{self.total} {self.unit}s ({self.n / self.total:.0%})"
            print(f"{self.desc}: {done}, {seconds:.0f} s{extra}", file=self.stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def show_progress(total: int, desc: str, unit: str = "it", *, enabled: bool = True) -> tqdm | LogLines:
    """A tqdm bar when stderr is a terminal, :class:`LogLines` when it is not, nothing when not
    ``enabled`` (a disabled bar: the same calls, no output)."""
    if enabled and not sys.stderr.isatty():
        return LogLines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)
