"""What every benchmark script shares: naming the machine and waiting for the device."""

from __future__ import annotations

import platform

import torch


def machine_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    """Wait until the device has finished its queued work (GPU work is asynchronous; a CPU's is not)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
