"""Low-rank adapters (LoRA) for fine-tuning: ``W x + (alpha / rank) · B A x`` beside a frozen ``W``.

:func:`apply_lora` wraps the linear layers whose names end in one of ``targets`` (the attention and
feed-forward projections by default, every modality expert included) in :class:`LoRALinear`: ``A``
starts small and random, ``B`` at zero, so an adapted model starts out computing exactly what its base
did, and only ``A`` and ``B`` train. :func:`merge_lora` folds each adapter into its weight and puts the
plain linear layer back: the merged model is an ordinary model of the same config (what a run saves),
and gives the adapter's outputs up to float rounding. :func:`adapter_state` is the adapters alone
(a few hundred kilobytes for the ``tiny`` preset), saved beside a fine-tuned run.

A recipe asks for adapters with ``lora = {rank = 8, alpha = 16}`` (see :class:`LoRAConfig`). With
``base = "int8"`` the frozen weights under the adapters are held as int8 with one scale per output
row (:class:`Int8Weight`, the per-channel symmetric scheme of torchao's int8 weight-only
quantization): a quarter of the memory, for users whose GPU cannot hold the base in full precision
(QLoRA's idea at 8 bits). Merging then folds each adapter into the dequantized weight: the merged run
is the int8 base plus the adapters, which is what the adapters were trained against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import ConfigError

DEFAULT_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS  # last component of the linear layers' names
    dropout: float = 0.0
    base: str = "full"  # the frozen weights under the adapters: "full" (as loaded) or "int8"

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora: rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0 or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora: alpha must be > 0 and dropout in [0, 1), got {self.alpha}, {self.dropout}")
        if isinstance(self.targets, str) or not self.targets:
            raise ConfigError("lora: targets is a non-empty list of layer names, e.g. ['wq', 'wv']")
        if self.base not in ("full", "int8"):
            raise ConfigError(f"lora: base must be 'full' or 'int8', got {self.base!r}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRAConfig:
        allowed = ("rank", "alpha", "targets", "dropout", "base")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(f"lora: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
        return cls(**data)


class _Int8Matmul(torch.autograd.Function):
    """``x @ (q · scale)ᵀ`` that keeps only the int8 weight for the backward pass (a plain ``F.linear``
    would save the dequantized copy of every layer until then, which is the memory int8 is to save)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(q, scale)
        return F.linear(x, q.to(x.dtype) * scale.to(x.dtype)[:, None])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        q, scale = ctx.saved_tensors
        return grad @ (q.to(grad.dtype) * scale.to(grad.dtype)[:, None]), None, None


class Int8Weight(nn.Module):
    """A frozen linear layer held as int8 rows and one float scale per row (symmetric, absmax / 127)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ConfigError("lora: an int8 base is for the model's bias-free projections")
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("q", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.dtype = linear.weight.dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Int8Matmul.apply(x, self.q, self.scale)

    def dequantized(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device=self.q.device, dtype=self.dtype)
        linear.weight.data.copy_(self.q.float() * self.scale[:, None])
        return linear


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__()
        device = base.weight.device
        self.base: nn.Module = Int8Weight(base) if config.base == "int8" else base.requires_grad_(False)
        self.scale = config.alpha / config.rank
        self.lora_a = nn.Parameter(torch.empty(config.rank, base.in_features, device=device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, config.rank, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (self.dropout(x) @ self.lora_a.to(x.dtype).T) @ self.lora_b.to(x.dtype).T
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """The base layer (dequantized, for an int8 base) with the update folded into its weight."""
        base = self.base.dequantized() if isinstance(self.base, Int8Weight) else self.base
        delta = self.scale * (self.lora_b.float() @ self.lora_a.float())
        base.weight.data += delta.to(base.weight.dtype)
        return base


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
