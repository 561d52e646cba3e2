"""Finite-scalar quantization (FSQ), shared by the image and audio tokenizers.

FSQ rounds each of a few latent channels to a small fixed number of levels; the code of a
position is the mixed-radix number formed by its rounded channels, so the codebook is the product
of the levels (``(8, 5, 5, 5)`` → 1,000 codes) with no learned codebook, no commitment loss and no
dead codes. The arithmetic comes from ``vector-quantize-pytorch``; this wrapper pins the small
interface the tokenizers rely on, so a change in that library touches only this file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from vector_quantize_pytorch import FSQ


class FSQuantizer(nn.Module):
    """Quantize ``dim`` latent channels to ``prod(levels)`` codes, channel-first (``[B, dim, ...]``)."""

    def __init__(self, levels: Sequence[int], dim: int) -> None:
        super().__init__()
        if not levels or any(int(level) < 2 for level in levels):
            raise ValueError(f"FSQ levels must all be >= 2, got {list(levels)}")
        self.levels = tuple(int(level) for level in levels)
        self.dim = dim
        # channel_first: our encoders are convolutional and emit [B, C, H, W] / [B, C, T].
        self.fsq = FSQ(levels=list(self.levels), dim=dim, channel_first=True)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the quantized latents (straight-through gradients) and their integer codes."""
        quantized, codes = self.fsq(z)
        return quantized, codes.long()

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Latents for integer codes ``[B, ...]`` → ``[B, dim, ...]`` (channel-first)."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must be in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        return self.fsq.indices_to_codes(codes.long())
