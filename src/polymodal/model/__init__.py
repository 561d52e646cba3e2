"""The model: config and presets (config.py) and the transformer itself (transformer.py)."""

from polymodal.model.config import ModelConfig, list_presets, preset
from polymodal.model.transformer import KVCache, Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer", "list_presets", "preset"]
