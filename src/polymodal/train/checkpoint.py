"""Training checkpoints: everything needed to continue a run exactly where it stopped.

``OUT/checkpoints/step-00000300/`` holds the weights (``model.safetensors``), the optimizer, the
learning-rate schedule and any objective parameters (``optimizer.pt``), the RNG states
(``rng.pt``) and ``trainer.json`` (stage, step, tokens seen, the recipe). Each checkpoint is built
in a hidden folder and renamed into place, so a crash never leaves a half-written one; the newest
complete one is the one ``--resume`` reads. Older ones beyond ``keep`` are removed afterwards.

Knows nothing of data or the loop: state in, state out.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from polymodal.errors import ConfigError
from polymodal.files import staging_directory, swap_directory, write_bytes_atomic, write_text_atomic

CHECKPOINTS_DIRNAME = "checkpoints"
STATE_FILENAME = "trainer.json"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt", STATE_FILENAME)


@dataclass(frozen=True)
class TrainerState:
    stage: int  # index of the stage being trained
    step: int  # optimizer steps done in that stage
    global_step: int
    tokens: int  # tokens trained on so far, over all stages
    recipe: dict

    def to_dict(self) -> dict:
        return {"stage": self.stage, "step": self.step, "global_step": self.global_step, "tokens": self.tokens,
                "recipe": self.recipe}  # fmt: skip


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, state: TrainerState, model_state: dict, optimizer_state: dict, *, keep: int) -> Path:
    """Write ``step-NNNNNNNN`` atomically, then drop all but the newest ``keep`` checkpoints."""
    root = Path(out) / CHECKPOINTS_DIRNAME
    target = root / f"step-{state.global_step:08d}"
    staging = staging_directory(target)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        write_bytes_atomic(staging / "model.safetensors", save_safetensors(tensors))
        write_bytes_atomic(staging / "optimizer.pt", _torch_bytes(optimizer_state))
        write_bytes_atomic(staging / "rng.pt", _torch_bytes(rng_state()))
        write_text_atomic(staging / STATE_FILENAME, json.dumps(state.to_dict(), indent=2) + "\n")
        swap_directory(staging, target, marker=STATE_FILENAME)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (hidden staging folders and damaged ones are skipped)."""
    root = Path(out) / CHECKPOINTS_DIRNAME
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if all((p / name).is_file() for name in FILES)]
    return sorted(found, key=lambda p: p.name)


@dataclass
class Checkpoint:
    path: Path
    state: TrainerState

    def model_state(self, device: str = "cpu") -> dict:
        return load_file(str(self.path / "model.safetensors"), device=device)

    def optimizer_state(self) -> dict:
        return torch.load(self.path / "optimizer.pt", map_location="cpu", weights_only=False)

    def restore_rng(self) -> None:
        set_rng_state(torch.load(self.path / "rng.pt", weights_only=False))


def latest_checkpoint(out: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(out)
    if not checkpoints:
        return None
    path = checkpoints[-1]
    try:
        data = json.loads((path / STATE_FILENAME).read_text(encoding="utf-8"))
        return Checkpoint(path, TrainerState(**data))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path / STATE_FILENAME}: not a readable checkpoint state ({exc})") from exc
