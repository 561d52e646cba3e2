"""What a training step minimises, given the model and a batch: each objective says how to compute
its summed loss and the weight that sum is divided by (so that accumulation and data parallelism
can divide by the weight of the whole step).

* :class:`NextToken`: weighted next-token cross-entropy over packed rows (pretrain, instruct).
* :class:`Align`: symmetric InfoNCE between the pooled hidden states of a media span and of its
  text (image ↔ caption, speech ↔ transcript, sound ↔ label), both sides in one forward pass; the
  negatives of a pair are the other pairs of the same batch on the same process.

The numerical losses themselves live in :mod:`polymodal.train.losses`.
"""

from __future__ import annotations

import torch
from torch import nn

from polymodal.train.data import TrainBatch
from polymodal.train.losses import ContrastiveLoss, next_token_loss_sum


class NextToken(nn.Module):
    def weight(self, batch: TrainBatch) -> torch.Tensor:
        return batch.loss_weight[:, 1:].float().sum()

    def forward(self, model: nn.Module, batch: TrainBatch) -> torch.Tensor:
        logits = model(**batch.model_inputs())
        return next_token_loss_sum(logits, batch.ids, batch.loss_weight)[0]


class Align(nn.Module):
    """Rows ``[0, n)`` of an align batch are media spans, rows ``[n, 2n)`` their texts."""

    def __init__(self) -> None:
        super().__init__()
        self.contrastive = ContrastiveLoss()

    def weight(self, batch: TrainBatch) -> torch.Tensor:
        return torch.tensor(float(len(batch.ids) // 2))

    def forward(self, model: nn.Module, batch: TrainBatch) -> torch.Tensor:
        media, text = pooled(model, batch).chunk(2)
        return self.contrastive(media, text) * len(media)


def pooled(model: nn.Module, batch: TrainBatch) -> torch.Tensor:
    """Mean of the final hidden states over each row's tokens (its leading ``<|bos|>`` excluded)."""
    states = model(**batch.model_inputs(), hidden=True)
    keep = (batch.document_ids >= 0).clone()
    keep[:, 0] = False
    keep = keep.unsqueeze(-1).to(states.dtype)
    return (states * keep).sum(1) / keep.sum(1).clamp(min=1)
