"""What a training step minimises, given the model and a batch: each objective says how to compute
its summed loss (with, for next-token prediction, a per-modality tally for the logs) and the weight
that sum is divided by (so that accumulation and data parallelism can divide by the weight of the
whole step).

* :class:`NextToken`: weighted next-token cross-entropy over packed rows (pretrain, instruct), and
  the mean loss of each modality's tokens for the logs.
* :class:`Align`: symmetric InfoNCE between the pooled hidden states of a media span and of its
  text (image ↔ caption, speech ↔ transcript, sound ↔ label), every span of the batch packed into
  rows for one forward pass; the negatives of a pair are the other pairs of the same batch on the
  same process.

The numerical losses themselves live in :mod:`polymodal.train.losses`.
"""

from __future__ import annotations

import torch
from torch import nn

from polymodal.train.data import TrainBatch
from polymodal.train.losses import ContrastiveLoss, losses_by_modality, token_losses


class NextToken(nn.Module):
    """``forward`` gives the weighted loss sum and, for the logs, the loss of each modality's
    tokens (:func:`losses_by_modality`: what the model predicts, whatever its weight)."""

    def __init__(self, modalities: tuple[str, ...]) -> None:
        super().__init__()
        self.modalities = modalities  # names by modality code (the vocabulary's)

    def weight(self, batch: TrainBatch) -> torch.Tensor:
        return batch.loss_weight[:, 1:].float().sum()

    def forward(self, model: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        losses = token_losses(model(**batch.model_inputs()), batch.ids)
        weight = batch.loss_weight[:, 1:].float()
        tally = losses_by_modality(losses, weight > 0, batch.modality[:, 1:], len(self.modalities))
        return (losses * weight).sum(), tally


class Align(nn.Module):
    """An align batch packs n media spans (document ids 0..n-1) and their n texts (n..2n-1)."""

    def __init__(self) -> None:
        super().__init__()
        self.contrastive = ContrastiveLoss()

    def weight(self, batch: TrainBatch) -> torch.Tensor:
        return torch.tensor(float(int(batch.document_ids.max()) + 1) // 2)

    def forward(self, model: nn.Module, batch: TrainBatch) -> tuple[torch.Tensor, None]:
        media, text = pooled(model, batch).chunk(2)
        return self.contrastive(media, text) * len(media), None


def pooled(model: nn.Module, batch: TrainBatch) -> torch.Tensor:
    """``[documents, D]``: the mean final hidden state of each packed span, its leading ``<|bos|>`` excluded."""
    states = model(**batch.model_inputs(), hidden=True)
    docs = batch.document_ids
    first = torch.ones_like(docs, dtype=torch.bool)
    first[:, 1:] = docs[:, 1:] != docs[:, :-1]  # a span's first token is its <|bos|>
    keep = (docs >= 0) & ~first
    n = int(docs.max()) + 1
    total = states.new_zeros(n, states.shape[-1]).index_add_(0, docs[keep], states[keep])
    count = torch.zeros(n, device=docs.device).index_add_(0, docs[keep], torch.ones_like(docs[keep], dtype=torch.float))
    return total / count.clamp(min=1).unsqueeze(-1).to(total.dtype)
