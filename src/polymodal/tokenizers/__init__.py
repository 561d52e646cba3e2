"""Tokenizers: one per modality, plus the document tokenizer that combines them.

The registry below is explicit: a name maps to the class's import path, and the class is imported
only when that tokenizer is first used — so a text-only program never imports (or needs the
weights of) the image, audio or video tokenizers.

A saved tokenizer is a folder holding ``tokenizer_config.json`` whose ``"type"`` is its registry
name, plus whatever files the tokenizer writes (weights, merges).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from polymodal.errors import ConfigError
from polymodal.files import write_text_atomic
from polymodal.tokenizers.base import Grid, Layout, ModalityTokenizer, Sequential, Timed, TokenSpan
from polymodal.tokenizers.sequence import TokenBatch, TokenSequence, pad_batch

CONFIG_FILENAME = "tokenizer_config.json"

_REGISTRY: dict[str, str] = {
    "text-bpe": "polymodal.tokenizers.text:TextTokenizer",
    "image-fsq": "polymodal.tokenizers.image:ImageTokenizer",
    "audio-fsq": "polymodal.tokenizers.audio:AudioTokenizer",
}


def list_tokenizers() -> list[str]:
    """Registry names of every tokenizer polymodal can build or load."""
    return sorted(_REGISTRY)


def register_tokenizer(name: str, target: str) -> None:
    """Make a tokenizer class loadable by name: ``target`` is ``"package.module:ClassName"``.

    This is how a user's own tokenizer plugs in (imported lazily, like the built-in ones).
    """
    if ":" not in target:
        raise ConfigError(f"tokenizer target must look like 'package.module:ClassName', got {target!r}")
    if _REGISTRY.get(name, target) != target:
        raise ConfigError(f"tokenizer {name!r} is already registered as {_REGISTRY[name]}")
    _REGISTRY[name] = target


def tokenizer_class(name: str) -> type[ModalityTokenizer]:
    """Import and return the tokenizer class registered as ``name``."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown tokenizer {name!r}; available: {list_tokenizers()}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def write_tokenizer_config(directory: str | os.PathLike, name: str, config: dict) -> None:
    """Write the folder's ``tokenizer_config.json`` (``type`` plus the tokenizer's own settings)."""
    write_text_atomic(Path(directory) / CONFIG_FILENAME, json.dumps({"type": name, **config}, indent=2) + "\n")


def read_tokenizer_config(directory: str | os.PathLike) -> dict:
    """Read a tokenizer folder's config; a clear :class:`ConfigError` if it is missing or broken."""
    path = Path(directory) / CONFIG_FILENAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{directory}: not a saved tokenizer (no {CONFIG_FILENAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or "type" not in config:
        raise ConfigError(f"{path}: missing the 'type' of tokenizer")
    return config


def load_tokenizer(directory: str | os.PathLike) -> ModalityTokenizer:
    """Load whichever registered tokenizer was saved in ``directory``."""
    config = read_tokenizer_config(directory)
    return tokenizer_class(config["type"]).load(directory)


__all__ = [
    "Grid",
    "Layout",
    "ModalityTokenizer",
    "Sequential",
    "Timed",
    "TokenBatch",
    "TokenSequence",
    "TokenSpan",
    "list_tokenizers",
    "load_tokenizer",
    "pad_batch",
    "read_tokenizer_config",
    "register_tokenizer",
    "tokenizer_class",
    "write_tokenizer_config",
]
