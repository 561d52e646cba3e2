"""Seed the backbone from a Llama-family text model in a local Hugging Face folder.

Reads ``config.json`` and the safetensors weights (one file or an indexed set of shards) of a
``LlamaForCausalLM``-shaped checkpoint — no hub access — and maps every tensor onto
:class:`~polymodal.model.transformer.Transformer`. The checkpoint's token ids become the run's text
range: its embedding and head rows are copied there, and the rows of the special tokens and the
media ranges are added, initialised at the mean text embedding plus small noise. With text-only
input the imported model computes exactly what the original does.

Knows nothing of tokenizers: the caller pairs the vocabulary with the checkpoint's own tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from polymodal.errors import ConfigError
from polymodal.model.config import ModelConfig
from polymodal.model.transformer import Transformer
from polymodal.vocab import Vocabulary

SUPPORTED_TYPES = ("llama", "mistral")


def read_hf_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{directory}: no config.json; expected a Hugging Face model folder") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    kind = config.get("model_type")
    if kind not in SUPPORTED_TYPES:
        raise ConfigError(f"{path}: model_type {kind!r} is not a Llama-family model ({', '.join(SUPPORTED_TYPES)})")
    return config


def _rope_theta(hf: dict, where: Path) -> float:
    # transformers 5 writes {"rope_parameters": {"rope_theta", "rope_type"}}; older releases wrote
    # "rope_theta" and "rope_scaling" at the top level.
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"{where}: rope type {rope_type!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def model_config_from_hf(hf: dict, vocab: Vocabulary, *, where: Path, **overrides) -> ModelConfig:
    """The polymodal config with the checkpoint's shape and the unified vocabulary's size."""
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ConfigError(f"{where}: {flag}=true is not supported (the backbone has no biases)")
    if hf.get("sliding_window"):
        raise ConfigError(f"{where}: sliding-window attention is not supported")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim", dim // heads) != dim // heads:
        raise ConfigError(f"{where}: head_dim {hf['head_dim']} differs from hidden_size / heads")
    return ModelConfig(
        vocab_size=vocab.size,
        dim=dim,
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads", heads),
        ffn_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        rope_theta=_rope_theta(hf, where),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        num_modalities=len(vocab.modalities),
        max_seq_len=min(hf.get("max_position_embeddings", 2048), 8192),
        **overrides,
    )


def load_hf_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors.update(load_file(str(directory / name)))
        except (OSError, SafetensorError) as exc:
            raise ConfigError(f"{directory / name}: cannot read weights ({exc})") from exc
    return tensors


def import_llama(
    directory: str | os.PathLike, vocab: Vocabulary, *, text_range: str = "text", seed: int = 0, **overrides
) -> Transformer:
    """Build a Transformer for ``vocab`` from a local Llama checkpoint (see the module docstring).

    ``vocab``'s ``text_range`` must hold exactly the checkpoint's ``vocab_size`` ids, in its order.
    ``overrides`` go to the config (e.g. ``modality_experts=True``: every expert starts as the
    checkpoint's feed-forward).
    """
    directory = Path(directory)
    hf = read_hf_config(directory)
    text = vocab.range(text_range)
    if text.size != hf["vocab_size"]:
        raise ConfigError(
            f"{directory}: the checkpoint has {hf['vocab_size']} token ids but the vocabulary's {text_range} "
            f"range holds {text.size}; build the vocabulary with the checkpoint's own tokenizer"
        )
    config = model_config_from_hf(hf, vocab, where=directory / "config.json", **overrides)
    weights = load_hf_weights(directory)
    torch.manual_seed(seed)
    model = Transformer(config)
    state = _map_state(weights, config, directory)
    state["embed.weight"] = _extend_rows(weights["model.embed_tokens.weight"], text.start, vocab.size)
    if not config.tie_embeddings:
        state["head.weight"] = _extend_rows(_require(weights, "lm_head.weight", directory), text.start, vocab.size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{directory}: weights do not fit the model (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    return model


def _require(weights: dict[str, torch.Tensor], name: str, directory: Path) -> torch.Tensor:
    try:
        return weights[name]
    except KeyError:
        raise ConfigError(f"{directory}: the checkpoint has no tensor {name!r}") from None


def _map_state(weights: dict[str, torch.Tensor], config: ModelConfig, directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {"norm.weight": _require(weights, "model.norm.weight", directory)}
    attention = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo"}
    ffn = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
    for i in range(config.n_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        state[f"{ours}.attention_norm.weight"] = _require(weights, f"{hf}.input_layernorm.weight", directory)
        state[f"{ours}.ffn_norm.weight"] = _require(weights, f"{hf}.post_attention_layernorm.weight", directory)
        for theirs, mine in attention.items():
            state[f"{ours}.attention.{mine}.weight"] = _require(weights, f"{hf}.self_attn.{theirs}.weight", directory)
        targets = (
            [f"{ours}.ffn.experts.{e}" for e in range(config.num_modalities)]
            if config.modality_experts
            else [f"{ours}.ffn"]
        )
        for theirs, mine in ffn.items():
            tensor = _require(weights, f"{hf}.mlp.{theirs}.weight", directory)
            for target in targets:
                state[f"{target}.{mine}.weight"] = tensor.clone()
    return state


def _extend_rows(text_rows: torch.Tensor, start: int, total: int) -> torch.Tensor:
    """Place the checkpoint's rows at ``start`` and fill the rest near the mean row."""
    rows = text_rows.float()
    mean, std = rows.mean(dim=0), rows.std(dim=0).mean()
    out = mean + 0.1 * std * torch.randn(total, rows.shape[1])
    out[start : start + rows.shape[0]] = rows
    return out.to(text_rows.dtype)


__all__ = ["import_llama", "load_hf_weights", "model_config_from_hf", "read_hf_config"]
