"""Cascade routing: a small and a large run behind one model name, each request answered by the
small one unless its inputs or the small one's confidence say otherwise.

A request goes straight to the large run when its inputs ask for it (a modality listed in
``large_for``, a picture sent with ``detail: "high"``, or a prompt longer than
``max_small_prompt_tokens``). Otherwise the small run answers first; when the mean log-probability of
the tokens it chose (:attr:`polymodal.generation.Generation.mean_logprob`, every choice of the request)
is below ``threshold``, the large run answers instead and the small one's answer is dropped. The
response says which run served it (``served_by`` and the ``X-Polymodal-Served-By`` header) and
``/metrics`` counts both (``polymodal_cascade_requests_total{served_by, reason}``).

:func:`cascade_curve` is the same rule applied offline to answers both runs gave to the same
questions: accuracy and compute (tokens × parameters) at each threshold, beside always-small and
always-large (``benchmarks/cascade.py``).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from polymodal.content import Document, Image
from polymodal.errors import ConfigError
from polymodal.tokenizers.document import part_modality


@dataclass(frozen=True)
class CascadePolicy:
    threshold: float = -0.5  # mean token log-probability below which the large run answers
    large_for: tuple[str, ...] = ()  # input modalities the small run never sees, e.g. ("video",)
    max_small_prompt_tokens: int | None = None  # longer prompts go to the large run
    high_detail_to_large: bool = True  # a picture asked with detail "high" goes to the large run

    def __post_init__(self) -> None:
        object.__setattr__(self, "large_for", tuple(self.large_for))
        unknown = set(self.large_for) - {"image", "audio", "video"}
        if unknown:
            raise ConfigError(f"cascade: large_for takes image, audio or video, got {sorted(unknown)}")
        if self.threshold > 0:
            raise ConfigError(f"cascade: threshold is a log-probability (<= 0), got {self.threshold}")

    def by_inputs(self, document: Document, prompt_tokens: int) -> str | None:
        """Why this request goes straight to the large run, or None."""
        for part in document.parts:
            modality = part_modality(part)
            if modality in self.large_for:
                return f"{modality} input"
            if self.high_detail_to_large and isinstance(part, Image) and part.detail == "high":
                return "high detail"
        if self.max_small_prompt_tokens is not None and prompt_tokens > self.max_small_prompt_tokens:
            return "long prompt"
        return None

    def confident(self, generations: Sequence[Any]) -> bool:
        return all(g.mean_logprob >= self.threshold for g in generations)


class ReplayJob:
    """Events already decoded (the small run's confident answer), handed out as a live job would."""

    released = True  # no engine slot to free
    cancelled = False

    def __init__(self, events: Sequence[Any]) -> None:
        self._events = collections.deque(events)

    async def next_event(self) -> Any:
        return self._events.popleft() if self._events else None


def cascade_curve(rows: Sequence[dict], small_parameters: int, large_parameters: int,
                  thresholds: Sequence[float]) -> dict:  # fmt: skip
    """Accuracy and compute of the cascade at each threshold, from each question's ``small_correct``,
    ``small_logprob``, ``small_tokens``, ``large_correct`` and ``large_tokens`` (tokens read and written).
    The cascade always pays the small run; an escalated question also pays the large one."""
    n = len(rows)
    if n == 0:
        raise ConfigError("cascade_curve: no questions")
    small_cost = sum(r["small_tokens"] for r in rows) * small_parameters
    large_cost = sum(r["large_tokens"] for r in rows) * large_parameters
    out = {
        "always_small": {"accuracy": sum(r["small_correct"] for r in rows) / n, "compute": small_cost},
        "always_large": {"accuracy": sum(r["large_correct"] for r in rows) / n, "compute": large_cost},
        "cascade": [],
    }
    for t in thresholds:
        escalated = [r for r in rows if r["small_logprob"] < t]
        kept = [r for r in rows if r["small_logprob"] >= t]
        correct = sum(r["small_correct"] for r in kept) + sum(r["large_correct"] for r in escalated)
        compute = small_cost + sum(r["large_tokens"] for r in escalated) * large_parameters
        out["cascade"].append({"threshold": t, "accuracy": correct / n, "escalated": len(escalated) / n,
                               "compute": compute, "compute_vs_large": compute / large_cost})  # fmt: skip
    return out
