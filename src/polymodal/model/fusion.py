"""The late-fusion rival: a text backbone that reads media through gated cross-attention.

The native model puts media codes in the token stream. Late fusion (Flamingo-style) keeps them
out: a bidirectional *media encoder* turns each document's media codes into features, and before
every ``cross_every``-th block of the text backbone a gated cross-attention layer lets each text
token read the features of the media that came before it. The gate is ``tanh(g)`` with ``g = 0``
at the start, so an imported or pretrained text backbone starts out computing exactly what it
did alone. It reads media and writes text only.

Data enters as the same interleaved :class:`TokenSequence`\\ s the native model reads:
:func:`split_for_late_fusion` turns one into the text stream (media codes removed, delimiters kept),
the media stream, and for every text token how many media tokens precede it;
:func:`late_fusion_batch` does it for a batch (prompts for generation, packed rows for training)
and gives the :class:`MediaInputs` that :meth:`LateFusion.forward` takes beside the text stream.
With a KV cache, the media are encoded once at the first call and kept in the cache.

Shape legend as in ``transformer.py``; M = media tokens, E = encoder width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import ConfigError
from polymodal.model.config import ModelConfig, preset
from polymodal.model.transformer import Block, KVCache, MultiAxisRotary, RMSNorm, Transformer
from polymodal.tokenizers.sequence import TokenBatch, TokenSequence, pad_batch
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

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LateFusionConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"late fusion config: unknown keys {sorted(unknown)}")
        for key in ("text", "encoder"):
            if not isinstance(data.get(key), dict):
                raise ConfigError(f"late fusion config: {key!r} must be a model config object")
        text, encoder = ModelConfig.from_dict(data["text"]), ModelConfig.from_dict(data["encoder"])
        return cls(**{**data, "text": text, "encoder": encoder})


def late_preset(
    name: str, vocab_size: int, *, encoder_layers: int | None = None, cross_every: int = 2,
    freeze_encoder: bool = False, **overrides,
) -> LateFusionConfig:  # fmt: skip
    """A late-fusion model of the same width as the native preset ``name``: its backbone is that preset
    and its media encoder has the same width with half the layers (``encoder_layers`` to change)."""
    text = preset(name, vocab_size, **overrides)
    layers = encoder_layers if encoder_layers is not None else max(1, text.n_layers // 2)
    encoder = text.with_(n_layers=layers, modality_experts=False)
    return LateFusionConfig(text=text, encoder=encoder, cross_every=cross_every, freeze_encoder=freeze_encoder)


# -- splitting interleaved sequences ------------------------------------------------------------------


def _media_mask(modality: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    codes = [vocab.modality_index(m) for m in MEDIA_MODALITIES if vocab.has_modality(m)]
    return torch.isin(modality, torch.tensor(codes, dtype=modality.dtype, device=modality.device))


def split_for_late_fusion(seq: TokenSequence, vocab: Vocabulary) -> tuple[TokenSequence, TokenSequence, torch.Tensor]:
    """(text stream, media stream, media tokens visible to each text token) of one document."""
    is_media = _media_mask(seq.modality, vocab)
    keep = ~is_media
    text = TokenSequence(seq.ids[keep], seq.modality[keep], seq.positions[keep], seq.loss_weight[keep])
    media = TokenSequence(
        seq.ids[is_media], seq.modality[is_media], seq.positions[is_media], torch.zeros(int(is_media.sum()))
    )
    visible = torch.cumsum(is_media.long(), dim=0)[keep]
    return text, media, visible


@dataclass(frozen=True)
class MediaInputs:
    """The media stream of a batch, beside its text stream (legend: L text tokens, M media tokens)."""

    ids: torch.Tensor  # [B, M]
    positions: torch.Tensor  # [B, M, 3]
    valid: torch.Tensor  # [B, M]: real media tokens (False on padding)
    visible: torch.Tensor  # [B, L]: how many of the row's media tokens (a prefix) each text token may read
    document_ids: torch.Tensor | None = None  # [B, M] in packed rows: media only serve their own document

    def to(self, device: torch.device | str) -> MediaInputs:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return MediaInputs(*(move(t) for t in (self.ids, self.positions, self.valid, self.visible, self.document_ids)))

    def readable(self, text_document_ids_BL: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, M]``: may text token i read media token j (it came earlier, in the same document)."""
        slot = torch.arange(self.ids.shape[1], device=self.ids.device)
        reads = self.valid[:, None, :] & (slot[None, None, :] < self.visible[:, :, None])
        if self.document_ids is not None and text_document_ids_BL is not None:
            reads &= self.document_ids[:, None, :] == text_document_ids_BL[:, :, None]
        return reads


