"""Everything that spreads or speeds up a model, applied from outside it.

The model is written for one device. Here, and only here: the process group (``torchrun`` sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; NCCL on GPUs, gloo on CPUs), activation checkpointing of
each block, ``torch.compile``, and data parallelism — DDP, or FSDP2's ``fully_shard`` on every
block and then the root so that parameters, gradients and optimizer state are sharded.

Checkpoints hold *full* (unsharded) tensors keyed by parameter name, gathered with
``torch.distributed.checkpoint.state_dict``, whatever the strategy: a run saved by 4 FSDP processes
resumes on 1 process or under DDP, and the exported run is a plain model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.checkpoint import checkpoint

from polymodal.errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over every process (itself when alone)."""
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def average_grads(self, params) -> None:
        """Average the gradients of ``params`` over every process, as DDP does for the model's."""
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, local_rank)


def default_device(requested: str | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` when a GPU is present, else the CPU (or what ``requested`` names)."""
    if requested not in (None, "auto"):
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but PyTorch sees no CUDA device")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _blocks(model: nn.Module) -> list[nn.Module]:
    inner = getattr(model, "backbone", model)  # late fusion: the text backbone's blocks
    return list(inner.layers)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them."""
    for block in _blocks(model):
        if not getattr(block, "_recomputed", False):  # once, however many stages parallelize the model
            block.forward = partial(checkpoint, block.forward, use_reentrant=False)
            block._recomputed = True


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2: shard every block, then the root (embeddings, heads), in place; once.

    Build the optimizer *after* this: it must hold the sharded parameters."""
    from torch.distributed.fsdp import fully_shard

    if not is_sharded(model):
        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
    return model


def parallelize(model: nn.Module, distributed: Distributed, *, device: torch.device, strategy: str = "ddp",
                compile: bool = False, activation_checkpointing: bool = False) -> nn.Module:  # fmt: skip
    """The model as the training loop should call it; ``model`` itself keeps the weights to save.

    With ``fsdp`` the model is sharded in place (the first call; later calls find it sharded), so
    build optimizers after calling this. With ``ddp`` a new wrapper is made each call, so that it
    sees which parameters the current stage trains."""
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"parallel strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if distributed.world > 1 and strategy == "fsdp":
        shard(model)
    elif distributed.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: the align objective never reaches the output head
        model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    return torch.compile(model) if compile else model


# -- full state, whatever the strategy ------------------------------------------------------------------

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


def full_model_state(model: nn.Module, *, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The model's whole tensors by name; for a sharded model a collective call (every process must
    make it) that leaves them on rank 0 only unless ``everywhere``."""
    if not is_sharded(model):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))


def _trained(model: nn.Module, objective: nn.Module) -> nn.Module:
    # One root, so that the optimizer state is keyed by names: "model.layers.0...", "objective...".
    return nn.ModuleDict({"model": model, "objective": objective})


def optimizer_state(model: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name with whole tensors (collective when sharded)."""
    return get_optimizer_state_dict(_trained(model, objective), optimizer, options=_GATHER)


def load_optimizer_state(model: nn.Module, objective: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict) -> None:  # fmt: skip
    """Load what :func:`optimizer_state` saved, sharding it like the parameters (every process
    passes the whole state)."""
    set_optimizer_state_dict(_trained(model, objective), optimizer, state,
                             options=StateDictOptions(full_state_dict=True))  # fmt: skip
