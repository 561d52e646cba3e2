"""The image tokenizer: a convolutional autoencoder with a finite-scalar quantizer (FSQ).

An image is resized to a square *bucket* (dynamic resolution, below), encoded to a grid of
``side / downsample`` codes per axis, and each grid cell is quantized to one of ``prod(levels)``
codes — the image range of the unified vocabulary. Decoding maps codes back to pixels.

Dynamic resolution: every preset has a few buckets (e.g. 32, 64 and 128 px → 4×4, 8×8 and 16×16
codes). ``detail="low"`` takes the smallest; ``"high"`` the largest that the image's own size
justifies (never upscaling past it); ``"auto"`` the smallest bucket that keeps the image within
``auto_psnr`` dB of its version at the largest justified bucket (capped at ``auto_max``), so small
or simple images cost fewer tokens. Images are stretched to the square bucket, not cropped.

This module knows nothing of the vocabulary or positions: it returns local codes and a Grid layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from polymodal.content import Image
from polymodal.errors import ConfigError
from polymodal.tokenizers.base import Grid, TokenSpan
from polymodal.tokenizers.neural import NeuralTokenizer, config_from_dict, cycle_examples
from polymodal.tokenizers.quantizers import FSQuantizer
from polymodal.tokenizers.semantic import CaptionWords, SemanticHead, semantic_loss
from polymodal.tokenizers.training import TrainConfig, TrainResult, train_autoencoder

Detail = Literal["low", "high", "auto"]


@dataclass(frozen=True, kw_only=True)
class ImageTokenizerConfig:
    downsample: int = 8  # pixels per code along each side
    width: int = 128  # channels of the network, which runs at the code grid's resolution
    blocks: int = 2  # residual blocks in the encoder and in the decoder
    latent_channels: int = 16  # encoder output, projected by FSQ to len(levels) dims
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels: the codebook is their product
    refine: int = 16  # channels of the full-resolution refinement after the decoder (0: none)
    buckets: tuple[int, ...] = (32, 64, 128)  # square sides an image may be resized to
    auto_max: int = 64  # the largest bucket detail="auto" picks
    auto_psnr: float = 30.0  # auto: smallest bucket whose down-up resample stays within this PSNR

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "buckets", tuple(sorted(self.buckets)))
        for name in ("downsample", "width", "latent_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"image tokenizer: {name} must be >= 1, got {getattr(self, name)}")
        if self.width % 8:
            raise ConfigError(f"image tokenizer: width must be a multiple of 8 (group norm), got {self.width}")
        bad = [b for b in self.buckets if b % self.downsample or b <= 0]
        if bad or not self.buckets:
            raise ConfigError(f"image tokenizer: buckets {bad or '[]'} must be positive multiples of {self.downsample}")
        if self.auto_max not in self.buckets:
            raise ConfigError(f"image tokenizer: auto_max {self.auto_max} must be one of the buckets {self.buckets}")

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        return tuple((b // self.downsample, b // self.downsample) for b in self.buckets)

    @classmethod
    def from_dict(cls, data: dict) -> ImageTokenizerConfig:
        return config_from_dict(cls, data, "image tokenizer")


def debug() -> ImageTokenizerConfig:
    """For tests: 16/32 px → 4×4/8×8 codes, trains in seconds."""
    return ImageTokenizerConfig(downsample=4, width=64, latent_channels=8, buckets=(16, 32), auto_max=32)


def tiny() -> ImageTokenizerConfig:
    """The CPU size: 64 px → 8×8 codes (also 32 px → 4×4, 128 px → 16×16); 1,000 codes.

    ``auto`` keeps 8×8 unless 4×4 loses almost nothing (40 dB): at 4×4 a small shape falls inside
    one code, and this codebook keeps its colour but not its outline."""
    return ImageTokenizerConfig(auto_psnr=40.0)


def base() -> ImageTokenizerConfig:
    """The "224-pixel image in 256 tokens" budget: 256 px → 16×16 codes (also 64 → 4×4, 128 → 8×8)."""
    return ImageTokenizerConfig(
        downsample=16,
        width=384,
        blocks=4,
        latent_channels=32,
        levels=(8, 8, 8, 5, 5),
        refine=32,
        buckets=(64, 128, 256),
        auto_max=256,
    )


_PRESETS = {"debug": debug, "tiny": tiny, "base": base}


def list_presets() -> list[str]:
    return list(_PRESETS)


def preset(name: str) -> ImageTokenizerConfig:
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown image tokenizer preset {name!r}; available: {list_presets()}") from None


# -- the network ----------------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class ImageAutoencoder(nn.Module):
    """pixels [B, 3, S, S] in [-1, 1] → latents [B, D, S/f, S/f] → FSQ codes → pixels.

    Each f×f patch is folded into channels (pixel unshuffle) so that all the work happens at the
    code grid's resolution — cheap enough to train on a CPU — and unfolded again at the end; a
    small full-resolution refinement removes the seams between patches.
    """

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        f, c = config.downsample, config.width
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(f),
            nn.Conv2d(3 * f * f, c, 1),
            *[ResBlock(c, c) for _ in range(config.blocks)],
            _norm(c), nn.SiLU(), nn.Conv2d(c, config.latent_channels, 1),
        )  # fmt: skip
        self.quantizer = FSQuantizer(config.levels, config.latent_channels)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.latent_channels, c, 3, padding=1),
            *[ResBlock(c, c) for _ in range(config.blocks)],
            _norm(c), nn.SiLU(), nn.Conv2d(c, 3 * f * f, 1),
            nn.PixelShuffle(f),
        )  # fmt: skip
        r = config.refine
        self.refine = (
            nn.Sequential(nn.Conv2d(3, r, 3, padding=1), nn.SiLU(), nn.Conv2d(r, 3, 3, padding=1)) if r else None
        )

    def _pixels(self, latents: torch.Tensor) -> torch.Tensor:
        coarse = self.decoder(latents)
        return coarse + self.refine(coarse) if self.refine is not None else coarse

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Integer codes ``[B, S/f, S/f]``."""
        return self.quantizer(self.encoder(pixels))[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._pixels(self.quantizer.decode_codes(codes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._pixels(self.quantizer(self.encoder(pixels))[0])


# -- pixels ⇄ tensors -------------------------------------------------------------------------------


def to_tensor(image: Image, side: int) -> torch.Tensor:
    """Resize (stretch) to ``side`` × ``side`` and scale to [-1, 1]: ``[3, side, side]``."""
    pixels = image.pixels if image.size == (side, side) else image.pixels.resize((side, side), PILImage.BICUBIC)
    array = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).permute(2, 0, 1)
    return array / 127.5 - 1.0


def to_image(pixels: torch.Tensor) -> Image:
    array = ((pixels.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image(PILImage.fromarray(array))


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of tensors in [-1, 1] (peak-to-peak range 2)."""
    mse = torch.mean((reference.clamp(-1, 1) - estimate.clamp(-1, 1)) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


# -- the tokenizer ----------------------------------------------------------------------------------


class ImageTokenizer(NeuralTokenizer):
    """Images ⇄ grids of FSQ codes; local ids ``0 .. prod(levels)-1``."""

    name: ClassVar[str] = "image-fsq"
    modality: ClassVar[str] = "image"
    config_cls = ImageTokenizerConfig
    model_cls = ImageAutoencoder

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        return self.config.grids

    def bucket(self, image: Image, detail: Detail = "auto") -> int:
        """The square side (pixels) this image is tokenized at; see the module docstring."""
        buckets = self.config.buckets
        justified = [b for b in buckets if b <= max(image.size)] or [buckets[0]]
        if detail == "low":
            return buckets[0]
        if detail == "high":
            return justified[-1]
        if detail != "auto":
            raise ValueError(f"detail must be 'low', 'high' or 'auto', got {detail!r}")
        candidates = [b for b in justified if b <= self.config.auto_max] or [buckets[0]]
        reference = to_tensor(image, candidates[-1])
        for side in candidates[:-1]:
            small = to_image(to_tensor(image, side)).pixels.resize((candidates[-1],) * 2, PILImage.BICUBIC)
            if psnr(reference, to_tensor(Image(small), candidates[-1])) >= self.config.auto_psnr:
                return side
        return candidates[-1]

    @torch.no_grad()
    def encode(self, part: Image, *, detail: Detail | None = None) -> TokenSpan:
        if not isinstance(part, Image):
            raise TypeError(f"the image tokenizer encodes Image parts, got {type(part).__name__}")
        side = self.bucket(part, detail or getattr(part, "detail", None) or "auto")
        codes = self.model.encode(to_tensor(part, side).unsqueeze(0).to(self.device))[0].cpu()
        return TokenSpan("image", codes.reshape(-1), Grid(*codes.shape))

    @torch.no_grad()
    def decode(self, span: TokenSpan) -> Image:
        if not isinstance(span.layout, Grid):
            raise ValueError("an image span needs a Grid layout (its grid token)")
        h, w = span.layout.height, span.layout.width
        if len(span) != h * w:
            raise ValueError(f"a {h}x{w} image needs {h * w} codes, got {len(span)}")
        pixels = self.model.decode(span.ids.reshape(1, h, w).to(self.device))[0].cpu()
        return to_image(pixels)

    @torch.no_grad()
    def reconstruct(self, images: Sequence[Image], side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Originals and reconstructions at ``side`` px, both ``[B, 3, side, side]`` in [-1, 1]."""
        batch = torch.stack([to_tensor(im, side) for im in images])
        return batch, self.model(batch.to(self.device)).cpu()

    @torch.no_grad()
    def code_appearance(self) -> torch.Tensor:
        """``[codes, 3·f·f]``: the pixels of each code's patch, decoded at the centre of a 3×3 grid of
        that code alone (the decoder sees its neighbours, so a patch in a field of itself)."""
        n, f = self.vocab_size, self.config.downsample
        codes = torch.arange(n, device=self.device).view(n, 1, 1).expand(n, 3, 3)
        pixels = torch.cat([self.model.decode(chunk) for chunk in codes.split(256)])
        return pixels[:, :, f : 2 * f, f : 2 * f].reshape(n, -1).cpu()

    # -- training ---------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        images: Iterable[Image],
        *,
        config: ImageTokenizerConfig | str = "tiny",
        train: TrainConfig | None = None,
        held_out: Sequence[Image] = (),
        init: ImageTokenizer | None = None,
        adapt: str = "all",
        captions: Sequence[str] | None = None,
        semantic: float = 0.0,
    ) -> tuple[ImageTokenizer, TrainResult]:
        """Train on a stream of images (cycled if finite), reporting held-out PSNR at every bucket.

        With ``init``, continue training that tokenizer (its config, its vocabulary) on these images:
        ``adapt`` is what trains (see :meth:`NeuralTokenizer.trainable_copy`). With ``semantic`` > 0,
        ``captions`` (one per image) add the semantic objective of :mod:`polymodal.tokenizers.semantic`
        at that weight beside reconstruction: the codes learn to show which words their picture's
        caption holds."""
        config = init.config if init is not None else preset(config) if isinstance(config, str) else config
        train = train or TrainConfig()
        torch.manual_seed(train.seed)  # the seed fixes the initial weights too
        model = init.trainable_copy(adapt) if init is not None else ImageAutoencoder(config)
        if semantic > 0:
            if captions is None or not isinstance(images, Sequence) or len(captions) != len(images):
                raise ConfigError("the semantic objective needs a list of images and one caption per image")
            words = CaptionWords(captions)
            net: nn.Module = _WithHead(model, SemanticHead(config.latent_channels, len(words)))
            batches = _captioned_batches(images, words.targets(captions), config, train.batch_size, seed=train.seed)
        else:
            net, batches = model, _batches(images, config, train.batch_size, seed=train.seed)

        def loss_fn(net: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:  # noqa: ANN001
            pixels, targets = batch if isinstance(batch, tuple) else (batch, None)
            autoencoder = _unwrap(net)
            latents = autoencoder.quantizer(autoencoder.encoder(pixels))[0]
            recon = autoencoder._pixels(latents)
            mse = torch.mean((recon - pixels) ** 2)
            loss = torch.mean(torch.abs(recon - pixels)) + mse
            figures = {"psnr": 10 * math.log10(4.0 / max(mse.item(), 1e-10))}
            if targets is not None:
                words_loss = semantic_loss(net.head, latents, targets)
                loss = loss + semantic * words_loss
                figures["words"] = words_loss.item()
            return loss, {"loss": loss.item(), **figures}

        evaluate = (lambda net: evaluate_psnr(cls(config, _unwrap(net)), held_out)) if held_out else None
        result = train_autoencoder(net, batches, loss_fn, train, evaluate=evaluate, description="image tokenizer")
        result.model = _unwrap(result.model)
        return cls(config, result.model), result

    def held_out_figures(self, images: Sequence[Image]) -> dict[str, float]:
        return evaluate_psnr(self, images)


def evaluate_psnr(tokenizer: ImageTokenizer, images: Sequence[Image]) -> dict[str, float]:
    """Held-out reconstruction PSNR at each bucket beside two fixed baselines.

    ``blur``: each code cell's exact mean colour, upsampled bilinearly (more bits than a code);
    ``palette``: the same with the mean quantized to as many colours as the codebook has codes —
    the non-learned tokenizer with the same token budget.
    """
    scores: dict[str, float] = {}
    levels = max(2, round(tokenizer.vocab_size ** (1 / 3)))
    for side in tokenizer.config.buckets:
        original, recon = tokenizer.reconstruct(images, side)
        small = torch.nn.functional.avg_pool2d(original, tokenizer.config.downsample)
        palette = torch.round((small + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
        blur, flat = (
            torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            for x in (small, palette)
        )
        scores[f"psnr@{side}"] = psnr(original, recon)
        scores[f"blur_psnr@{side}"] = psnr(original, blur)
        scores[f"palette_psnr@{side}"] = psnr(original, flat)
    return scores


class _WithHead(nn.Module):
    """The autoencoder and the semantic head, trained together (only the autoencoder is kept)."""

    def __init__(self, autoencoder: ImageAutoencoder, head: SemanticHead) -> None:
        super().__init__()
        self.autoencoder, self.head = autoencoder, head


def _unwrap(net: nn.Module) -> nn.Module:
    return net.autoencoder if isinstance(net, _WithHead) else net


def _captioned_batches(
    images: Sequence[Image], targets: torch.Tensor, config: ImageTokenizerConfig, batch_size: int, *, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (pixels, caption words) batches, each at one bucket size chosen at random."""
    rng = np.random.default_rng(seed)
    order = cycle_examples(range(len(images)), rng, "image")
    while True:
        side = int(rng.choice(config.buckets))
        chosen = [next(order) for _ in range(batch_size)]
        yield torch.stack([to_tensor(images[i], side) for i in chosen]), targets[chosen]


def _batches(
    images: Iterable[Image], config: ImageTokenizerConfig, batch_size: int, *, seed: int
) -> Iterator[torch.Tensor]:
    """Endless batches, each at one bucket size chosen at random (all sizes get trained)."""
    rng = np.random.default_rng(seed)
    stream = cycle_examples(images, rng, "image")
    while True:
        side = int(rng.choice(config.buckets))
        yield torch.stack([to_tensor(next(stream), side) for _ in range(batch_size)])


__all__ = ["ImageTokenizer", "ImageTokenizerConfig", "base", "debug", "evaluate_psnr", "list_presets", "preset", "tiny"]
