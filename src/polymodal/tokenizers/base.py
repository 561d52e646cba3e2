"""The protocol every modality tokenizer implements, and the span of tokens it produces.

A modality tokenizer turns one :mod:`polymodal.content` part into a :class:`TokenSpan` of *local*
ids (``0 .. vocab_size-1``) and back. It does not know the unified vocabulary, the special tokens
or positions: :class:`~polymodal.tokenizers.document.DocumentTokenizer` shifts its ids into the
modality's range, wraps them in delimiters and places them with the span's :class:`Layout`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from polymodal import positions as P


@dataclass(frozen=True)
class Sequential:
    """Tokens on consecutive 1-D positions (text)."""

    def positions(self, start: int, length: int, time_units_per_second: float) -> torch.Tensor:
        return P.text_positions(start, length)


@dataclass(frozen=True)
class Grid:
    """An image's codes in row-major order on a ``height`` × ``width`` grid."""

    height: int
    width: int

    def positions(self, start: int, length: int, time_units_per_second: float) -> torch.Tensor:
        if length != self.height * self.width:
            raise ValueError(f"a {self.height}x{self.width} grid holds {self.height * self.width} codes, got {length}")
        return P.image_positions(start, self.height, self.width)


@dataclass(frozen=True)
class Timed:
    """A stream of codes at a fixed rate (audio): token i sits at i / tokens_per_second seconds."""

    tokens_per_second: float

    def positions(self, start: int, length: int, time_units_per_second: float) -> torch.Tensor:
        return P.audio_positions(start, length, self.tokens_per_second, time_units_per_second)


Layout = Sequential | Grid | Timed


@dataclass(frozen=True)
class TokenSpan:
    """The local ids one tokenizer produced for one part, and how they are laid out in space/time."""

    modality: str
    ids: torch.Tensor
    layout: Layout

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", torch.as_tensor(self.ids, dtype=torch.long).reshape(-1))

    def __len__(self) -> int:
        return int(self.ids.numel())


@runtime_checkable
class ModalityTokenizer(Protocol):
    """What the document tokenizer needs from a modality tokenizer.

    Implementations also provide a ``train(...)`` classmethod; its arguments differ by modality.
    """

    name: ClassVar[str]  # registry name, e.g. "text-bpe"
    modality: ClassVar[str]  # the vocabulary range it fills, e.g. "text"

    @property
    def vocab_size(self) -> int: ...

    def encode(self, part: Any) -> TokenSpan: ...

    def decode(self, span: TokenSpan) -> Any: ...

    def save(self, directory: str | os.PathLike) -> None: ...

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ModalityTokenizer: ...
