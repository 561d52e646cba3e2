"""Pre-tokenized data: documents encoded once into memory-mapped arrays, then packed for training.

A tokenized folder holds flat arrays over all documents — ``ids`` (int32), ``modality`` (uint8),
``positions`` (int32, 3 per token), ``loss_weight`` (float32) — plus ``offsets`` (where each
document starts), the ``vocab.json`` it was encoded with and ``meta.json``. Training reads slices of
these arrays and never re-encodes media. The folder is written beside its target and renamed into
place, so an interrupted run leaves no half-written dataset.

Training packs these documents into rows (:mod:`polymodal.train.data`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from polymodal.content import Document
from polymodal.content.document import drop_conditioning
from polymodal.errors import ConfigError
from polymodal.files import staging_directory, swap_directory, write_text_atomic
from polymodal.tokenizers.document import DocumentTokenizer, Truncation, part_modality
from polymodal.tokenizers.sequence import TokenSequence
from polymodal.vocab import VOCAB_FILENAME, Vocabulary

META_FILENAME = "meta.json"
UNCONDITIONAL_DIRNAME = "unconditional"
_ARRAYS = {"ids": np.int32, "modality": np.uint8, "positions": np.int32, "loss_weight": np.float32}


class _ArrayWriter:
    """Appends sequences to the flat array files of one folder and records where each starts."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.files = {name: open(directory / f"{name}.bin", "wb") for name in _ARRAYS}  # noqa: SIM115
        self.offsets = [0]

    def append(self, seq: TokenSequence) -> int:
        """Write one sequence; returns its document index."""
        for name, dtype in _ARRAYS.items():
            self.files[name].write(np.ascontiguousarray(getattr(seq, name).numpy().astype(dtype)).tobytes())
        self.offsets.append(self.offsets[-1] + len(seq))
        return len(self.offsets) - 2

    def close(self, vocab: Vocabulary, meta: dict) -> dict:
        for f in self.files.values():
            f.close()
        np.save(self.directory / "offsets.npy", np.asarray(self.offsets, dtype=np.int64))
        vocab.save(self.directory)
        meta = {"documents": len(self.offsets) - 1, "tokens": self.offsets[-1], **meta, "format_version": 1}
        write_text_atomic(self.directory / META_FILENAME, json.dumps(meta, indent=2) + "\n")
        return meta

    def abort(self) -> None:
        for f in self.files.values():
            f.close()


def _generates_media(document: Document) -> bool:
    """Whether the document's target (last part, or last assistant turn) is an image or audio."""
    if document.is_chat:
        last = document.messages[-1]
        return last.role == "assistant" and any(part_modality(p) in ("image", "audio") for p in last.parts)
    return bool(document.parts) and part_modality(document.parts[-1]) in ("image", "audio")


