"""Training data: mixtures of tokenized datasets → a deterministic plan of rows → batches.

A stage reads a *mixture*: tokenized folders (``polymodal data pretokenize``) with weights.

* :func:`plan_documents` decides from the seed alone which document comes next (each source is
  read in a fresh permutation every epoch; the source of each draw follows the weights).
  :func:`plan_rows` packs those documents into rows of ``seq_len`` tokens (first fit over a short
  window of upcoming draws, so rows come out nearly full). Plans are
  numpy arrays of indices: no token is read to make them.
* :class:`PackedRows` / :class:`PairItems` are map-style datasets that build item ``i`` of a plan
  on demand, so DataLoader workers, resuming at row ``k`` and data parallelism (rank r of W takes
  rows r, r + W, …) all see exactly the same rows.
* :func:`collate_rows` / :func:`collate_pairs` stack items into a :class:`TrainBatch` for the
  native or the late-fusion model (align pairs: the media spans, then their texts).

Conditioning dropout (classifier-free guidance) swaps a document for its unconditional variant,
decided by a hash of (seed, row, slot) — no RNG state to save. Per-modality loss weights scale
each token's loss weight by its modality so that text cannot dominate.

Knows nothing of models or optimizers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from polymodal import vocab as V
from polymodal.data.tokenized import TokenizedDataset
from polymodal.errors import ConfigError
from polymodal.model.fusion import MediaInputs, late_fusion_batch
from polymodal.tokenizers.sequence import TokenSequence, pad_batch
from polymodal.vocab import Vocabulary


class Mixture:
    """Tokenized datasets with sampling weights, checked against the run's vocabulary up front."""

    def __init__(self, sources: Mapping[str | os.PathLike, float], vocab: Vocabulary) -> None:
        if not sources:
            raise ConfigError("a data mixture needs at least one tokenized dataset")
        self.paths = [Path(p) for p in sources]
        self.weights = np.asarray([float(w) for w in sources.values()], dtype=np.float64)
        if (self.weights <= 0).any() or not np.isfinite(self.weights).all():
            raise ConfigError(f"mixture weights must be positive numbers, got {list(sources.values())}")
        self.datasets = []
        for path in self.paths:
            if not path.exists():
                raise ConfigError(f"data {path} does not exist (make it with `polymodal data pretokenize`)")
            dataset = TokenizedDataset(path)
            dataset.check_vocabulary(vocab)
            if len(dataset) == 0:
                raise ConfigError(f"data {path} holds no documents")
            self.datasets.append(dataset)
        self.weights /= self.weights.sum()

    def longest(self) -> int:
        return max(int(d.lengths().max()) for d in self.datasets)

    def check_fits(self, seq_len: int) -> None:
        for path, dataset in zip(self.paths, self.datasets, strict=True):
            longest = int(dataset.lengths().max())
            if longest > seq_len:
                raise ConfigError(
                    f"{path} has a document of {longest} tokens, more than seq_len {seq_len}: "
                    f"pretokenize with --max-length {seq_len} or raise seq_len"
                )


