"""TokenSequence: what every model, trainer and generator in polymodal reads.

One sequence is four aligned tensors (legend: N = tokens, B = batch, L = padded length):

* ``ids[N]``         global ids in the unified vocabulary
* ``modality[N]``    the modality index of each id (0 = special; see ``Vocabulary.modalities``)
* ``positions[N,3]`` the (t, h, w) rotary indices of :mod:`polymodal.positions`
* ``loss_weight[N]`` how much predicting token i counts in the loss (0 = context only)

This module knows nothing about tokenizers or the vocabulary's layout; it stores and batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class TokenSequence:
    ids: torch.Tensor
    modality: torch.Tensor
    positions: torch.Tensor
    loss_weight: torch.Tensor

    def __post_init__(self) -> None:
        n = self.ids.shape[0] if self.ids.dim() == 1 else -1
        if (
            self.ids.dim() != 1
            or self.modality.shape != (n,)
            or self.positions.shape != (n, 3)
            or self.loss_weight.shape != (n,)
        ):
            raise ValueError(
                "TokenSequence needs ids[N], modality[N], positions[N,3], loss_weight[N]; got "
                f"{tuple(self.ids.shape)}, {tuple(self.modality.shape)}, "
                f"{tuple(self.positions.shape)}, {tuple(self.loss_weight.shape)}"
            )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: slice) -> TokenSequence:
        if not isinstance(index, slice):
            raise TypeError("TokenSequence supports slicing only (seq[a:b])")
        return TokenSequence(self.ids[index], self.modality[index], self.positions[index], self.loss_weight[index])

    @classmethod
    def empty(cls) -> TokenSequence:
        return cls(
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, 3, dtype=torch.long),
            torch.empty(0, dtype=torch.float32),
        )

    @classmethod
    def cat(cls, sequences: Sequence[TokenSequence]) -> TokenSequence:
        if not sequences:
            return cls.empty()
        return cls(
            torch.cat([s.ids for s in sequences]),
            torch.cat([s.modality for s in sequences]),
            torch.cat([s.positions for s in sequences]),
            torch.cat([s.loss_weight for s in sequences]),
        )


@dataclass(frozen=True)
class TokenBatch:
    """Sequences padded to one length ``L``; ``attention_mask[B, L]`` is True on real tokens."""

    ids: torch.Tensor
    modality: torch.Tensor
    positions: torch.Tensor
    loss_weight: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            *(t.to(device) for t in (self.ids, self.modality, self.positions, self.loss_weight, self.attention_mask))
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def pad_batch(
    sequences: Sequence[TokenSequence],
    pad_id: int,
    *,
    side: Literal["right", "left"] = "right",
    pad_to_multiple_of: int | None = None,
) -> TokenBatch:
    """Stack sequences into a batch, padding with ``pad_id``.

    Right padding is for training; left padding puts every prompt's last token in the same column
    for batched generation. Padding never changes a real token's position: padded slots get
    position 0, modality 0 (special) and loss weight 0, and are masked out.
    """
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    length = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(sequences)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    modality = torch.zeros(batch, length, dtype=torch.long)
    positions = torch.zeros(batch, length, 3, dtype=torch.long)
    loss_weight = torch.zeros(batch, length, dtype=torch.float32)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row, seq in enumerate(sequences):
        n = len(seq)
        cols = slice(0, n) if side == "right" else slice(length - n, length)
        ids[row, cols] = seq.ids
        modality[row, cols] = seq.modality
        positions[row, cols] = seq.positions
        loss_weight[row, cols] = seq.loss_weight
        mask[row, cols] = True
    return TokenBatch(ids, modality, positions, loss_weight, mask)
