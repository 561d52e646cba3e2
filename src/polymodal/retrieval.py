"""Cross-modal retrieval with a run's unified embedding.

:func:`embed` gives each document the unit-length mean of its final hidden states (its ``<|bos|>``
excluded): the pooled states the ``align`` stage trains to meet across modalities, so an image, its
caption and a spoken description land near each other. :func:`build_index` embeds a folder of text,
images, audio and video files into an :class:`Index` (exact search in torch: a matrix product over
every item), which is saved as ``vectors.safetensors`` + ``items.json`` and searched by text or by
any media file (``polymodal index build`` / ``polymodal index search``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from polymodal.content import Document, Part, load_part
from polymodal.content.limits import media_kind_of
from polymodal.errors import ConfigError, PolymodalError
from polymodal.files import staging_directory, swap_directory, write_bytes_atomic, write_text_atomic
from polymodal.model import Transformer
from polymodal.progress import show_progress
from polymodal.run import Run
from polymodal.tokenizers.document import part_modality
from polymodal.tokenizers.sequence import TokenSequence, pad_batch

ITEMS_FILENAME = "items.json"
VECTORS_FILENAME = "vectors.safetensors"
_TEXT_SUFFIXES = (".txt", ".md")


def embed(run: Run, documents: Sequence[Document], *, batch_size: int = 16) -> torch.Tensor:
    """``[len(documents), dim]`` unit-length float32 embeddings (on the CPU)."""
    return embed_sequences(run, [run.tokenizer.encode(d, add_eos=False) for d in documents], batch_size=batch_size)


@torch.no_grad()
def embed_sequences(run: Run, seqs: Sequence[TokenSequence], *, batch_size: int = 16) -> torch.Tensor:
    """:func:`embed` of documents already encoded (``encode(document, add_eos=False)``)."""
    if not isinstance(run.model, Transformer):
        raise ConfigError("embeddings come from an early-fusion run's aligned states")
    context = run.model.config.max_seq_len
    longest = max((len(s) for s in seqs), default=0)
    if longest > context:
        raise ConfigError(f"an input holds {longest} tokens; the model's context is {context}")
    device = next(run.model.parameters()).device
    out = []
    for k in range(0, len(seqs), batch_size):
        batch = pad_batch(list(seqs[k : k + batch_size]), run.tokenizer.vocab.pad_id).to(device)
        states = run.model(batch.ids, batch.positions, batch.modality, batch.attention_mask, hidden=True).float()
        keep = batch.attention_mask.clone()
        keep[:, 0] = False
        pooled = (states * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, run.model.config.dim)


@dataclass
class Index:
    vectors: torch.Tensor  # [N, D], unit rows
    items: list[dict]  # {"path": relative path, "modality": ...} per row

    def search(self, query: torch.Tensor, k: int = 10) -> list[tuple[float, dict]]:
        """The ``k`` items most similar (cosine) to a unit ``query`` vector, best first."""
        if query.shape != (self.vectors.shape[1],):
            raise ConfigError(f"a query of {tuple(query.shape)} for an index of {self.vectors.shape[1]} dimensions")
        scores = self.vectors @ query.float()
        top = torch.topk(scores, min(k, len(self.items)))
        return [(float(s), self.items[int(i)]) for s, i in zip(top.values, top.indices, strict=True)]

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        if directory.exists() and not (directory / ITEMS_FILENAME).exists():
            raise ConfigError(f"{directory} exists and is not a polymodal index: refusing to replace it")
        staging = staging_directory(directory)
        write_bytes_atomic(staging / VECTORS_FILENAME, save_safetensors({"vectors": self.vectors.contiguous()}))
        write_text_atomic(staging / ITEMS_FILENAME, json.dumps({"items": self.items}, indent=1) + "\n")
        swap_directory(staging, directory, marker=ITEMS_FILENAME)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Index:
        directory = Path(directory)
        try:
            items = json.loads((directory / ITEMS_FILENAME).read_text(encoding="utf-8"))["items"]
            vectors = load_file(str(directory / VECTORS_FILENAME))["vectors"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{directory}: not a readable polymodal index ({exc})") from None
        if len(items) != len(vectors):
            raise ConfigError(f"{directory}: {len(items)} items for {len(vectors)} vectors")
        return cls(vectors, items)


def index_files(folder: str | os.PathLike) -> list[Path]:
    """The files of ``folder`` (recursively, sorted) that an index reads: text and media by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return [p for p in files if p.suffix.lower() in _TEXT_SUFFIXES or media_kind_of(p)]


def build_index(run: Run, folder: str | os.PathLike, *, batch_size: int = 16, fps: float = 1.0,
                progress: bool = True) -> Index:  # fmt: skip
    """Embed every text, image, audio and video file under ``folder``; a file that cannot be read is
    an error naming it (before any embedding is spent on the others)."""
    folder = Path(folder)
    files = index_files(folder)
    if not files:
        raise ConfigError(f"{folder} holds no text (.txt, .md), image, audio or video files to index")
    parts: list[Part] = []
    for path in files:
        try:
            parts.append(load_part(path, fps=fps))
        except PolymodalError as exc:
            raise ConfigError(f"cannot index {path}: {exc}") from None
    vectors = []
    with show_progress(len(parts), "index", "file", enabled=progress) as bar:
        for k in range(0, len(parts), batch_size):
            vectors.append(embed(run, [Document.of(p) for p in parts[k : k + batch_size]], batch_size=batch_size))
            bar.update(len(parts[k : k + batch_size]))
    pairs = zip(files, parts, strict=True)
    items = [{"path": str(p.relative_to(folder)), "modality": part_modality(part)} for p, part in pairs]
    return Index(torch.cat(vectors), items)
