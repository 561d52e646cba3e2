"""Attribute probes: the judge of generated pictures.

A probe is a small convolutional classifier that reads one attribute of a shapes-world picture —
``colour`` and ``shape`` of a lone object, its ``position`` (the 3×3 cell), or the ``count`` of like
objects (1-4) — trained on pictures the generator draws from known ground truth, never on model
outputs. A text→image item names attributes ("two green triangles", "a red circle in the top left
corner"); a generated picture is right on an attribute when the probe reads the named value from it.
The probe's accuracy on pictures the generator draws *for the same prompts* is the ceiling printed
beside the model's: a model cannot be judged better than its judge reads real pictures.

Probes read pictures at :attr:`ImageProbes.size` pixels (others are resized), train in about three
minutes on a 2-core CPU, and are saved as safetensors with a JSON of their settings and held-out accuracies; the
built-in suite trains them once under ``$POLYMODAL_EVAL_HOME`` (like the suite itself).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import nn

from polymodal.content import Image
from polymodal.data.shapes.render import render_scene
from polymodal.data.shapes.world import POSITIONS
from polymodal.errors import ConfigError
from polymodal.eval.attributes import ATTRIBUTES, COUNT_WORDS, draw_scene
from polymodal.files import staging_directory, swap_directory, write_bytes_atomic, write_text_atomic

PROBES_FILENAME, PROBES_META = "probes.safetensors", "probes.json"


def _labels(rng: np.random.Generator, attribute: str) -> dict[str, str]:
    """Random ground truth for one training picture of ``attribute``."""
    if attribute == "count":
        return {"count": str(rng.choice(COUNT_WORDS))}
    return {"position": str(rng.choice(POSITIONS))}


def pixels(images: Sequence[Image | PILImage.Image], size: int) -> torch.Tensor:
    """``[N, 3, size, size]`` in [0, 1]: RGB, resized with area averaging."""
    out = []
    for image in images:
        pil = image.pixels if isinstance(image, Image) else image
        pil = pil.convert("RGB")
        if pil.size != (size, size):
            pil = pil.resize((size, size), PILImage.BOX)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


class _Probe(nn.Module):
    def __init__(self, classes: int, size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(48, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = 64 * (size // 8) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class ProbeSettings:
    size: int = 64  # at 32 px a small object's outline is a few pixels: the shape probe reads 42% (64 px: 87%)
    examples: int = 3000  # training pictures per attribute
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


class ImageProbes:
    """One probe per attribute of :data:`ATTRIBUTES`; :meth:`read` gives each picture's values."""

    def __init__(self, probes: dict[str, _Probe], settings: ProbeSettings, held_out: dict[str, float]) -> None:
        self.probes, self.settings, self.held_out = probes, settings, held_out

    @property
    def size(self) -> int:
        return self.settings.size

    @classmethod
    def train(cls, settings: ProbeSettings | None = None, *, progress: bool = False) -> ImageProbes:
        """Draw pictures with known attributes and fit each probe; held-out accuracy on 500 more."""
        settings = settings or ProbeSettings()
        generator = torch.Generator().manual_seed(settings.seed)
        probes, held_out = {}, {}
        for k, (attribute, values) in enumerate(ATTRIBUTES.items()):
            rng = np.random.default_rng([settings.seed, 7, k])
            x, y = _pictures(rng, attribute, settings.examples + 500, settings.size)
            train_x, train_y, test_x, test_y = x[500:], y[500:], x[:500], y[:500]
            torch.manual_seed(settings.seed + k)
            probe = _Probe(len(values), settings.size)
            optimizer = torch.optim.AdamW(probe.parameters(), lr=settings.lr, weight_decay=1e-4)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps)
            for step in range(settings.steps):
                pick = torch.randint(len(train_x), (settings.batch_size,), generator=generator)
                batch = train_x[pick]
                if step % 2:  # flips keep every attribute but position: flip the cell with the picture
                    batch = batch.flip(-1)
                    labels = _flipped(attribute, train_y[pick])
                else:
                    labels = train_y[pick]
                loss = F.cross_entropy(probe(batch), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            probe.eval()
            with torch.no_grad():
                held_out[attribute] = float((probe(test_x).argmax(-1) == test_y).float().mean())
            probes[attribute] = probe
            if progress:
                print(f"probe {attribute}: held-out accuracy {held_out[attribute]:.1%}")
        return cls(probes, settings, held_out)

    @torch.no_grad()
    def read(self, images: Sequence[Image | PILImage.Image], attributes: Sequence[str] | None = None) -> list[dict]:
        """Each picture's value of every attribute (or those given), as the probes read them."""
        if not images:
            return []
        x = pixels(images, self.size)
        out: list[dict] = [{} for _ in images]
        for attribute in attributes or ATTRIBUTES:
            picks = self.probes[attribute](x).argmax(-1).tolist()
            for row, pick in zip(out, picks, strict=True):
                row[attribute] = ATTRIBUTES[attribute][pick]
        return out

    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save

        folder = Path(folder)
        staging = staging_directory(folder)
        state = {f"{a}.{k}": v.contiguous() for a, p in self.probes.items() for k, v in p.state_dict().items()}
        write_bytes_atomic(staging / PROBES_FILENAME, save(state))
        meta = {"settings": self.settings.__dict__, "held_out": self.held_out, "attributes": ATTRIBUTES}
        write_text_atomic(staging / PROBES_META, json.dumps(meta, indent=2) + "\n")
        swap_directory(staging, folder, marker=PROBES_META)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ImageProbes:
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / PROBES_META).read_text())
            state = load_file(folder / PROBES_FILENAME)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{folder}: not a saved set of image probes ({exc})") from None
        if {a: tuple(v) for a, v in meta["attributes"].items()} != ATTRIBUTES:
            raise ConfigError(f"{folder}: these probes read other attributes; train them again")
        settings = ProbeSettings(**meta["settings"])
        probes = {}
        for attribute, values in ATTRIBUTES.items():
            probe = _Probe(len(values), settings.size)
            probe.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(attribute + ".")})
            probes[attribute] = probe.eval()
        return cls(probes, settings, meta["held_out"])


