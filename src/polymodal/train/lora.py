"""Low-rank adapters (LoRA) for fine-tuning: ``W x + (alpha / rank) · B A x`` beside a frozen ``W``.

:func:`apply_lora` wraps the linear layers whose names end in one of ``targets`` (the attention and
feed-forward projections by default, every modality expert included) in :class:`LoRALinear`: ``A``
starts small and random, ``B`` at zero, so an adapted model starts out computing exactly what its base
did, and only ``A`` and ``B`` train. :func:`merge_lora` folds each adapter into its weight and puts the
plain linear layer back: the merged model is an ordinary model of the same config (what a run saves),
and gives the adapter's outputs up to float rounding. :func:`adapter_state` is the adapters alone
(a few hundred kilobytes for the ``tiny`` preset), saved beside a fine-tuned run.

A recipe asks for adapters with ``lora = {rank = 8, alpha = 16}`` (see :class:`LoRAConfig`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from polymodal.errors import ConfigError

DEFAULT_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS  # last component of the linear layers' names
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora: rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora: alpha must be > 0 and dropout in [0, 1), got {self.alpha}, {self.dropout}")
        if isinstance(self.targets, str) or not self.targets:
            raise ConfigError("lora: targets is a non-empty list of layer names, e.g. ['wq', 'wv']")
        object.__setattr__(self, "targets", tuple(self.targets))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRAConfig:
        unknown = sorted(set(data) - {"rank", "alpha", "targets", "dropout"})
        if unknown:
            raise ConfigError(f"lora: unknown key {unknown[0]!r} (allowed: rank, alpha, targets, dropout)")
        return cls(**data)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = config.alpha / config.rank
        self.lora_a = nn.Parameter(torch.empty(config.rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, config.rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (self.dropout(x) @ self.lora_a.to(x.dtype).T) @ self.lora_b.to(x.dtype).T
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight."""
        delta = self.scale * (self.lora_b.float() @ self.lora_a.float())
        self.base.weight.data += delta.to(self.base.weight.dtype)
        return self.base


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap ``model``'s target linear layers in place; freeze every other parameter. Returns ``model``."""
    found = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in config.targets:
                setattr(module, child_name, LoRALinear(child, config))
                found.append(f"{name}.{child_name}" if name else child_name)
    if not found:
        raise ConfigError(f"lora: no linear layer is named one of {list(config.targets)}")
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in f".{name}")
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer, in place: a plain model again. Returns ``model``."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' parameters by name (``….lora_a`` / ``….lora_b``)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if ".lora_" in f".{name}"}
