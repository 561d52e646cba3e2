"""Time-aligned multi-axis positions: the (t, h, w) index of every token (DESIGN.md, "Positions").

Every token carries three position indices; the rotary dimensions of each attention head are
split into three sections, one per axis. The rules:

* text and special tokens: ``t = h = w = p`` (the running index) — ordinary 1-D RoPE;
* an image grid of H×W codes starting at ``p``: ``t = p, h = p + row, w = p + col``;
* audio at ``r`` tokens/s starting at ``p``: token ``i`` sits at ``s = i / r`` seconds and gets
  ``t = h = w = p + round(s · τ)``, where ``τ`` is the vocabulary's time units per second;
* video: a frame sampled at ``s`` seconds is an image grid whose ``t`` is ``o + round(s · τ)``, and
  the video's audio uses the same clock ``o``, so a sound and a frame at the same second share t.

After any span the running index continues at one past the largest index the span used
(:func:`next_index`), which for an image is ``p + max(H, W)`` as DESIGN.md states.

All functions return ``LongTensor[n, 3]`` with columns (t, h, w). This module knows nothing about
token ids or tokenizers: callers say how many tokens of which kind sit where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def text_positions(start: int, length: int) -> torch.Tensor:
    """``length`` consecutive 1-D positions from ``start`` (text and special tokens)."""
    index = torch.arange(start, start + length, dtype=torch.long)
    return index.unsqueeze(1).expand(length, 3).clone()


def image_positions(start: int, height: int, width: int) -> torch.Tensor:
    """Row-major positions of an ``height`` × ``width`` code grid whose first token is at ``start``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image grid must be positive, got {height}x{width}")
    rows = torch.arange(height, dtype=torch.long).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.long).repeat(height)
    t = torch.full_like(rows, start)
    return torch.stack([t, start + rows, start + cols], dim=1)


def seconds_to_units(seconds: torch.Tensor | Sequence[float] | float, time_units_per_second: float) -> torch.Tensor:
    """``round(seconds · τ)`` as integers (round half to even, as ``torch.round`` does)."""
    s = torch.as_tensor(seconds, dtype=torch.float64)
    return torch.round(s * time_units_per_second).to(torch.long)


def timed_positions(origin: int, seconds: torch.Tensor | Sequence[float], time_units_per_second: float) -> torch.Tensor:
    """One token per time stamp: ``t = h = w = origin + round(s · τ)`` (audio codes, frame markers)."""
    t = origin + seconds_to_units(seconds, time_units_per_second)
    return t.unsqueeze(1).expand(t.numel(), 3).clone()


def audio_positions(start: int, length: int, tokens_per_second: float, time_units_per_second: float) -> torch.Tensor:
    """Positions of ``length`` audio codes at ``tokens_per_second`` starting at ``start``."""
    if tokens_per_second <= 0:
        raise ValueError(f"tokens_per_second must be > 0, got {tokens_per_second}")
    seconds = torch.arange(length, dtype=torch.float64) / tokens_per_second
    return timed_positions(start, seconds, time_units_per_second)


def frame_positions(origin: int, seconds: float, height: int, width: int, time_units_per_second: float) -> torch.Tensor:
    """A video frame sampled at ``seconds``: an image grid whose first t is on the video clock."""
    t0 = origin + int(seconds_to_units(seconds, time_units_per_second))
    return image_positions(t0, height, width)


@dataclass(frozen=True)
class FrameAt:
    """A video frame's grid of codes, sampled at ``time`` seconds from the start of the video."""

    time: float
    height: int
    width: int


@dataclass(frozen=True)
class TimedTokens:
    """Tokens each stamped with a time in seconds: audio codes, or a marker such as ``<|frame|>``."""

    times: tuple[float, ...]


def video_positions(origin: int, items: Sequence[FrameAt | TimedTokens], time_units_per_second: float) -> torch.Tensor:
    """Positions of a video's tokens, given in the order they appear in the sequence.

    ``origin`` is the running index at which the video's clock starts (second 0). Frames and the
    audio track are placed on that one clock, whatever order the tokens are interleaved in.
    """
    parts = []
    for item in items:
        if isinstance(item, FrameAt):
            parts.append(frame_positions(origin, item.time, item.height, item.width, time_units_per_second))
        elif isinstance(item, TimedTokens):
            parts.append(timed_positions(origin, item.times, time_units_per_second))
        else:
            raise TypeError(f"video item must be FrameAt or TimedTokens, got {type(item).__name__}")
    return torch.cat(parts) if parts else torch.empty(0, 3, dtype=torch.long)


def next_index(start: int, positions: torch.Tensor) -> int:
    """The running index after a span: one past the largest index it used (``start`` if empty)."""
    return start if positions.numel() == 0 else max(start, int(positions.max()) + 1)
