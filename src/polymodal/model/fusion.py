"""The late-fusion rival: a text backbone that reads media through gated cross-attention.

The native model puts media codes in the token stream. Late fusion (Flamingo-style) keeps them
out: a bidirectional *media encoder* turns each document's media codes into features, and before
every ``cross_every``-th block of the text backbone a gated cross-attention layer lets each text
token read the features of the media that came before it. The gate is ``tanh(g)`` with ``g = 0``
at the start, so an imported or pretrained text backbone starts out computing exactly what it
did alone. It reads media and writes text only.

:func:`split_for_late_fusion` turns one interleaved :class:`TokenSequence` into the text stream
(media codes removed, delimiters kept), the media stream, and for every text token how many media
tokens precede it. Shape legend as in ``transformer.py``; M = media tokens, E = encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import ConfigError
from polymodal.model.config import ModelConfig
from polymodal.model.transformer import Block, MultiAxisRotary, RMSNorm, Transformer
from polymodal.tokenizers.sequence import TokenSequence
from polymodal.vocab import Vocabulary

MEDIA_MODALITIES = ("image", "audio")


@dataclass(frozen=True, kw_only=True)
class LateFusionConfig:
    text: ModelConfig  # the backbone; its vocabulary is the unified one
    encoder: ModelConfig  # width, depth and heads of the media encoder (same vocabulary)
    cross_every: int = 2  # a gated cross-attention before every k-th backbone block
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        if self.cross_every < 1:
            raise ConfigError(f"late fusion: cross_every must be >= 1, got {self.cross_every}")
        if self.encoder.vocab_size != self.text.vocab_size:
            raise ConfigError("late fusion: the encoder and the backbone must share the vocabulary")


def split_for_late_fusion(seq: TokenSequence, vocab: Vocabulary) -> tuple[TokenSequence, TokenSequence, torch.Tensor]:
    """(text stream, media stream, media tokens visible to each text token) of one document."""
    media_codes = [vocab.modality_index(m) for m in MEDIA_MODALITIES if vocab.has_modality(m)]
    is_media = torch.isin(seq.modality, torch.tensor(media_codes, dtype=torch.long))
    keep = ~is_media
    text = TokenSequence(seq.ids[keep], seq.modality[keep], seq.positions[keep], seq.loss_weight[keep])
    media = TokenSequence(
        seq.ids[is_media], seq.modality[is_media], seq.positions[is_media], torch.zeros(int(is_media.sum()))
    )
    visible = torch.cumsum(is_media.long(), dim=0)[keep]
    return text, media, visible


class GatedCrossAttention(nn.Module):
    """``x + tanh(gate) · CrossAttention(norm(x), media)``; a learned null slot is always visible."""

    def __init__(self, dim: int, encoder_dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.norm = RMSNorm(dim, 1e-5)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(encoder_dim, dim, bias=False)
        self.wv = nn.Linear(encoder_dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.null = nn.Parameter(torch.zeros(1, 1, encoder_dim))  # what a token with no media reads
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x_BLD: torch.Tensor, media_BME: torch.Tensor, visible_BL: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        media = torch.cat([self.null.expand(B, 1, -1), media_BME], dim=1)
        M = media.shape[1]
        q = self.wq(self.norm(x_BLD)).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(media).view(B, M, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.wv(media).view(B, M, self.n_heads, self.head_dim).transpose(1, 2)
        slot = torch.arange(M, device=x_BLD.device)
        mask = (slot[None, None, :] <= visible_BL[:, :, None]).unsqueeze(1)  # slot 0 is the null
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x_BLD + torch.tanh(self.gate) * self.wo(out.transpose(1, 2).reshape(B, L, D))


class MediaEncoder(nn.Module):
    """Bidirectional transformer over a document's media codes, with their (t, h, w) positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config.with_(modality_experts=False)) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.rotary = MultiAxisRotary(config.head_dim, config.rope_theta, config.sections)

    def forward(self, ids_BM: torch.Tensor, positions_BM3: torch.Tensor, valid_BM: torch.Tensor) -> torch.Tensor:
        cos, sin = self.rotary(positions_BM3)
        M = ids_BM.shape[1]
        # every media token sees every real media token of its document (itself always, so padding rows stay finite)
        mask = (valid_BM[:, None, :] | torch.eye(M, dtype=torch.bool, device=ids_BM.device)[None]).unsqueeze(1)
        x = self.embed(ids_BM)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, None, index, None)
        return self.norm(x)


class LateFusion(nn.Module):
    def __init__(self, config: LateFusionConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Transformer(config.text)
        self.encoder = MediaEncoder(config.encoder)
        layers = range(0, config.text.n_layers, config.cross_every)
        self.cross = nn.ModuleDict(
            {str(i): GatedCrossAttention(config.text.dim, config.encoder.dim, config.text.n_heads) for i in layers}
        )
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward(
        self,
        ids_BL: torch.Tensor,
        positions_BL3: torch.Tensor,
        visible_BL: torch.Tensor,
        media_ids_BM: torch.Tensor,
        media_positions_BM3: torch.Tensor,
        media_valid_BM: torch.Tensor,
        attention_mask_BL: torch.Tensor | None = None,
        modality_BL: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text logits ``[B, L, V]``; ``visible_BL[b, i]``: media tokens of row b that token i may read."""
        media = self.encoder(media_ids_BM, media_positions_BM3, media_valid_BM)
        backbone = self.backbone
        B, L = ids_BL.shape
        cos, sin = backbone.rotary(positions_BL3)
        mask = backbone.causal_mask(B, L, attention_mask_BL, None, ids_BL.device)
        x = backbone.embed(ids_BL)
        for index, layer in enumerate(backbone.layers):
            if str(index) in self.cross:
                x = self.cross[str(index)](x, media, visible_BL)
            x = layer(x, cos, sin, mask, None, index, modality_BL)
        return backbone.logits(x)
