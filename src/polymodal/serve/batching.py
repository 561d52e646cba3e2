"""Requests decoded together: one worker thread owns the model and runs batches of jobs.

A job is one request's prompts (``n`` choices are ``n`` rows), its output kind and its sampling. The
worker takes the oldest job, waits up to ``batch_window_ms`` for more jobs that can share its
forward passes (same output kind and sampling; a job with a ``seed`` always runs alone, so that a
seed reproduces whatever else the server is doing), fills the batch up to ``max_batch`` rows and
decodes it with :func:`polymodal.generation.stream`. Events go back to each job's asyncio queue as
they come, so text streams while the batch decodes and a short answer returns before a long one.

Admission is bounded: at most ``max_queue`` jobs wait or run; one more is refused with a 429 (and
``Retry-After``) rather than queued without bound. A job whose client went away is cancelled: its
rows stop at the next decode step and its slot is free at once.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from polymodal.content import Document
from polymodal.generation import Event, SamplingConfig, stream
from polymodal.run import Run
from polymodal.serve.config import ServeConfig
from polymodal.serve.errors import APIError

_DONE = object()


@dataclass(eq=False)
class Job:
    prompts: list[Document]
    output: str
    sampling: SamplingConfig
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    constraint: Any = None  # a TextConstraint shared by the job's rows (structured output), or None
    cancelled: bool = False
    released: bool = False

    def send(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled = True

    def batches_with(self, other: Job) -> bool:
        return self.sampling.seed is None and other.sampling.seed is None and (
            self.output, self.sampling) == (other.output, other.sampling)  # fmt: skip

    async def next_event(self) -> tuple[int, Event] | BaseException | None:
        """(row, event), an exception the batch raised, or None when the job is over."""
        item = await self.events.get()
        return None if item is _DONE else item


class _Rows:
    """``b in rows``: whether batch row ``b`` belongs to a cancelled job (read by stream each step)."""

    def __init__(self, owners: Sequence[tuple[Job, int]]) -> None:
        self.owners = owners

    def __contains__(self, b: object) -> bool:
        return isinstance(b, int) and self.owners[b][0].cancelled


class Engine:
    def __init__(self, run: Run, config: ServeConfig, *, on_batch: Callable[[int], None] | None = None) -> None:
        self.run, self.config, self.on_batch = run, config, on_batch
        self._pending: queue.Queue[Job | None] = queue.Queue()
        self._held: collections.deque[Job] = collections.deque()  # taken while batching, but not batched
        self._admitted = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="polymodal-engine", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self._admitted

    def submit(self, prompts: list[Document], output: str, sampling: SamplingConfig, constraint: Any = None) -> Job:
        with self._lock:
            if self._admitted >= self.config.max_queue:
                raise APIError(429, f"the server is busy ({self._admitted} requests in flight); retry shortly",
                               code="queue_full", retry_after=self.config.retry_after_s)  # fmt: skip
            self._admitted += 1
        job = Job(prompts, output, sampling, asyncio.get_running_loop(), constraint=constraint)
        job.engine = self
        self._pending.put(job)
        return job

    def release(self, job: Job) -> None:
        """The handler is done with ``job`` (answered, failed or disconnected): free its slot."""
        job.cancelled = True
        with self._lock:
            if not job.released:
                job.released = True
                self._admitted -= 1

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=30)

    def _next(self, timeout: float | None) -> Job | None:
        if self._held:
            return self._held.popleft()
        return self._pending.get(timeout=timeout) if timeout is None or timeout > 0 else self._pending.get_nowait()

    def _work(self) -> None:
        while True:
            job = self._next(None)
            if job is None:
                return
            if job.cancelled:
                job.send(_DONE)
                continue
            group, rows = [job], len(job.prompts)
            deadline = time.monotonic() + self.config.batch_window_ms / 1000
            skipped: list[Job] = []
            while rows < self.config.max_batch:
                try:
                    other = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if other is None:
                    self._pending.put(None)  # close after this batch
                    break
                if other.cancelled:
                    other.send(_DONE)
                elif job.batches_with(other) and rows + len(other.prompts) <= self.config.max_batch:
                    group.append(other)
                    rows += len(other.prompts)
                else:
                    skipped.append(other)
            self._held.extendleft(reversed(skipped))  # they keep their turn
            self._decode(group)

    def _decode(self, group: list[Job]) -> None:
        owners = [(job, k) for job in group for k in range(len(job.prompts))]
        if self.on_batch is not None:
            self.on_batch(len(owners))
        prompts = [p for job in group for p in job.prompts]
        first = group[0]
        constraints = [job.constraint for job, _ in owners]
        try:
            events = stream(self.run, prompts, output=first.output, sampling=first.sampling, check_direction=False,
                            compile=self.config.compile, cancelled=_Rows(owners),
                            constraints=constraints if any(c is not None for c in constraints) else None)  # fmt: skip
            for event in events:
                job, k = owners[event.index]
                if not job.cancelled:
                    job.send((k, event))
                if all(j.cancelled for j in group):
                    events.close()
                    break
        except Exception as exc:  # noqa: BLE001 (handed to each request, which answers with it)
            for job in group:
                job.send(exc)
        finally:
            for job in group:
                job.send(_DONE)
