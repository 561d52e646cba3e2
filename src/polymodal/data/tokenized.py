"""Pre-tokenized data: documents encoded once into memory-mapped arrays, then packed for training.

A tokenized folder holds flat arrays over all documents — ``ids`` (int32), ``modality`` (uint8),
``positions`` (int32, 3 per token), ``loss_weight`` (float32) — plus ``offsets`` (where each
document starts), the ``vocab.json`` it was encoded with and ``meta.json``. Training reads slices of
these arrays and never re-encodes media. The folder is written beside its target and renamed into
place, so an interrupted run leaves no half-written dataset.

:func:`pack_rows` fills fixed-length rows with whole documents (block-causal: each keeps its own
positions and a ``document_ids`` entry so attention never crosses documents).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from polymodal.content import Document
from polymodal.errors import ConfigError
from polymodal.files import staging_directory, swap_directory, write_text_atomic
from polymodal.tokenizers.document import DocumentTokenizer, Truncation
from polymodal.tokenizers.sequence import TokenSequence
from polymodal.vocab import VOCAB_FILENAME, Vocabulary

META_FILENAME = "meta.json"
_ARRAYS = {"ids": np.int32, "modality": np.uint8, "positions": np.int32, "loss_weight": np.float32}


def write_tokenized(
    documents: Iterable[Document],
    tokenizer: DocumentTokenizer,
    out_dir: str | os.PathLike,
    *,
    max_length: int,
    truncation: Truncation = "right",
    progress: bool = False,
) -> Path:
    """Encode every document once (truncated media-safely to ``max_length``) into ``out_dir``."""
    staging = staging_directory(out_dir)
    try:
        files = {name: open(staging / f"{name}.bin", "wb") for name in _ARRAYS}  # noqa: SIM115
        offsets, total = [0], 0
        try:
            for document in tqdm(documents, desc="tokenizing", disable=not progress, unit="doc"):
                seq = tokenizer.encode(document, max_length=max_length, truncation=truncation)
                for name, dtype in _ARRAYS.items():
                    files[name].write(np.ascontiguousarray(getattr(seq, name).numpy().astype(dtype)).tobytes())
                total += len(seq)
                offsets.append(total)
        finally:
            for f in files.values():
                f.close()
        np.save(staging / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        tokenizer.vocab.save(staging)
        meta = {"documents": len(offsets) - 1, "tokens": total, "max_length": max_length, "format_version": 1}
        write_text_atomic(staging / META_FILENAME, json.dumps(meta, indent=2) + "\n")
        swap_directory(staging, out_dir, marker=META_FILENAME)
    except BaseException:
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

    def check_vocabulary(self, vocab: Vocabulary) -> None:
        """Refuse to train a model on ids from another vocabulary."""
        if vocab != self.vocab:
            raise ConfigError(f"{self.directory} was tokenized with a different vocabulary than this run's")

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


@dataclass(frozen=True)
class PackedRow:
    """One training row: whole documents back to back, then padding."""

    ids: torch.Tensor
    modality: torch.Tensor
    positions: torch.Tensor
    loss_weight: torch.Tensor
    document_ids: torch.Tensor  # -1 on padding
    documents: tuple[int, ...]  # dataset indices packed in this row


def pack_rows(dataset: TokenizedDataset, order: Sequence[int], length: int, pad_id: int) -> Iterator[PackedRow]:
    """Fill rows of ``length`` tokens with the documents in ``order``, greedily and in order.

    A document longer than ``length`` is an error (tokenize with ``max_length <= length``): packing
    never cuts one. The same ``order`` always gives the same rows, so training resumes exactly.
    """
    lengths = dataset.lengths()
    row: list[int] = []
    used = 0
    for index in order:
        n = int(lengths[index])
        if n > length:
            raise ConfigError(f"document {index} has {n} tokens, more than the row length {length}")
        if used + n > length and row:
            yield _row(dataset, row, length, pad_id)
            row, used = [], 0
        row.append(int(index))
        used += n
    if row:
        yield _row(dataset, row, length, pad_id)


def _row(dataset: TokenizedDataset, indices: list[int], length: int, pad_id: int) -> PackedRow:
    parts = [dataset[i] for i in indices]
    seq = TokenSequence.cat(parts)
    pad = length - len(seq)
    doc_ids = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(parts)])
    return PackedRow(
        torch.cat([seq.ids, torch.full((pad,), pad_id, dtype=torch.long)]),
        torch.cat([seq.modality, torch.zeros(pad, dtype=torch.long)]),
        torch.cat([seq.positions, torch.zeros(pad, 3, dtype=torch.long)]),
        torch.cat([seq.loss_weight, torch.zeros(pad)]),
        torch.cat([doc_ids, torch.full((pad,), -1, dtype=torch.long)]),
        tuple(indices),
    )
