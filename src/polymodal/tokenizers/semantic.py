"""A semantic objective for the media tokenizers: codes that say what the picture or the sound holds.

Reconstruction alone gives codes that carry pixels, not meaning: colour and shape survive the
tokenizer (its decoder gets them back) but in a form a model must first learn to decode (see
``docs/perception.md``). The field's answer (VILA-U, UniTok, QLIP) is to train the tokenizer with a
semantic objective beside reconstruction, on one codebook, so that the same codes still draw and
speak. Ours is the lightest such objective that works from captions alone (a user's captions folder,
or shapes world's): every code cell predicts, through a small per-cell head, which words of its
caption it shows, and the picture's prediction is the soft maximum over its cells (a word is in the
picture when some cell shows it). The head reads the *quantized* latents, so what it learns to read
is what the codes hold; it is dropped after training.

This module knows nothing of pixels or audio: latents are ``[B, D, *cells]``, captions are text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import ConfigError

_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class CaptionWords:
    """The words a semantic head predicts: every word in at least ``min_count`` captions and in at
    most ``max_share`` of them (words in nearly every caption, "a", "the", carry nothing), the most
    frequent ``max_words`` first."""

    def __init__(self, captions: Sequence[str], *, min_count: int = 3, max_share: float = 0.5,
                 max_words: int = 512) -> None:  # fmt: skip
        if not captions:
            raise ConfigError("the semantic objective needs captions (one per training example)")
        documents = Counter(w for text in captions for w in set(words_of(text)))
        limit = max_share * len(captions)
        kept = [w for w, n in documents.most_common() if min_count <= n <= limit][:max_words]
        if not kept:
            raise ConfigError(
                f"no caption word is in at least {min_count} and at most {max_share:.0%} of the {len(captions)} "
                "captions: the semantic objective has nothing to learn from them"
            )
        self.words = tuple(kept)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def targets(self, captions: Sequence[str]) -> torch.Tensor:
        """``[B, words]``: 1 where the caption holds the word."""
        out = torch.zeros(len(captions), len(self.words))
        for row, text in enumerate(captions):
            hits = [self.index[w] for w in words_of(text) if w in self.index]
            out[row, hits] = 1.0
        return out


class SemanticHead(nn.Module):
    """Quantized latents ``[B, D, *cells]`` → word logits ``[B, words]``: a one-hidden-layer perceptron per
    cell (a 1×1 convolution), then a soft maximum over the cells."""

    def __init__(self, latent_dim: int, words: int, hidden: int = 64) -> None:
        super().__init__()
        self.cell = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, words))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        cells = latents.flatten(2).transpose(1, 2)  # [B, cells, D]
        logits = self.cell(cells)  # [B, cells, words]
        return torch.logsumexp(logits, dim=1) - math.log(cells.shape[1])


def semantic_loss(head: SemanticHead, latents: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of every word's presence, averaged over words and examples."""
    return F.binary_cross_entropy_with_logits(head(latents), targets.to(latents.device))


__all__ = ["CaptionWords", "SemanticHead", "semantic_loss", "words_of"]
