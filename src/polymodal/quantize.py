"""Weight-only quantization for inference, through torchao (``pip install 'polymodal[quantize]'``).

:func:`quantize_weights` replaces the weight of every linear layer of a model by an int8 copy with one
scale per output channel (torchao's ``Int8WeightOnlyConfig``): activations stay in the model's dtype,
and each matmul reads a quarter of the bytes. A model with tied embeddings gets its output projection
as a linear layer of its own first (the embedding table stays in full precision for the lookups), so
that the largest matmul of a decode step is quantized too. Quantized models are for generation and
serving: training and saving them are refused.

Measured by ``benchmarks/quantize.py`` (weight memory, decode speed, and the change in held-out accuracy).
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch
from torch import nn

from polymodal.errors import ConfigError

MODES = ("int8",)


def _torchao():  # noqa: ANN202
    """torchao's quantize_ and configs, imported quietly (its CUDA-only kernels log failures on a CPU)."""
    try:
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        with contextlib.redirect_stderr(io.StringIO()):
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ConfigError("quantization needs torchao: pip install 'polymodal[quantize]'") from None
    finally:
        logging.disable(level)
    return quantize_, Int8WeightOnlyConfig


def quantize_weights(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Quantize ``model``'s linear weights in place (``mode``: ``int8``) and return it, in eval mode."""
    if mode not in MODES:
        raise ConfigError(f"quantization mode must be one of {MODES}, got {mode!r}")
    if getattr(model, "quantized", None):
        raise ConfigError(f"this model is already quantized ({model.quantized})")
    quantize_, int8_config = _torchao()
    head = getattr(model, "head", "absent")
    if head is None and hasattr(model, "embed"):  # tied: a separate, quantizable output projection
        weight = model.embed.weight
        model.head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
        model.head.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    model.eval().requires_grad_(False)
    quantize_(model, int8_config(), filter_fn=lambda module, name: isinstance(module, nn.Linear))
    model.quantized = mode
    return model


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the weights of the linear layers (quantized ones: their int8 data and scales), the
    output projection included (a tied one is the embedding table)."""
    total = tensor_bytes(model.embed.weight) if getattr(model, "head", "absent") is None else 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += tensor_bytes(module.weight)
    return total


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor, or of the plain tensors inside a tensor subclass (torchao's quantized weights)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, nn.Parameter):
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(tensor_bytes(getattr(tensor, name)) for name in names)
