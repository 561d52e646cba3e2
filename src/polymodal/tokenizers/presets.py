"""Named vocabularies that ship with polymodal.

``default``: the vocabulary ``polymodal tokenize`` uses when none is given — the base specials,
image grid tokens, a byte-level BPE text tokenizer (2,048 ids) and the ``tiny`` image and audio
tokenizers (1,000 codes each) trained on shapes world. Its files are in ``polymodal/assets/default``
and are rebuilt with the commands in ``assets/README.md``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from polymodal.errors import ConfigError

_PRESETS = {"default": "default"}


def list_vocabularies() -> list[str]:
    """Names of the vocabularies shipped with the package."""
    return sorted(_PRESETS)


def vocabulary_dir(name: str) -> Path:
    """The folder (vocab.json + tokenizers/) of a shipped vocabulary."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown vocabulary {name!r}; shipped: {list_vocabularies()}")
    path = Path(str(resources.files("polymodal") / "assets" / _PRESETS[name]))
    if not (path / "vocab.json").is_file():
        raise ConfigError(f"the installed package lacks {path / 'vocab.json'}: reinstall polymodal")
    return path


def default_vocabulary_dir() -> Path:
    return vocabulary_dir("default")
