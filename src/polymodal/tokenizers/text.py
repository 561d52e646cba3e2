"""The text tokenizer: byte-level BPE trained with Hugging Face ``tokenizers``.

Byte-level means the 256 byte values are always in the vocabulary, so any Unicode string encodes
and decodes back to exactly itself — no unknown token, no normalisation, no added spaces. Special
tokens are not part of this tokenizer: they live in the unified vocabulary, so user text that
happens to contain ``<|eos|>`` stays plain text and can never inject a control token.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import tokenizers as hf
import torch

from polymodal.content import Text
from polymodal.errors import ConfigError, PolymodalError
from polymodal.files import write_text_atomic
from polymodal.tokenizers import read_tokenizer_config, write_tokenizer_config
from polymodal.tokenizers.base import Sequential, TokenSpan

MODEL_FILENAME = "tokenizer.json"


def _check_encodable(text: str) -> None:
    # Lone surrogates are valid Python str but not Unicode text: they cannot be turned into bytes.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PolymodalError(
            f"text is not valid Unicode: {exc.reason} at index {exc.start} ({text[exc.start]!r})"
        ) from None


class TextTokenizer:
    """Byte-level BPE over UTF-8 text; local ids ``0 .. vocab_size-1``."""

    name: ClassVar[str] = "text-bpe"
    modality: ClassVar[str] = "text"

    def __init__(self, backend: hf.Tokenizer) -> None:
        self._backend = backend

    # -- training -----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = 4096,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> TextTokenizer:
        """Learn BPE merges from an iterable of strings (read once, streamed)."""
        if vocab_size < 257:
            raise ConfigError(f"text vocab_size must be at least 257 (256 bytes + 1 merge), got {vocab_size}")
        backend = hf.Tokenizer(hf.models.BPE())
        # use_regex splits on the GPT-2 pattern (words, numbers, punctuation); no prefix space is
        # added so that encoding is a pure function of the bytes.
        backend.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=show_progress,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def train_from_files(cls, files: Sequence[str | os.PathLike], **kwargs) -> TextTokenizer:
        """Train on UTF-8 text files, one document per file, read lazily."""
        paths = [Path(f) for f in files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"text training files not found: {missing}")

        def read_all() -> Iterable[str]:
            for path in paths:
                try:
                    yield path.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    raise PolymodalError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

        return cls.train(read_all(), **kwargs)

    # -- the protocol -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def encode_ids(self, text: str) -> list[int]:
        _check_encodable(text)
        if not text:
            return []
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode_ids(self, ids: Sequence[int] | torch.Tensor) -> str:
        ids = torch.as_tensor(ids, dtype=torch.long).tolist() if not isinstance(ids, list) else ids
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"text ids {bad[:5]} are outside [0, {self.vocab_size})")
        return self._backend.decode(ids, skip_special_tokens=False)

    def encode(self, part: Text | str) -> TokenSpan:
        text = part.text if isinstance(part, Text) else part
        if not isinstance(text, str):
            raise TypeError(f"the text tokenizer encodes Text parts, got {type(part).__name__}")
        return TokenSpan("text", torch.tensor(self.encode_ids(text), dtype=torch.long), Sequential())

    def decode(self, span: TokenSpan) -> Text:
        return Text(self.decode_ids(span.ids.tolist()))

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """The bytes each id stands for, shown as text (for inspection, e.g. ``polymodal vocab``)."""
        return [self.decode_ids([i]) for i in ids]

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / MODEL_FILENAME, self._backend.to_str(pretty=False))
        write_tokenizer_config(directory, self.name, {"modality": self.modality, "vocab_size": self.vocab_size})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextTokenizer:
        directory = Path(directory)
        config = read_tokenizer_config(directory)
        if config["type"] != cls.name:
            raise ConfigError(f"{directory}: holds a {config['type']!r} tokenizer, not {cls.name!r}")
        try:
            backend = hf.Tokenizer.from_file(str(directory / MODEL_FILENAME))
        except Exception as exc:  # the Rust side raises a bare Exception for any parse failure
            raise ConfigError(f"{directory / MODEL_FILENAME}: cannot load BPE model ({exc})") from exc
        tokenizer = cls(backend)
        if tokenizer.vocab_size != config.get("vocab_size", tokenizer.vocab_size):
            raise ConfigError(
                f"{directory}: config says vocab_size {config['vocab_size']}, model has {tokenizer.vocab_size}"
            )
        return tokenizer
