"""Images: the :class:`Image` part, and reading PNG, JPEG and WebP safely.

Any PIL mode is brought to RGB (alpha composited over white, 16-bit grey rescaled rather than
clipped), and the pixel count is checked from the header before pixel data is decoded. Video frames
are Images too, so the video reader shares :func:`_check_pixels`.

This module knows nothing about audio, video containers, documents or tokens.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import PIL.Image
import PIL.ImageOps

from polymodal.content.limits import (
    _HEAD_BYTES,
    MediaLimits,
    PathLike,
    _checked_bytes,
    _checked_path,
    _decoder_errors,
    _formats_of,
    _limits,
    _reject_other_formats,
    _short_name,
    _unreadable,
)
from polymodal.errors import EmptyMediaError, MediaTooLargeError, UnsupportedMediaError

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

Detail = Literal["low", "high", "auto"]
DETAILS: tuple[str, ...] = get_args(Detail)


def _to_rgb(pixels: PIL.Image.Image) -> PIL.Image.Image:
    if pixels.mode == "RGB":
        return pixels
    if "A" in pixels.getbands() or "transparency" in pixels.info:
        rgba = pixels.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    if pixels.mode == "I" or pixels.mode.startswith("I;16"):
        # Pillow's own conversion clips 16-bit grey at 255 (mostly white); rescale instead.
        grey = np.asarray(pixels, dtype=np.float64) / 257.0
        return PIL.Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    return pixels.convert("RGB")


@dataclass(frozen=True, eq=False)
class Image:
    """An RGB image. Any PIL mode given is converted (alpha is composited over white).

    ``detail`` asks for a token budget, as OpenAI's ``image_url.detail`` does: ``"low"`` (the
    fewest tokens), ``"high"`` (as many as the image's size justifies) or ``"auto"`` (the
    tokenizer decides from size and content).
    """

    pixels: PIL.Image.Image
    source: str | None = None
    detail: Detail = "auto"

    def __post_init__(self) -> None:
        if self.detail not in DETAILS:
            raise ValueError(f"Image.detail must be one of {DETAILS}, got {self.detail!r}")
        if not isinstance(self.pixels, PIL.Image.Image):
            raise TypeError(f"Image.pixels must be a PIL image, got {type(self.pixels).__name__}")
        if self.pixels.width == 0 or self.pixels.height == 0:
            raise EmptyMediaError(f"image has zero size {self.pixels.size}", source=self.source)
        object.__setattr__(self, "pixels", _to_rgb(self.pixels))

    @property
    def width(self) -> int:
        return self.pixels.width

    @property
    def height(self) -> int:
        return self.pixels.height

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL's order."""
        return self.pixels.size

    def to_array(self) -> np.ndarray:
        """Pixels as a new uint8 array ``[H, W, 3]``."""
        return np.array(self.pixels, dtype=np.uint8)

    def to_png_bytes(self) -> bytes:
        """The image encoded as PNG (lossless)."""
        buffer = io.BytesIO()
        self.pixels.save(buffer, format="PNG")
        return buffer.getvalue()

    @classmethod
    def from_array(cls, array: np.ndarray, *, source: str | None = None) -> Image:
        """An image from a uint8 array ``[H, W, 3]``."""
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H, W, 3] array, got {array.dtype} {array.shape}")
        return cls(PIL.Image.fromarray(array, mode="RGB"), source=source)

    @classmethod
    def open(cls, path: PathLike, *, limits: MediaLimits | None = None) -> Image:
        """Read a PNG, JPEG or WebP file (format recognised by content)."""
        limits = _limits(limits)
        path = _checked_path(path, limits)
        return cls(_decode_image(path.read_bytes(), str(path), limits), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str | None = None, limits: MediaLimits | None = None) -> Image:
        """Decode an encoded PNG, JPEG or WebP; ``name`` labels errors and becomes the source."""
        limits = _limits(limits)
        data, source = _checked_bytes(data, name, limits)
        return cls(_decode_image(data, source, limits), source=name)

    def with_detail(self, detail: Detail) -> Image:
        """The same pixels with another token budget."""
        return replace(self, detail=detail)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return self.size == other.size and self.pixels.tobytes() == other.pixels.tobytes()

    __hash__ = None  # type: ignore[assignment]  # mutable pixel data

    def __repr__(self) -> str:
        return f"Image({self.width}x{self.height}, source={self.source!r})"


def _check_pixels(width: int, height: int, limit: int, source: str) -> None:
    if width * height > limit:
        raise MediaTooLargeError(
            f"{width}x{height} = {width * height} pixels is over the limit of {limit} pixels "
            f"(MediaLimits.max_image_pixels)",
            source=source,
        )


def _decode_image(data: bytes, source: str, limits: MediaLimits) -> PIL.Image.Image:
    """Decode PNG/JPEG/WebP bytes, checking the pixel count from the header before decoding."""
    found = _reject_other_formats(data[:_HEAD_BYTES], "image", source)
    if found is None:
        other = None
        with contextlib.suppress(Exception), PIL.Image.open(io.BytesIO(data)) as opened:
            other = opened.format  # Pillow may still know it (ICO, PPM, PSD...): name it
        if other:
            raise UnsupportedMediaError(
                f"{other} image is not a supported image format (supported image formats: {_formats_of('image')})",
                source=source,
            )
        raise _unreadable(data[:_HEAD_BYTES], "image", source, ValueError("unrecognised content"))
    with warnings.catch_warnings(), _decoder_errors(source, _short_name(found)):
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        pixels = PIL.Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[found]])
        _check_pixels(pixels.width, pixels.height, limits.max_image_pixels, source)
        pixels.load()  # LOAD_TRUNCATED_IMAGES stays False: truncation raises here
        return PIL.ImageOps.exif_transpose(pixels)  # show photos the way the camera meant