def plan_documents(mixture: Mixture, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, document) of the first ``count`` draws from the mixture, a pure function of the seed."""
    rng = np.random.default_rng([seed, 0])
    choices = rng.choice(len(mixture.datasets), size=count, p=mixture.weights)
    documents = np.empty(count, dtype=np.int64)
    for source, dataset in enumerate(mixture.datasets):
        where = np.flatnonzero(choices == source)
        n = len(dataset)
        epochs = -(-len(where) // n) if len(where) else 0
        stream = [np.random.default_rng([seed, 1, source, e]).permutation(n) for e in range(epochs)]
        documents[where] = np.concatenate(stream)[: len(where)] if stream else []
    return choices.astype(np.int64), documents


@dataclass(frozen=True)
class RowPlan:
    """Which documents fill each row: row r holds draws ``starts[r]:starts[r + 1]``."""

    sources: np.ndarray
    documents: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.starts) - 1

    def row(self, r: int) -> list[tuple[int, int]]:
        a, b = int(self.starts[r]), int(self.starts[r + 1])
        return list(zip(self.sources[a:b].tolist(), self.documents[a:b].tolist(), strict=True))


def plan_rows(mixture: Mixture, n_rows: int, seq_len: int, seed: int, *, window: int = 64) -> RowPlan:
    """Pack mixture draws into ``n_rows`` rows of at most ``seq_len`` tokens.

    First fit over a window of the next ``window`` draws: each row takes, in draw order, every
    waiting document that still fits, so rows come out nearly full (greedy in-order packing leaves a
    third of a row empty with documents of a few hundred tokens). Deterministic given the seed.
    """
    mixture.check_fits(seq_len)
    lengths = [d.lengths() for d in mixture.datasets]
    mean = float(np.average([lg.mean() for lg in lengths], weights=mixture.weights))
    draws = int(n_rows * max(1.0, seq_len / mean) * 1.1) + window + 16
    while True:
        sources, documents = plan_documents(mixture, draws, seed)
        sizes = np.array([lengths[s][d] for s, d in zip(sources.tolist(), documents.tolist(), strict=True)])
        order = _first_fit(sizes, n_rows, seq_len, window)
        if order is not None:
            picked, starts = order
            return RowPlan(sources[picked], documents[picked], starts)
        draws *= 2  # shorter documents than expected: plan further ahead (same seed, same prefix)


def _first_fit(sizes: np.ndarray, n_rows: int, seq_len: int, window: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Draw indices in packed order and row starts, or None if ``sizes`` runs out first."""
    waiting: list[int] = []
    following = 0
    picked: list[int] = []
    starts = [0]
    while len(starts) <= n_rows:
        while len(waiting) < window and following < len(sizes):
            waiting.append(following)
            following += 1
        if following == len(sizes) and len(waiting) < window:
            return None
        room, kept = seq_len, []
        for k in waiting:
            if sizes[k] <= room:
                picked.append(k)
                room -= int(sizes[k])
            else:
                kept.append(k)
        waiting = kept
        starts.append(len(picked))
    return np.asarray(picked, dtype=np.int64), np.asarray(starts, dtype=np.int64)


def modality_weights(vocab: Vocabulary, loss_weights: Mapping[str, float]) -> torch.Tensor:
    """Per-modality loss weights as a table indexed by modality code (1 where not given)."""
    unknown = set(loss_weights) - set(vocab.modalities)
    if unknown:
        raise ConfigError(f"loss_weights: unknown modalities {sorted(unknown)}; this vocabulary has {vocab.modalities}")
    table = torch.ones(len(vocab.modalities))
    for name, weight in loss_weights.items():
        if not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ConfigError(f"loss_weights: {name} must be a finite number >= 0, got {weight!r}")
        table[vocab.modality_index(name)] = float(weight)
    return table


class PackedRows(Dataset):
    """Row ``i`` of a plan as one packed sequence plus the document id of every token (-1 on padding)."""

    def __init__(
        self,
        mixture: Mixture,
        plan: RowPlan,
        seq_len: int,
        vocab: Vocabulary,
        *,
        loss_weights: Mapping[str, float] | None = None,
        cond_dropout: float = 0.0,
        loss_per_document: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0 <= cond_dropout < 1:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.mixture, self.plan, self.seq_len, self.vocab = mixture, plan, seq_len, vocab
        self.table = modality_weights(vocab, loss_weights or {})
        self.cond_dropout, self.loss_per_document, self.seed = cond_dropout, loss_per_document, seed

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, r: int) -> tuple[TokenSequence, torch.Tensor]:
        parts = []
        row = self.plan.row(r)
        drop = np.random.default_rng([self.seed, 2, r]).random(len(row)) < self.cond_dropout
        for slot, (source, doc) in enumerate(row):
            dataset = self.mixture.datasets[source]
            part = (dataset.unconditional(doc) if drop[slot] else None) or dataset[doc]
            weight = part.loss_weight * self.table[part.modality]
            if self.loss_per_document and weight.sum() > 0:  # a one-word answer counts as much as a drawing
                weight = weight / weight.sum()
            parts.append(TokenSequence(part.ids, part.modality, part.positions, weight))
        seq = TokenSequence.cat(parts)
        document_ids = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(parts)])
        return seq, document_ids


