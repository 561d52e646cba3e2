"""The model's typed config and its named presets.

A preset is a plain function of the vocabulary size (which comes from the run's ``vocab.json``):
``debug`` runs a step on a CPU in well under a second, ``tiny`` is the CPU quickstart size (and the
shape of the performance reference), ``small`` ≈ 135M parameters (the GPU reference), ``base``
≈ 350M and ``1b``. Unknown keys in a saved config are an error, never a silent default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from polymodal.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int = 4  # grouped-query attention: each KV head serves n_heads / n_kv_heads query heads
    ffn_dim: int = 704  # SwiGLU hidden width
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    # Rotary frequency pairs given to the (t, h, w) axes, in that order; None: half to t, a quarter
    # each to h and w. They must add up to head_dim / 2.
    rope_sections: tuple[int, int, int] | None = None
    tie_embeddings: bool = True
    # Multiplies the input embeddings (not the tied output head), as Gemma does with sqrt(dim). At the
    # N(0, 0.02) init an embedding is ~0.3 long while the first block adds vectors hundreds long: a
    # larger scale keeps what a token's embedding says readable after that block.
    embed_scale: float = 1.0
    # Learned row and column vectors added to the input embedding of every image code (ViT's absolute
    # 2-D positions), for grids of up to this many rows and columns; 0: none. Rotary positions tell
    # attention where a code is; these put it into the code's own vector, so a head that pools a
    # picture's codes still knows which cell each one came from.
    grid_embeddings: int = 0
    modality_experts: bool = False  # one feed-forward per modality, chosen by each token's modality
    num_modalities: int = 4  # size of the modality index (0 = special, then the vocabulary's ranges)
    max_seq_len: int = 2048  # the KV cache's default capacity
    # Sliding-window attention: a token attends to itself and the sliding_window - 1 tokens before it
    # (None: to every earlier token). With full_attention_every = n, every n-th layer (the n-th, 2n-th
    # ...) still attends to the whole context: local + global layers.
    sliding_window: int | None = None
    full_attention_every: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ConfigError(f"model: vocab_size must be >= 1, got {self.vocab_size}")
        if self.dim % self.n_heads:
            raise ConfigError(f"model: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model: head_dim {self.head_dim} must be even for rotary embeddings")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"model: sliding_window must be >= 1 or None, got {self.sliding_window}")
        if self.grid_embeddings < 0:
            raise ConfigError(f"model: grid_embeddings must be >= 0 (0: none), got {self.grid_embeddings}")
        if not self.embed_scale > 0:
            raise ConfigError(f"model: embed_scale must be > 0, got {self.embed_scale}")
        if self.full_attention_every < 0:
            raise ConfigError(f"model: full_attention_every must be >= 0, got {self.full_attention_every}")
        if self.full_attention_every and self.sliding_window is None:
            raise ConfigError("model: full_attention_every only applies with a sliding_window")
        sections = self.sections
        if len(sections) != 3 or min(sections) < 0 or sum(sections) != self.head_dim // 2:
            raise ConfigError(
                f"model: rope_sections {sections} must be three non-negative counts adding up to "
                f"head_dim / 2 = {self.head_dim // 2}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def sections(self) -> tuple[int, int, int]:
        if self.rope_sections is not None:
            return tuple(self.rope_sections)
        pairs = self.head_dim // 2
        quarter = pairs // 4
        return (pairs - 2 * quarter, quarter, quarter)

    def is_local(self, layer: int) -> bool:
        """Whether layer ``layer`` (from 0) attends only within the sliding window."""
        if self.sliding_window is None:
            return False
        return not (self.full_attention_every and (layer + 1) % self.full_attention_every == 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"model config: unknown keys {sorted(unknown)}")
        if data.get("rope_sections") is not None:
            data = {**data, "rope_sections": tuple(data["rope_sections"])}
        return cls(**data)

    def with_(self, **changes) -> ModelConfig:
        return replace(self, **changes)


def debug(vocab_size: int) -> ModelConfig:
    """2 layers of width 64: a forward/backward step on a CPU in milliseconds."""
    return ModelConfig(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=172, max_seq_len=512)


def tiny(vocab_size: int) -> ModelConfig:
    """The CPU quickstart size: width 256, 6 layers, 8 heads / 4 KV heads, SwiGLU 704."""
    return ModelConfig(vocab_size=vocab_size)


def small(vocab_size: int) -> ModelConfig:
    """≈135M parameters with a 49k vocabulary (SmolLM-135M's shape): the one-GPU reference."""
    return ModelConfig(
        vocab_size=vocab_size, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, max_seq_len=4096
    )


def base(vocab_size: int) -> ModelConfig:
    """≈350M parameters with a 49k vocabulary (SmolLM-360M's shape)."""
    return ModelConfig(
        vocab_size=vocab_size, dim=960, n_layers=32, n_heads=15, n_kv_heads=5, ffn_dim=2560, max_seq_len=4096
    )


def one_b(vocab_size: int) -> ModelConfig:
    """≈1.1B parameters with a 49k vocabulary (Llama 3.2 1B's shape)."""
    return ModelConfig(
        vocab_size=vocab_size, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
        rope_theta=500_000.0, max_seq_len=8192,
    )  # fmt: skip


_PRESETS: dict[str, Callable[[int], ModelConfig]] = {
    "debug": debug,
    "tiny": tiny,
    "small": small,
    "base": base,
    "1b": one_b,
}


def list_presets() -> list[str]:
    return list(_PRESETS)


def preset(name: str, vocab_size: int, **overrides) -> ModelConfig:
    """A named preset for a vocabulary, with keyword overrides (e.g. ``modality_experts=True``)."""
    try:
        config = _PRESETS[name](vocab_size)
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; available: {list_presets()}") from None
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"model preset overrides: unknown keys {sorted(unknown)}")
    return replace(config, **overrides)
