"""Tiny, exact modality tokenizers for testing the document layer (not shipped).

They follow the real protocol — encode/decode/save/load — so the document tokenizer, the registry
and lazy loading are exercised exactly as with the trained tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image as PILImage

from polymodal.content import Audio, Image
from polymodal.tokenizers import register_tokenizer, write_tokenizer_config
from polymodal.tokenizers.base import Grid, Timed, TokenSpan

LOADS: list[str] = []  # every load() call, so tests can check what was loaded lazily


class ToyImageTokenizer:
    """Resize to a 2x2 grid and quantize each pixel's colour to 4 levels per channel (64 codes)."""

    name: ClassVar[str] = "toy-image"
    modality: ClassVar[str] = "image"
    vocab_size = 64
    grids = ((2, 2),)

    encoded = 0  # how many images were encoded, so tests can check that work was refused up front

    def encode(self, part: Image) -> TokenSpan:
        ToyImageTokenizer.encoded += 1
        small = np.asarray(part.pixels.resize((2, 2), PILImage.BILINEAR), dtype=np.int64) // 64
        codes = small[..., 0] * 16 + small[..., 1] * 4 + small[..., 2]
        return TokenSpan("image", torch.from_numpy(codes.reshape(-1)), Grid(2, 2))

    def decode(self, span: TokenSpan) -> Image:
        h, w = span.layout.height, span.layout.width
        codes = span.ids.numpy().reshape(h, w)
        rgb = np.stack([codes // 16, (codes // 4) % 4, codes % 4], axis=-1) * 64 + 32
        return Image(PILImage.fromarray(rgb.astype(np.uint8)))

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        write_tokenizer_config(directory, self.name, {"modality": self.modality})

    @classmethod
    def load(cls, directory) -> ToyImageTokenizer:
        LOADS.append(cls.name)
        json.loads((Path(directory) / "tokenizer_config.json").read_text())
        return cls()


class ToyAudioTokenizer:
    """25 tokens/s: the RMS of each 40 ms frame of 16 kHz mono, quantized to 32 levels."""

    name: ClassVar[str] = "toy-audio"
    modality: ClassVar[str] = "audio"
    vocab_size = 32
    rate = 25.0
    tokens_per_second = 25.0

    def encode(self, part: Audio) -> TokenSpan:
        wave = part.to_mono().waveform[0]
        hop = part.sample_rate // 25
        n = max(1, len(wave) // hop)
        frames = np.resize(wave, n * hop).reshape(n, hop)
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
        return TokenSpan("audio", torch.from_numpy(np.minimum(31, (rms * 64).astype(np.int64))), Timed(self.rate))

    def decode(self, span: TokenSpan) -> Audio:
        levels = span.ids.numpy().astype(np.float32) / 64
        return Audio(np.repeat(levels, 640), 16_000)

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        write_tokenizer_config(directory, self.name, {"modality": self.modality})

    @classmethod
    def load(cls, directory) -> ToyAudioTokenizer:
        LOADS.append(cls.name)
        return cls()


register_tokenizer("toy-image", "toys:ToyImageTokenizer")
register_tokenizer("toy-audio", "toys:ToyAudioTokenizer")