@dataclass(frozen=True)
class TrainBatch:
    """Rows for a next-token step; ``media`` only for late fusion (whose ids are the text stream)."""

    ids: torch.Tensor
    modality: torch.Tensor
    positions: torch.Tensor
    loss_weight: torch.Tensor
    document_ids: torch.Tensor
    media: MediaInputs | None = None

    def to(self, device: torch.device | str) -> TrainBatch:
        move = lambda t: t.to(device, non_blocking=True)
        media = self.media.to(device) if self.media is not None else None
        return TrainBatch(*(move(t) for t in (self.ids, self.modality, self.positions, self.loss_weight,
                                              self.document_ids)), media)  # fmt: skip

    def pin_memory(self) -> TrainBatch:
        pin = lambda t: t.pin_memory()
        return TrainBatch(*(pin(t) for t in (self.ids, self.modality, self.positions, self.loss_weight,
                                             self.document_ids)), self.media)  # fmt: skip

    @property
    def tokens(self) -> int:
        """Real tokens of the rows (for late fusion, the text stream's and the media stream's)."""
        media = int(self.media.valid.sum()) if self.media is not None else 0
        return int((self.document_ids >= 0).sum()) + media

    def model_inputs(self) -> dict:
        inputs = {
            "ids_BL": self.ids, "positions_BL3": self.positions, "modality_BL": self.modality,
            "attention_mask_BL": self.document_ids >= 0, "document_ids_BL": self.document_ids,
        }  # fmt: skip
        if self.media is not None:
            inputs["media"] = self.media
        return inputs


def collate_rows(items: Sequence[tuple[TokenSequence, torch.Tensor]], vocab: Vocabulary, *, late: bool = False,
                 seq_len: int | None = None) -> TrainBatch:  # fmt: skip
    """Stack packed rows (right-padded to ``seq_len``, else to the longest); split them for late fusion."""
    seqs = [s for s, _ in items]
    docs = [d for _, d in items]
    if late:
        text, media, text_docs = late_fusion_batch(seqs, vocab, document_ids=docs)
        return TrainBatch(text.ids, text.modality, text.positions, text.loss_weight, text_docs, media)
    batch = pad_batch(seqs, vocab.pad_id, pad_to_multiple_of=seq_len)
    document_ids = torch.full(batch.ids.shape, -1, dtype=torch.long)
    for row, d in enumerate(docs):
        document_ids[row, : len(d)] = d
    return TrainBatch(batch.ids, batch.modality, batch.positions, batch.loss_weight, document_ids)


# -- alignment pairs --------------------------------------------------------------------------------


def split_pair(seq: TokenSequence, vocab: Vocabulary) -> tuple[TokenSequence, TokenSequence] | None:
    """(media span, text) of a two-part document such as image + caption, each re-based to follow a
    ``<|bos|>`` at index 0; None when the document is not one media span plus text."""
    starts = {vocab.special_id(s): e for s, e in ((V.IMAGE_START, V.IMAGE_END), (V.AUDIO_START, V.AUDIO_END),
                                                  (V.VIDEO_START, V.VIDEO_END)) if s in vocab.specials}  # fmt: skip
    ids = seq.ids.tolist()
    opened = [i for i, t in enumerate(ids) if t in starts]
    roles = {vocab.special_id(r) for r in V.ROLE_TOKENS.values()}
    if len(opened) != 1 or roles.intersection(ids):  # a chat is not a pair
        return None
    a = opened[0]
    end_id = vocab.special_id(starts[ids[a]])
    b = ids.index(end_id, a) + 1 if end_id in ids[a:] else None
    if b is None:
        return None
    framing = {vocab.bos_id, vocab.eos_id}
    inside = torch.zeros(len(seq), dtype=torch.bool)
    inside[a:b] = True
    is_text = ~inside & ~torch.isin(seq.ids, torch.tensor(sorted(framing)))
    if not is_text.any():
        return None
    return _rebase(seq, inside, vocab), _rebase(seq, is_text, vocab)


def _rebase(seq: TokenSequence, keep: torch.Tensor, vocab: Vocabulary) -> TokenSequence:
    positions = seq.positions[keep]
    positions = positions - positions.min() + 1
    bos = TokenSequence(torch.tensor([vocab.bos_id]), torch.zeros(1, dtype=torch.long),
                        torch.zeros(1, 3, dtype=torch.long), torch.zeros(1))  # fmt: skip
    span = TokenSequence(seq.ids[keep], seq.modality[keep], positions, torch.ones(int(keep.sum())))
    return TokenSequence.cat([bos, span])


