"""The sample document polymodal ships: a sentence, a small picture and a short sound.

Everything is generated here, deterministically, so the package carries no binary media and the
sample is the same on every machine. Used by ``polymodal tokenize --sample`` and ``polymodal
sample DIR``; it knows nothing about tokenizers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from polymodal.content import Audio, Document, Image, Text
from polymodal.files import write_text_atomic

SAMPLE_RATE = 16_000
DOCUMENT_FILENAME = "sample.json"


def sample_image(size: int = 64) -> Image:
    """A red circle over a blue square on white: colour, shape and position to talk about."""
    canvas = PILImage.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((size // 2, size // 2, size - 4, size - 4), fill=(40, 80, 220))
    draw.ellipse((4, 4, size // 2 + 4, size // 2 + 4), fill=(220, 30, 30))
    return Image(canvas, source="sample:image")


def sample_sound(seconds: float = 0.5, frequency: float = 440.0) -> Audio:
    """A short tone with a soft attack and release (no clicks), 16 kHz mono."""
    t = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float64) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    wave = 0.4 * envelope * np.sin(2 * np.pi * frequency * t)
    return Audio(wave.astype(np.float32), SAMPLE_RATE, source="sample:sound")


def sample_document() -> Document:
    """Text, then the picture, then text, then the sound: an interleaved document."""
    return Document.of(
        Text("A red circle above a blue square. "),
        sample_image(),
        Text(" The circle hums at 440 hertz: "),
        sample_sound(),
    )


def write_sample(directory: str | os.PathLike) -> Path:
    """Write the sample as ``sample.json`` plus its media files; returns the JSON file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    obj = sample_document().to_json(media_dir=directory)
    path = directory / DOCUMENT_FILENAME
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
    return path