def _mirror(position: str) -> str:
    return position.replace("left", "\0").replace("right", "left").replace("\0", "right")


_MIRRORED = torch.tensor([POSITIONS.index(_mirror(p)) for p in POSITIONS])  # position -> its left-right mirror


def _flipped(attribute: str, labels: torch.Tensor) -> torch.Tensor:
    return _MIRRORED[labels] if attribute == "position" else labels


def _pictures(rng: np.random.Generator, attribute: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for _ in range(n):
        truth = _labels(rng, attribute)
        scene = draw_scene(rng, **truth)
        value = truth.get(attribute) or (scene.objects[0].colour if attribute == "colour" else scene.objects[0].shape)
        images.append(render_scene(scene, size=size * 2))  # drawn larger and reduced, as generated pictures are
        labels.append(ATTRIBUTES[attribute].index(value))
    return pixels(images, size), torch.tensor(labels)


PROBES_VERSION = 1  # bump when the probes' pictures or network change: installed probes are trained again


def load_probes(home: str | os.PathLike | None = None, *, progress: bool = False) -> ImageProbes:
    """The built-in probes, installed under ``$POLYMODAL_EVAL_HOME/probes`` (trained there on first use)."""
    from polymodal.eval.tasks import eval_home

    folder = Path(home or eval_home()) / f"probes-v{PROBES_VERSION}"
    if (folder / PROBES_META).is_file():
        return ImageProbes.load(folder)
    if progress:
        print(f"training the image probes once (about 3 minutes) -> {folder}")
    probes = ImageProbes.train(progress=progress)
    probes.save(folder)
    return probes