class PairItems(Dataset):
    """Draw ``i`` of the mixture as an alignment pair (media span, text); documents that are not
    pairs are refused when the stage starts (:func:`check_pairs`)."""

    def __init__(self, mixture: Mixture, sources: np.ndarray, documents: np.ndarray, vocab: Vocabulary) -> None:
        self.mixture, self.sources, self.documents, self.vocab = mixture, sources, documents, vocab

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i: int) -> tuple[TokenSequence, TokenSequence]:
        seq = self.mixture.datasets[int(self.sources[i])][int(self.documents[i])]
        pair = split_pair(seq, self.vocab)
        if pair is None:
            raise ConfigError(f"{self.mixture.paths[int(self.sources[i])]}: document {self.documents[i]} is not a pair")
        return pair


def check_pairs(mixture: Mixture, vocab: Vocabulary) -> None:
    """Every document of an align stage is one media span plus text, not a chat (read off the ids)."""
    opening = [vocab.special_id(t) for t in (V.IMAGE_START, V.AUDIO_START, V.VIDEO_START) if t in vocab.specials]
    roles = [vocab.special_id(r) for r in V.ROLE_TOKENS.values()]
    for path, dataset in zip(mixture.paths, mixture.datasets, strict=True):
        ids = np.asarray(dataset.arrays["ids"])
        starts = dataset.offsets[:-1]
        spans = np.add.reduceat(np.isin(ids, opening).astype(np.int64), starts)
        chats = np.add.reduceat(np.isin(ids, roles).astype(np.int64), starts)
        bad = np.flatnonzero((spans != 1) | (chats > 0) | (np.diff(dataset.offsets) == 0))
        if len(bad):
            raise ConfigError(
                f"{path}: an align stage needs media + text pairs (image + caption, speech + transcript, "
                f"sound + label); {len(bad)} of {len(dataset)} documents are not, the first is document {bad[0]}"
            )


def collate_pairs(items: Sequence[tuple[TokenSequence, TokenSequence]], vocab: Vocabulary, row_len: int) -> TrainBatch:
    """The n media spans and their n texts packed into rows of ``row_len`` for one forward pass.

    Span k's tokens carry document id k (media spans 0..n-1, texts n..2n-1), so attention stays
    inside a span and pooling gathers each span by its id. Packing (first fit, as for next-token
    rows) avoids padding short captions to the length of long speech spans.
    """
    spans = [m for m, _ in items] + [t for _, t in items]
    sizes = np.array([len(s) for s in spans])
    if sizes.max() > row_len:
        raise ConfigError(f"an align span has {sizes.max()} tokens, more than seq_len {row_len}")
    bins: list[list[int]] = []
    room: list[int] = []
    for k, size in enumerate(sizes.tolist()):  # first fit: the first row with room, else a new row
        r = next((r for r, left in enumerate(room) if size <= left), len(bins))
        if r == len(bins):
            bins.append([])
            room.append(row_len)
        bins[r].append(k)
        room[r] -= size
    rows, docs = [], []
    for picked in bins:
        rows.append(TokenSequence.cat([spans[k] for k in picked]))
        docs.append(torch.cat([torch.full((len(spans[k]),), k, dtype=torch.long) for k in picked]))
    batch = pad_batch(rows, vocab.pad_id)
    document_ids = torch.full(batch.ids.shape, -1, dtype=torch.long)
    for r, d in enumerate(docs):
        document_ids[r, : len(d)] = d
    return TrainBatch(batch.ids, batch.modality, batch.positions, batch.loss_weight, document_ids)


def loader(dataset: Dataset, indices: Sequence[int], batch_size: int, collate, *, workers: int = 0,
           pin_memory: bool = False) -> DataLoader:  # fmt: skip
    """Batches of the given item indices, in that order (the caller slices the plan for resume and ranks)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=list(indices), collate_fn=collate, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=4 if workers else None, persistent_workers=False,
    )  # fmt: skip
