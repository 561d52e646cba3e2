"""Training objectives, each written once.

``next_token_loss``: cross-entropy of predicting token i from tokens before it, weighted by
``loss_weight[i]`` (0 on prompts, padding and anything that is context only) and averaged over the
total weight. Knows nothing of models or data loading: tensors in, a scalar out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits_BLV: torch.Tensor, ids_BL: torch.Tensor, loss_weight_BL: torch.Tensor) -> torch.Tensor:
    """Weighted next-token cross-entropy; 0 (with a gradient path) when nothing carries weight."""
    targets = ids_BL[:, 1:]
    weights = loss_weight_BL[:, 1:].to(logits_BLV.dtype)
    losses = F.cross_entropy(logits_BLV[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    total = weights.sum()
    return (losses * weights.flatten()).sum() / total.clamp(min=1e-8)
