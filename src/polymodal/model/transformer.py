"""The native multimodal transformer: one Llama-shaped decoder over the unified vocabulary.

RMSNorm, SwiGLU feed-forward (optionally one per modality), grouped-query attention through
``scaled_dot_product_attention`` (FlashAttention on GPU, a math kernel on CPU), the time-aligned
3-axis rotary embedding of DESIGN.md, optional tied embeddings, one head over the whole vocabulary,
a preallocated KV cache for decoding, and optional sliding-window attention (local layers, with
every n-th layer global), computed in blocks so that memory grows with length × window, not length².

Written for one device: data/model parallelism and compilation are applied from outside
(``train/parallelize.py``). It sees only ids, modalities and positions — no tokenizer, no media.

Shape legend: B batch, L new tokens, S cached + new tokens, D model width, N query heads,
K key/value heads, H head dim, V vocabulary, M modalities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # the statistics in fp32 whatever the compute dtype
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def interleave_axes(sections: tuple[int, int, int]) -> torch.Tensor:
    """Which axis (0 = t, 1 = h, 2 = w) drives each frequency pair, spread evenly over the spectrum.

    Giving each axis a contiguous block of pairs (as Qwen2-VL's M-RoPE does) leaves the last axis
    only the slowest frequencies, which barely tell neighbouring columns apart; interleaving gives
    every axis fast and slow frequencies alike (as Qwen3-VL's interleaved M-RoPE does).
    """
    total = sum(sections)
    used = [0, 0, 0]
    axis = []
    for i in range(total):
        # the axis furthest behind its share of the pairs so far
        lag = [sections[a] * (i + 1) / total - used[a] if used[a] < sections[a] else float("-inf") for a in range(3)]
        chosen = max(range(3), key=lambda a: lag[a])
        used[chosen] += 1
        axis.append(chosen)
    return torch.tensor(axis, dtype=torch.long)


class MultiAxisRotary(nn.Module):
    """Rotary embedding whose frequency pairs are shared out between the t, h and w position axes.

    Pair i keeps its standard frequency ``theta^(-2i/H)`` but turns with the position of the axis
    it is given (:func:`interleave_axes`); where t = h = w (text) this is exactly 1-D RoPE, which is
    why a pretrained Llama's weights work unchanged on text.
    """

    def __init__(self, head_dim: int, theta: float, sections: tuple[int, int, int]) -> None:
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        axis = interleave_axes(sections)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.register_buffer("axis", axis, persistent=False)

    def forward(self, positions_BL3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[B, 1, L, H]`` for positions ``[B, L, 3]``."""
        pos_BLP = positions_BL3.float()[..., self.axis]  # the axis that drives each pair
        freqs = pos_BLP * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x_BNLH: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x_BNLH * cos + rotate_half(x_BNLH) * sin).type_as(x_BNLH)


class KVCache:
    """Preallocated keys and values of every layer, plus which cached slots are real (not padding)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        self.max_len = max_len or config.max_seq_len
        shape = (batch_size, config.n_kv_heads, self.max_len, config.head_dim)
        # One tensor per layer, not one stacked tensor: a compiled decode step then writes each in place
        # (a write into a view of one big input can be compiled as a copy of all of it).
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.valid = torch.zeros(batch_size, self.max_len, device=device, dtype=torch.bool)
        self.length = 0
        # How many slots a decode step reads (None: all). Eager callers set it to the slots in use, so
        # that attention skips the empty tail; compiled ones leave None, so that no shape changes.
        self.visible: int | None = None
        self.in_use = False  # held by a generation in progress (see polymodal.generation)

    def write(self, layer: int, k_BKLH: torch.Tensor, v_BKLH: torch.Tensor,
              slot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Store this step's keys/values after the cached ones; return all of them ``[B, K, S, H]``.

        With ``slot`` (a one-element tensor: where one new token goes) the write is in place at that
        slot and the first ``visible`` slots come back (all of them when ``visible`` is None: shapes
        that never change, for a compiled :meth:`Transformer.decode_step`); the mask hides the slots
        not yet written."""
        if slot is not None:
            self.k[layer].index_copy_(2, slot, k_BKLH)
            self.v[layer].index_copy_(2, slot, v_BKLH)
            return self.k[layer][:, :, : self.visible], self.v[layer][:, :, : self.visible]
        end = self.length + k_BKLH.shape[2]
        self.k[layer][:, :, self.length : end] = k_BKLH
        self.v[layer][:, :, self.length : end] = v_BKLH
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


@dataclass
class BandedMask:
    """Sliding-window attention over a whole sequence (no cache): each query sees the ``window`` keys
    ending at itself, of its own document (``document_ids_BL``) and real (``keys_valid_BL``)."""

    window: int
    keys_valid_BL: torch.Tensor | None = None
    document_ids_BL: torch.Tensor | None = None


def banded_attention(q_BNLH: torch.Tensor, k_BKLH: torch.Tensor, v_BKLH: torch.Tensor,
                     mask: BandedMask) -> torch.Tensor:  # fmt: skip
    """Sliding-window causal attention in blocks of ``window`` queries, each against the ``2 · window``
    keys that can reach it: the scores of one block are ``[window, 2 · window]``, so memory and time
    grow as ``L · window`` instead of ``L²``. Equal to SDPA under the dense banded mask."""
    B, N, L, H = q_BNLH.shape
    K, W = k_BKLH.shape[1], mask.window
    blocks = -(-L // W)
    tail = blocks * W - L
    q = F.pad(q_BNLH, (0, 0, 0, tail)).view(B, N, blocks, W, H).transpose(1, 2).reshape(B * blocks, N, W, H)

    def key_blocks(t_BKLH: torch.Tensor) -> torch.Tensor:  # block i holds keys i·W − W … i·W + W − 1
        t = F.pad(t_BKLH, (0, 0, W, tail)).unfold(2, 2 * W, W)  # [B, K, blocks, H, 2W]
        return t.permute(0, 2, 1, 4, 3).reshape(B * blocks, K, 2 * W, H)

    device = q_BNLH.device
    offset = torch.arange(2 * W, device=device)
    row = torch.arange(W, device=device)
    band = (offset[None, :] > row[:, None]) & (offset[None, :] <= row[:, None] + W)  # [W, 2W]: distance 0 … W−1
    real = torch.ones(B, L, dtype=torch.bool, device=device) if mask.keys_valid_BL is None else mask.keys_valid_BL
    keys_real = F.pad(real, (W, tail), value=False).unfold(1, 2 * W, W)  # [B, blocks, 2W]
    allowed = band[None, None] & keys_real[:, :, None, :]  # [B, blocks, W, 2W]
    if mask.document_ids_BL is not None:
        docs_k = F.pad(mask.document_ids_BL, (W, tail), value=-1).unfold(1, 2 * W, W)
        docs_q = F.pad(mask.document_ids_BL, (0, tail), value=-1).view(B, blocks, W)
        allowed &= docs_q[..., :, None] == docs_k[..., None, :]
    allowed[..., row, row + W] = True  # every query sees itself: padding rows stay finite
    out = F.scaled_dot_product_attention(
        q, key_blocks(k_BKLH), key_blocks(v_BKLH), attn_mask=allowed.view(B * blocks, 1, W, 2 * W),
        enable_gqa=N != K,
    )  # fmt: skip
    return out.view(B, blocks, N, W, H).transpose(1, 2).reshape(B, N, blocks * W, H)[:, :, :L]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x_BLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | BandedMask | None, cache: KVCache | None, layer: int,
                slot: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        B, L, _ = x_BLD.shape
        q, k = self.queries_keys(x_BLD, cos, sin)
        v = self.wv(x_BLD).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.write(layer, k, v, slot)
        if isinstance(mask, BandedMask):
            out = banded_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.n_heads != self.n_kv_heads
            )
        return self.wo(out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))

    def queries_keys(self, x_BLD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rotated queries ``[B, N, L, H]`` and keys ``[B, K, L, H]`` of ``x_BLD``."""
        B, L, _ = x_BLD.shape
        q = self.wq(x_BLD).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x_BLD).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


class ScaledEmbedding(nn.Embedding):
    """An embedding table whose rows are multiplied by ``scale`` on the way in (the table itself, which a
    tied head reads, is not scaled)."""

    def __init__(self, num_embeddings: int, dim: int, scale: float = 1.0) -> None:
        super().__init__(num_embeddings, dim)
        self.scale = scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = super().forward(ids)
        return x if self.scale == 1.0 else x * self.scale


class GridEmbedding(nn.Module):
    """Learned row and column vectors for the codes of image grids, read from their positions.

    A code in row r, column c of a grid sits at ``h = t + r``, ``w = t + c`` (:mod:`polymodal.positions`);
    text, audio and every grid's first code have ``h = w = t`` and get nothing added (row and column 0
    are held at zero). Rows and columns past the table's size share its last vector.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.zeros(size, dim))
        self.cols = nn.Parameter(torch.zeros(size, dim))

    def forward(self, positions_BL3: torch.Tensor) -> torch.Tensor:
        t, h, w = positions_BL3.unbind(-1)
        last = self.rows.shape[0] - 1
        rows, cols = (h - t).clamp(0, last), (w - t).clamp(0, last)
        return F.embedding(rows, self.rows, padding_idx=0) + F.embedding(cols, self.cols, padding_idx=0)

    def zero_origin(self) -> None:
        with torch.no_grad():
            self.rows[0].zero_()
            self.cols[0].zero_()


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ModalityExperts(nn.Module):
    """One feed-forward per modality, chosen by each token's modality: hard routing, no balancing loss."""

    def __init__(self, dim: int, hidden: int, num_modalities: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(FeedForward(dim, hidden) for _ in range(num_modalities))

    def forward(self, x_BLD: torch.Tensor, modality_BL: torch.Tensor) -> torch.Tensor:
        if x_BLD.shape[1] == 1 and torch.compiler.is_compiling():
            # A compiled decode step (one token per row): every expert on every row, then each row's
            # pick. No shape depends on the data, so the step compiles and becomes one CUDA graph; eager
            # decoding takes the path below, where each row costs one expert, not all of them.
            every = torch.stack([expert(x_BLD) for expert in self.experts])  # [E, B, 1, D]
            pick = modality_BL.view(1, -1, 1, 1).expand(1, *x_BLD.shape)
            return every.gather(0, pick).squeeze(0)
        out = torch.zeros_like(x_BLD)
        for index, expert in enumerate(self.experts):
            # Also with no token of this modality: every expert then gets a (zero) gradient, which data
            # parallelism needs, and there is no host sync to ask whether the modality is present.
            chosen = modality_BL == index
            out[chosen] = expert(x_BLD[chosen])
        return out


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        if config.modality_experts:
            self.ffn: nn.Module = ModalityExperts(config.dim, config.ffn_dim, config.num_modalities)
        else:
            self.ffn = FeedForward(config.dim, config.ffn_dim)

    def forward(self, x, cos, sin, mask, cache, layer, modality, slot=None):  # noqa: ANN001 (see Transformer.forward)
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer, slot)
        h = self.ffn_norm(x)
        return x + (self.ffn(h, modality) if isinstance(self.ffn, ModalityExperts) else self.ffn(h))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = ScaledEmbedding(config.vocab_size, config.dim, config.embed_scale)
        self.grid = GridEmbedding(config.grid_embeddings, config.dim) if config.grid_embeddings else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rotary = MultiAxisRotary(config.head_dim, config.rope_theta, config.sections)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) everywhere; residual output projections scaled down by sqrt(2 · layers) (GPT-2)."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)  # RMSNorm gains
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, std=0.02)
        if self.grid is not None:
            self.grid.zero_origin()

    def new_cache(self, batch_size: int, max_len: int | None = None, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> KVCache:  # fmt: skip
        """An empty KV cache for decoding ``batch_size`` rows of up to ``max_len`` tokens."""
        return KVCache(self.config, batch_size, max_len, device=device, dtype=dtype)

    def embed_inputs(self, ids_BL: torch.Tensor, positions_BL3: torch.Tensor) -> torch.Tensor:
        """The input vectors ``[B, L, D]``: each token's embedding, plus its grid cell's with ``grid_embeddings``."""
        x = self.embed(ids_BL)
        return x if self.grid is None else x + self.grid(positions_BL3)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if exclude_embeddings else total

    def forward(
        self,
        ids_BL: torch.Tensor,
        positions_BL3: torch.Tensor,
        modality_BL: torch.Tensor | None = None,
        attention_mask_BL: torch.Tensor | None = None,
        cache: KVCache | None = None,
        document_ids_BL: torch.Tensor | None = None,
        *,
        hidden: bool = False,
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` (with ``hidden``: the final-norm hidden states ``[B, L, D]`` instead).

        ``attention_mask_BL`` marks real tokens (False on padding). With a ``cache``, the new tokens
        attend to everything cached so far and are appended to it. ``document_ids_BL`` packs several
        documents in a row: a token attends only to earlier tokens of its own document.
        """
        x = self.features(ids_BL, positions_BL3, modality_BL, attention_mask_BL, cache, document_ids_BL)
        return self.norm(x) if hidden else self.logits(x)

    def features(
        self,
        ids_BL: torch.Tensor,
        positions_BL3: torch.Tensor,
        modality_BL: torch.Tensor | None = None,
        attention_mask_BL: torch.Tensor | None = None,
        cache: KVCache | None = None,
        document_ids_BL: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last block's output ``[B, L, D]`` before the final norm (arguments as :meth:`forward`)."""
        if self.config.modality_experts and modality_BL is None:
            raise ValueError("a model with modality_experts needs each token's modality")
        if document_ids_BL is not None and cache is not None:
            raise ValueError("packed documents are for training; decode one document per row with a cache")
        B, L = ids_BL.shape
        cos, sin = self.rotary(positions_BL3)
        masks = self.attention_masks(B, L, attention_mask_BL, cache, ids_BL.device, document_ids_BL)
        x = self.embed_inputs(ids_BL, positions_BL3)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, masks[index], cache, index, modality_BL)
        if cache is not None:
            cache.length += L
        return x

    def decode_step(self, ids_B1: torch.Tensor, positions_B13: torch.Tensor, modality_B1: torch.Tensor | None,
                    valid_B1: torch.Tensor, cache: KVCache, slot: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Logits ``[B, V]`` of one new token per row, written to cache slot ``slot`` (a one-element long
        tensor; ``valid_B1`` False for rows that are done), attending to every valid cached slot.

        Unlike :meth:`forward` with a cache, no shape here depends on how much is cached, so one
        ``torch.compile`` of this method serves a whole generation (as a CUDA graph with
        ``mode="reduce-overhead"``). The caller advances ``cache.length`` (and, not compiled, may set
        ``cache.visible`` to the slots in use)."""
        cos, sin = self.rotary(positions_B13)
        cache.valid.index_copy_(1, slot, valid_B1)
        mask = cache.valid[:, None, None, : cache.visible]
        local = mask
        if self.config.sliding_window is not None:  # the cache keeps every slot; the window hides the old ones
            local = mask & (torch.arange(mask.shape[-1], device=mask.device) > slot - self.config.sliding_window)
        x = self.embed_inputs(ids_B1, positions_B13)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, local if self.config.is_local(index) else mask, cache, index, modality_B1, slot)
        return self.logits(x)[:, -1]

    def logits(self, x_BLD: torch.Tensor) -> torch.Tensor:
        """Final norm and the head over the whole vocabulary (tied to the embedding or its own)."""
        x = self.norm(x_BLD)
        return F.linear(x, self.embed.weight) if self.head is None else self.head(x)

    def attention_masks(self, B: int, L: int, attention_mask_BL: torch.Tensor | None, cache: KVCache | None,
                        device: torch.device, document_ids_BL: torch.Tensor | None = None) -> list:  # fmt: skip
        """Each layer's mask for :meth:`Attention.forward` (arguments as :meth:`causal_mask`): the causal
        one, or for local layers its sliding-window version (blocks of a :class:`BandedMask` when the
        whole sequence is longer than the window, else a dense banded mask)."""
        window, n = self.config.sliding_window, self.config.n_layers
        local = None
        if window is not None:
            if cache is None and L > window:
                local = BandedMask(window, attention_mask_BL, document_ids_BL)
            elif cache is not None:
                local = self.causal_mask(B, L, attention_mask_BL, cache, device, document_ids_BL, window=window)
        if local is not None and all(self.config.is_local(i) for i in range(n)):
            return [local] * n
        full = self.causal_mask(B, L, attention_mask_BL, cache, device, document_ids_BL)
        if local is None:
            return [full] * n
        return [local if self.config.is_local(i) else full for i in range(n)]

    @staticmethod
    def causal_mask(B: int, L: int, attention_mask_BL: torch.Tensor | None, cache: KVCache | None,
                    device: torch.device, document_ids_BL: torch.Tensor | None = None, *,
                    window: int | None = None) -> torch.Tensor | None:  # fmt: skip
        """A boolean ``[B, 1, L, S]`` mask (True = may attend), or None for the plain causal fast path.
        With ``window``, a query sees only the ``window`` keys ending at itself."""
        if cache is None and attention_mask_BL is None and document_ids_BL is None and window is None:
            return None
        past = cache.length if cache is not None else 0
        S = past + L
        if cache is not None:
            if S > cache.max_len:
                raise ValueError(f"KV cache holds {cache.max_len} tokens; {S} were asked for")
            new = (
                attention_mask_BL
                if attention_mask_BL is not None
                else torch.ones(B, L, dtype=torch.bool, device=device)
            )
            cache.valid[:, past:S] = new
            keys_valid = cache.valid[:, :S]
        else:
            keys_valid = (
                attention_mask_BL
                if attention_mask_BL is not None
                else torch.ones(B, L, dtype=torch.bool, device=device)
            )
        causal = torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal=past)
        if window is not None:
            causal = causal.triu(diagonal=past - window + 1)
        mask = causal.unsqueeze(0) & keys_valid[:, None, :]
        if document_ids_BL is not None:  # block-causal: no attention across packed documents
            mask &= document_ids_BL[:, :, None] == document_ids_BL[:, None, :]
        # A padded query row with no key to attend would make SDPA return NaN: let it see itself.
        rows = torch.arange(L, device=device)
        mask[:, rows, past + rows] = True
        return mask.unsqueeze(1)
