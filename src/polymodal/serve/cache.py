"""A bounded cache of media a server has already seen.

Two least-recently-used tables, both ``max_items`` long:

* decoded parts, keyed by the client's ``uuid`` for the part when it sends one, else by the SHA-256
  of the media's bytes, and always by the settings that change the part (kind, detail, fps, frames):
  a repeated image is not decoded again, and a part sent with a known ``uuid`` needs no data at all;
* encoded spans (the tokenizer's output), keyed by the decoded part object itself: a part that came
  from the first table is not tokenized again either.

:meth:`MediaCache.tally` counts, for one request, the prompt tokens whose encoding came from the
cache (``usage.prompt_tokens_details.cached_tokens``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from polymodal.content import Part


def _tokens(encoded: Any) -> int:
    if isinstance(encoded, list):  # a video's segments
        return sum(len(segment.span) for segment in encoded)
    return len(encoded)


class MediaCache:
    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._parts: OrderedDict[tuple, Part] = OrderedDict()
        self._spans: OrderedDict[int, tuple[Part, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.hits = {"part": 0, "span": 0}
        self.misses = {"part": 0, "span": 0}

    @staticmethod
    def key(data: bytes | None, uuid: str | None, settings: tuple) -> tuple:
        if uuid is not None:
            return ("uuid", uuid, *settings)
        return ("sha256", hashlib.sha256(data or b"").hexdigest(), *settings)

    def part(self, key: tuple) -> Part | None:
        with self._lock:
            part = self._parts.get(key)
            if part is not None:
                self._parts.move_to_end(key)
                self.hits["part"] += 1
            else:
                self.misses["part"] += 1
            return part

    def put_part(self, key: tuple, part: Part) -> None:
        if self.max_items == 0:
            return
        with self._lock:
            self._parts[key] = part
            self._parts.move_to_end(key)
            while len(self._parts) > self.max_items:
                self._parts.popitem(last=False)

    def get_or_encode(self, part: Part, encode: Callable[[], Any]) -> Any:
        """The tokenizer's hook (:class:`polymodal.tokenizers.document.SpanCache`)."""
        with self._lock:
            found = self._spans.get(id(part))
            if found is not None and found[0] is part:
                self._spans.move_to_end(id(part))
                self.hits["span"] += 1
                tally = getattr(self._local, "tally", None)
                if tally is not None:
                    tally[0] += _tokens(found[1])
                return found[1]
            self.misses["span"] += 1
        encoded = encode()
        if self.max_items:
            with self._lock:
                self._spans[id(part)] = (part, encoded)  # holding the part keeps its id unique
                while len(self._spans) > self.max_items:
                    self._spans.popitem(last=False)
        return encoded

    @contextmanager
    def tally(self) -> Iterator[list[int]]:
        """``[tokens]`` served from the cache by encodes on this thread inside the block."""
        self._local.tally = counted = [0]
        try:
            yield counted
        finally:
            self._local.tally = None
