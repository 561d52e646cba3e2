"""Training objectives, each written once.

* :func:`next_token_loss`: cross-entropy of predicting token i from tokens before it, weighted by
  ``loss_weight[i]`` (0 on prompts, padding and anything that is context only) and averaged over
  the total weight. :func:`next_token_loss_sum` gives the weighted sum and the weight instead, so
  that gradient accumulation and data parallelism can divide by the weight of the *whole* step.
* :class:`ContrastiveLoss`: symmetric InfoNCE between two sets of paired embeddings (image ↔ caption,
  speech ↔ transcript …) with a learned temperature (CLIP's ``logit_scale``).

Knows nothing of models or data loading: tensors in, scalars out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def token_losses(logits_BLV: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
    """``[B, L-1]``: the cross-entropy of predicting each token from the ones before it (fp32)."""
    B, L = ids_BL.shape
    losses = F.cross_entropy(logits_BLV[:, :-1].flatten(0, 1).float(), ids_BL[:, 1:].flatten(), reduction="none")
    return losses.view(B, L - 1)


def next_token_losses(logits_BLV: torch.Tensor, ids_BL: torch.Tensor, loss_weight_BL: torch.Tensor) -> torch.Tensor:
    """Σ weight · cross-entropy of each row ``[B]`` (the negative weighted log-likelihood of the row)."""
    return (token_losses(logits_BLV, ids_BL) * loss_weight_BL[:, 1:].float()).sum(1)


def losses_by_modality(losses_BL: torch.Tensor, trained_BL: torch.Tensor, modality_BL: torch.Tensor,
                       num_modalities: int) -> torch.Tensor:  # fmt: skip
    """``[M, 2]``: per modality code, the summed (unweighted) loss of the trained tokens and their
    count — summed over micro-batches and processes, then divided, for a per-modality mean."""
    losses, modality = losses_BL.detach()[trained_BL], modality_BL[trained_BL]
    tally = losses.new_zeros(num_modalities, 2)
    tally[:, 0].index_add_(0, modality, losses)
    tally[:, 1].index_add_(0, modality, torch.ones_like(losses))
    return tally


def next_token_loss_sum(
    logits_BLV: torch.Tensor, ids_BL: torch.Tensor, loss_weight_BL: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ weight · cross-entropy, Σ weight) over every predicted token."""
    return next_token_losses(logits_BLV, ids_BL, loss_weight_BL).sum(), loss_weight_BL[:, 1:].float().sum()


def next_token_loss(logits_BLV: torch.Tensor, ids_BL: torch.Tensor, loss_weight_BL: torch.Tensor) -> torch.Tensor:
    """Weighted next-token cross-entropy; 0 (with a gradient path) when nothing carries weight."""
    total, weight = next_token_loss_sum(logits_BLV, ids_BL, loss_weight_BL)
    return total / weight.clamp(min=1e-8)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE: row i of ``a`` belongs with row i of ``b`` and with no other row.

    The temperature is learned as ``logit_scale = log(1 / T)``, starting at T = 0.07 and clamped at
    100 (CLIP's choices), so it can sharpen as the embeddings align without blowing up.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log_scale = math.log(max_scale)

    def forward(self, a_BE: torch.Tensor, b_BE: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(a_BE.float(), dim=-1), F.normalize(b_BE.float(), dim=-1)
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        logits = scale * a @ b.T
        targets = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
