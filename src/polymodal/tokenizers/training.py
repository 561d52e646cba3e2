"""One training loop for the media tokenizers' autoencoders (image and audio alike).

AdamW with warmup then cosine decay, gradient clipping, an exponential moving average of the
weights (the EMA copy is what gets saved: it reconstructs better than the raw weights), periodic
evaluation on held-out data, and a progress bar. It knows nothing about images or audio: the
caller supplies batches, a loss and an evaluation function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from polymodal.errors import ConfigError

LossFn = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass(kw_only=True)
class TrainConfig:
    """How long and how hard to train a tokenizer."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    eval_every: int = 500
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    model: nn.Module  # the EMA weights, in eval mode
    # one entry per evaluation: its held-out figures, and the mean training figures since the one
    # before ("train_loss" …)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to 10% of it at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train_autoencoder(
    model: nn.Module,
    batches: Iterator[torch.Tensor],
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    evaluate: EvalFn | None = None,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` on ``batches`` for ``config.steps`` steps; return its EMA copy and eval history."""
    torch.manual_seed(config.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}  # training figures since the last evaluation
    skipped = 0
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc=description, disable=not config.progress, dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss, metrics = loss_fn(model, next(batches))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{description}: loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if torch.isfinite(grad_norm):
            optimizer.step()
            ema.update_parameters(model)
        else:
            # A rare overflowing gradient (spectral losses near digital silence) would poison the
            # weights through AdamW's moments: skip that step rather than lose the run.
            skipped += 1
            if skipped > max(10, config.steps // 20):
                raise FloatingPointError(f"{description}: {skipped} steps had non-finite gradients; lower the lr")
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        for k, v in metrics.items():
            window.setdefault(k, []).append(v)
        last = step + 1 == config.steps
        if evaluate is not None and ((step + 1) % config.eval_every == 0 or last):
            ema.module.eval()
            with torch.no_grad():
                scores = {"step": float(step + 1), **evaluate(ema.module)}
            scores.update({f"train_{k}": sum(v) / len(v) for k, v in window.items()})
            window.clear()
            history.append(scores)
            bar.write(
                f"{description} step {step + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if k != "step")
            )
    bar.close()
    ema.module.eval()
    return TrainResult(ema.module, history, time.perf_counter() - start)