def write_tokenized(
    documents: Iterable[Document],
    tokenizer: DocumentTokenizer,
    out_dir: str | os.PathLike,
    *,
    max_length: int,
    truncation: Truncation = "right",
    unconditional: bool = True,
    progress: bool = False,
) -> Path:
    """Encode every document once (truncated media-safely to ``max_length``) into ``out_dir``.

    A document longer than ``max_length`` is cut (``truncation="right"``: before the first text
    token or media span that does not fit; ``"error"`` raises instead). One that has nothing left
    to learn from after the cut — a chat whose answer was cut away — is *skipped*. ``meta.json``
    records how many documents were read, cut and skipped, so that a too-small ``max_length`` is
    seen rather than silently training on stubs.

    With ``unconditional``, every document that ends in an image or audio also gets its
    :func:`~polymodal.content.document.drop_conditioning` variant, in ``unconditional/``: the
    trainer swaps it in for conditioning dropout (classifier-free guidance) without re-encoding.
    """
    staging = staging_directory(out_dir)
    writers = {"main": _ArrayWriter(staging)}
    variants: list[int] = []
    counts = {"read": 0, "cut": 0, "skipped": 0}

    def encode(document: Document) -> TokenSequence | None:
        seq = tokenizer.encode(document)
        if len(seq) <= max_length:
            return seq
        seq = tokenizer.encode(document, max_length=max_length, truncation=truncation)
        if not bool((seq.loss_weight[1:] > 0).any()):
            counts["skipped"] += 1
            return None
        counts["cut"] += 1
        return seq

    try:
        for document in tqdm(documents, desc="tokenizing", disable=not progress, unit="doc"):
            counts["read"] += 1
            seq = encode(document)
            if seq is None:
                continue
            writers["main"].append(seq)
            variant = -1
            if unconditional and _generates_media(document):
                if "uncond" not in writers:
                    writers["uncond"] = _ArrayWriter(staging / UNCONDITIONAL_DIRNAME)
                dropped = drop_conditioning(document)
                variant = writers["uncond"].append(
                    tokenizer.encode(dropped, max_length=max_length, truncation=truncation)
                )
            variants.append(variant)
        if counts["read"] and writers["main"].offsets == [0]:
            raise ConfigError(f"{out_dir}: none of the {counts['read']} documents fits max_length={max_length}")
        meta = {"max_length": max_length, "read": counts["read"], "cut": counts["cut"], "skipped": counts["skipped"]}
        if "uncond" in writers:
            writers["uncond"].close(tokenizer.vocab, {"max_length": max_length})
            np.save(staging / "unconditional.npy", np.asarray(variants, dtype=np.int64))
        writers["main"].close(tokenizer.vocab, meta)
        swap_directory(staging, out_dir, marker=META_FILENAME)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Path(out_dir)


class TokenizedDataset:
    """Random access to the documents of a tokenized folder, memory-mapped (nothing loaded up front)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if not (self.directory / META_FILENAME).is_file():
            raise ConfigError(f"{self.directory}: not a tokenized dataset (no {META_FILENAME})")
        self.meta = json.loads((self.directory / META_FILENAME).read_text())
        self.vocab = Vocabulary.load(self.directory / VOCAB_FILENAME)
        self.offsets = np.load(self.directory / "offsets.npy")
        total = int(self.offsets[-1])
        self.arrays = {}
        for name, dtype in _ARRAYS.items():
            shape = (total, 3) if name == "positions" else (total,)
            path = self.directory / f"{name}.bin"
            expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if path.stat().st_size != expected:
                raise ConfigError(f"{path}: {path.stat().st_size} bytes, expected {expected}: the dataset is damaged")
            self.arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=shape) if total else np.zeros(shape, dtype)
        self.variants: np.ndarray | None = None
        self._unconditional: TokenizedDataset | None = None
        if (self.directory / "unconditional.npy").is_file():
            self.variants = np.load(self.directory / "unconditional.npy")
            self._unconditional = TokenizedDataset(self.directory / UNCONDITIONAL_DIRNAME)
            if len(self.variants) != len(self) or self.variants.max(initial=-1) >= len(self._unconditional):
                raise ConfigError(f"{self.directory}: the unconditional variants do not match the documents")

    def unconditional(self, index: int) -> TokenSequence | None:
        """The document without its conditioning (for classifier-free guidance), if it has a variant."""
        if self.variants is None or self.variants[index] < 0:
            return None
        return self._unconditional[int(self.variants[index])]

    def check_vocabulary(self, vocab: Vocabulary) -> None:
        """Refuse to train a model on ids from another vocabulary."""
        if vocab != self.vocab:
            raise ConfigError(
                f"{self.directory} was tokenized with a different vocabulary than this run's "
                "(give the vocabulary folder it was tokenized with: a recipe's vocab, or --vocab)"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, index: int) -> TokenSequence:
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} of {len(self)}")
        index %= len(self)
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        a = {name: torch.from_numpy(np.array(arr[start:stop])) for name, arr in self.arrays.items()}
        return TokenSequence(a["ids"].long(), a["modality"].long(), a["positions"].long(), a["loss_weight"].float())