def late_fusion_batch(
    sequences: Sequence[TokenSequence],
    vocab: Vocabulary,
    *,
    side: Literal["right", "left"] = "right",
    document_ids: Sequence[torch.Tensor] | None = None,
) -> tuple[TokenBatch, MediaInputs, torch.Tensor | None]:
    """Split interleaved sequences into a padded text batch, its :class:`MediaInputs`, and (for packed
    rows, given ``document_ids`` per sequence) the text tokens' document ids ``[B, L]`` (-1 on padding)."""
    splits = [split_for_late_fusion(s, vocab) for s in sequences]
    text = pad_batch([t for t, _, _ in splits], vocab.pad_id, side=side)
    media = pad_batch([m for _, m, _ in splits], vocab.pad_id, side="right")
    B, L = text.ids.shape
    visible = torch.zeros(B, L, dtype=torch.long)
    text_docs = torch.full((B, L), -1, dtype=torch.long) if document_ids is not None else None
    media_docs = torch.full(media.ids.shape, -1, dtype=torch.long) if document_ids is not None else None
    for row, (seq, (t, _, seen)) in enumerate(zip(sequences, splits, strict=True)):
        cols = slice(0, len(t)) if side == "right" else slice(L - len(t), L)
        visible[row, cols] = seen
        if document_ids is not None:
            is_media = _media_mask(seq.modality, vocab)
            text_docs[row, cols] = document_ids[row][~is_media]
            media_docs[row, : int(is_media.sum())] = document_ids[row][is_media]
    inputs = MediaInputs(media.ids, media.positions, media.attention_mask, visible, media_docs)
    return text, inputs, text_docs


# -- the model ----------------------------------------------------------------------------------------


class GatedCrossAttention(nn.Module):
    """``x + tanh(gate) · CrossAttention(norm(x), media)``; a learned null slot is always readable."""

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

    def forward(self, x_BLD: torch.Tensor, media_BME: torch.Tensor, reads_BLM: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        media = torch.cat([self.null.expand(B, 1, -1), media_BME], dim=1)
        M = media.shape[1]
        q = self.wq(self.norm(x_BLD)).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(media).view(B, M, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.wv(media).view(B, M, self.n_heads, self.head_dim).transpose(1, 2)
        null = torch.ones(B, L, 1, dtype=torch.bool, device=x_BLD.device)
        mask = torch.cat([null, reads_BLM], dim=2).unsqueeze(1)
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

    def forward(self, ids_BM: torch.Tensor, positions_BM3: torch.Tensor, valid_BM: torch.Tensor,
                document_ids_BM: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        cos, sin = self.rotary(positions_BM3)
        M = ids_BM.shape[1]
        # every media token sees every real media token of its document (itself always, so padding rows stay finite)
        sees = valid_BM[:, None, :].expand(-1, M, -1)
        if document_ids_BM is not None:
            sees = sees & (document_ids_BM[:, :, None] == document_ids_BM[:, None, :])
        mask = (sees | torch.eye(M, dtype=torch.bool, device=ids_BM.device)[None]).unsqueeze(1)
        x = self.embed(ids_BM)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, None, index, None)
        return self.norm(x)


class LateFusionCache(KVCache):
    """The backbone's KV cache plus the media features, encoded once at the first call."""

    media_features: torch.Tensor | None = None
    media_valid: torch.Tensor | None = None


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

    def new_cache(self, batch_size: int, max_len: int | None = None, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> LateFusionCache:  # fmt: skip
        return LateFusionCache(self.config.text, batch_size, max_len, device=device, dtype=dtype)

    def forward(
        self,
        ids_BL: torch.Tensor,
        positions_BL3: torch.Tensor,
        modality_BL: torch.Tensor | None = None,
        attention_mask_BL: torch.Tensor | None = None,
        cache: LateFusionCache | None = None,
        document_ids_BL: torch.Tensor | None = None,
        *,
        media: MediaInputs | None = None,
    ) -> torch.Tensor:
        """Text logits ``[B, L, V]`` for the text stream, as :meth:`Transformer.forward` with ``media``.

        With a cache, ``media`` is given at the first call only: later tokens read all of it.
        """
        backbone = self.backbone
        B, L = ids_BL.shape
        if cache is not None and cache.length > 0:
            if media is not None:
                raise ValueError("late fusion reads the media once, at the first call with a cache")
            features = cache.media_features
            reads = cache.media_valid[:, None, :].expand(B, L, -1)
        else:
            if media is None:
                raise ValueError("late fusion needs the media stream: build the inputs with late_fusion_batch")
            features = self.encoder(media.ids, media.positions, media.valid, media.document_ids)
            reads = media.readable(document_ids_BL)
            if cache is not None:
                cache.media_features, cache.media_valid = features, media.valid
        cos, sin = backbone.rotary(positions_BL3)
        masks = backbone.attention_masks(B, L, attention_mask_BL, cache, ids_BL.device, document_ids_BL)
        x = backbone.embed_inputs(ids_BL, positions_BL3)
        for index, layer in enumerate(backbone.layers):
            if str(index) in self.cross:
                x = self.cross[str(index)](x, features, reads)
            x = layer(x, cos, sin, masks[index], cache, index, modality_BL)
        if cache is not None:
            cache.length += L
        return backbone.logits(x)
