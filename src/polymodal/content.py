"""The content model: the parts a user hands to polymodal and gets back from it.

A :class:`Document` is an ordered list of :class:`Message` s (chat roles optional), each holding
:data:`Part` s — :class:`Text`, :class:`Image`, :class:`Audio` or :class:`Video` — in the order they
appear. This module also reads media files safely: formats are recognised by content (never by
file name alone), sizes, pixel counts, durations and video frame counts are checked against
:class:`MediaLimits` *before* anything large is decoded, and every decoder failure becomes a
:class:`~polymodal.errors.MediaError` that names the file.

Canonical forms, so downstream code never has to ask: images are RGB (alpha composited over
white), audio is float32 ``[channels, samples]`` in [-1, 1] at its native rate, video is frames
sampled at a chosen rate plus its audio track on the same clock (seconds from the start).

This module knows nothing about tokens, vocabularies or models: tokenizers read these types, and
decoders of generated ids build them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeAlias, get_args

import av
import numpy as np
import PIL.Image
import PIL.ImageOps
import soundfile

from polymodal.errors import (
    ConfigError,
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    PolymodalError,
    UnsupportedMediaError,
)
from polymodal.files import write_bytes_atomic, write_text_atomic

PathLike: TypeAlias = str | os.PathLike

# ----------------------------------------------------------------------------------------------
# Limits


@dataclass(frozen=True, kw_only=True)
class MediaLimits:
    """Ceilings checked before media is decoded, so a hostile or mistaken input fails fast.

    ``max_bytes`` bounds the encoded size (checked before a file is opened); the others bound what
    decoding would produce and are checked from headers before pixel or sample data is read.
    """

    max_bytes: int = 512 * 2**20
    max_image_pixels: int = 8192 * 8192
    max_audio_seconds: float = 3600.0
    max_video_seconds: float = 3600.0
    max_video_frames: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_image_pixels", "max_video_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"MediaLimits.{name} must be a positive int, got {value!r}")
        for name in ("max_audio_seconds", "max_video_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"MediaLimits.{name} must be a positive number, got {value!r}")


DEFAULT_LIMITS = MediaLimits()

# ----------------------------------------------------------------------------------------------
# Recognising formats by content

# Formats polymodal reads, per kind, keyed by the names _sniff returns.
_READABLE = {
    "image": ("png", "jpeg", "webp"),
    "audio": ("wav", "flac", "ogg"),
    "video": ("mp4", "webm"),
}
_KIND_OF = {fmt: kind for kind, fmts in _READABLE.items() for fmt in fmts}
_FORMAT_NAMES = {
    "png": "PNG image", "jpeg": "JPEG image", "webp": "WebP image", "gif": "GIF image",
    "bmp": "BMP image", "tiff": "TIFF image", "avif": "AVIF image", "heif": "HEIF/HEIC image",
    "wav": "WAV audio", "flac": "FLAC audio", "ogg": "Ogg audio", "mp3": "MP3 audio",
    "aiff": "AIFF audio", "m4a": "M4A audio", "mp4": "MP4 video", "webm": "WebM/Matroska video",
    "avi": "AVI video", "pdf": "PDF document",
}  # fmt: skip
_SUPPORTED_TEXT = "text (.txt, .md), images (PNG, JPEG, WebP), audio (WAV, FLAC, Ogg) and video (MP4, WebM)"
# What a file name claims, used only to tell "corrupt X" from "unrecognised" when content fails.
_EXTENSIONS = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".wav": "wav",
    ".flac": "flac", ".ogg": "ogg", ".oga": "ogg", ".opus": "ogg", ".mp4": "mp4", ".m4v": "mp4",
    ".mov": "mp4", ".webm": "webm", ".mkv": "webm",
}  # fmt: skip
_HEAD_BYTES = 64


def _sniff(head: bytes) -> str | None:
    """The format that the first bytes of a file announce (magic numbers), or None."""
    riff, form = head[:4], head[8:12]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if riff == b"RIFF" and form == b"WEBP":
        return "webp"
    if riff in (b"RIFF", b"RF64") and form == b"WAVE":
        return "wav"
    if riff == b"RIFF" and form == b"AVI ":
        return "avi"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head[4:8] == b"ftyp":
        if form in (b"avif", b"avis"):
            return "avif"
        if form in (b"heic", b"heix", b"mif1", b"msf1"):
            return "heif"
        return "m4a" if form in (b"M4A ", b"M4B ") else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM") and head[6:10] == b"\0\0\0\0":
        return "bmp"
    if riff in (b"II*\0", b"MM\0*"):
        return "tiff"
    if riff == b"FORM" and form in (b"AIFF", b"AIFC"):
        return "aiff"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    if head.startswith(b"%PDF"):
        return "pdf"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The head may end inside a multi-byte character; only an early failure means binary.
        if exc.reason != "unexpected end of data":
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _short_name(fmt: str) -> str:
    return _FORMAT_NAMES[fmt].split()[0]


def _formats_of(kind: str) -> str:
    return ", ".join(_short_name(f) for f in _READABLE[kind])


def _reason(exc: BaseException) -> str:
    """A one-line reason from a decoder exception, without object reprs or errno noise."""
    text = getattr(exc, "strerror", None) if isinstance(exc, av.error.FFmpegError) else None
    text = text or str(exc) or type(exc).__name__
    text = re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>:?", "", text).strip()
    text = text.removeprefix("Error opening").strip(" :")
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _reject_other_formats(head: bytes, kind: str, source: str) -> str | None:
    """Return the sniffed format if it is one ``kind`` reads; raise if it is a known other format."""
    found = _sniff(head)
    if found is not None and found not in _READABLE[kind]:
        raise UnsupportedMediaError(
            f"{_FORMAT_NAMES[found]} is not a supported {kind} format (supported {kind} formats: {_formats_of(kind)})",
            source=source,
        )
    return found


def _unreadable(head: bytes, kind: str, source: str, exc: BaseException) -> MediaError:
    """The error for content a decoder could not even open: corrupt if it claims a format we
    read (by magic bytes, else by file name), unsupported otherwise."""
    found = _sniff(head)
    if found in _READABLE[kind]:
        return CorruptMediaError(f"truncated or corrupt {_short_name(found)}: {_reason(exc)}", source=source)
    if _looks_like_text(head):
        return UnsupportedMediaError(
            f"this is text, not a {kind} file (supported {kind} formats: {_formats_of(kind)})",
            source=source,
        )
    suffix = Path(source).suffix.lower()
    claimed = _EXTENSIONS.get(suffix)
    if claimed in _READABLE[kind]:
        return CorruptMediaError(
            f"corrupt {_short_name(claimed)}: named {suffix} but the content is not "
            f"{_short_name(claimed)} (first bytes {head[:8].hex(' ')})",
            source=source,
        )
    return UnsupportedMediaError(
        f"unrecognised {kind} format (first bytes {head[:8].hex(' ')}); supported {kind} formats: {_formats_of(kind)}",
        source=source,
    )


@contextlib.contextmanager
def _decoder_errors(source: str, what: str) -> Iterator[None]:
    """Turn any exception escaping a third-party decoder into a CorruptMediaError naming the file.

    Our own errors pass through, and so does MemoryError, which is not the file's fault.
    """
    try:
        yield
    except (PolymodalError, MemoryError):
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as exc:
        raise MediaTooLargeError(
            f"refused by Pillow's decompression-bomb guard: {_reason(exc)}", source=source
        ) from exc
    except Exception as exc:
        raise CorruptMediaError(f"truncated or corrupt {what}: {_reason(exc)}", source=source) from exc


# ----------------------------------------------------------------------------------------------
# Reading files and bytes


def _limits(limits: MediaLimits | None) -> MediaLimits:
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, MediaLimits):
        raise TypeError(f"limits must be a MediaLimits or None, got {type(limits).__name__}")
    return limits


def _check_byte_size(size: int, limits: MediaLimits, source: str) -> None:
    if size == 0:
        raise EmptyMediaError("file is empty (0 bytes)", source=source)
    if size > limits.max_bytes:
        raise MediaTooLargeError(
            f"{size} bytes is over the limit of {limits.max_bytes} bytes (MediaLimits.max_bytes)",
            source=source,
        )


def _checked_path(path: PathLike, limits: MediaLimits) -> Path:
    """``path`` as a Path, after the checks that need no decoding (exists, is a file, size)."""
    path = Path(path)
    if path.is_dir():
        raise UnsupportedMediaError("is a directory, not a media file", source=str(path))
    _check_byte_size(path.stat().st_size, limits, str(path))  # FileNotFoundError if missing
    return path


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(_HEAD_BYTES)


def _checked_bytes(data: bytes, name: str | None, limits: MediaLimits) -> tuple[bytes, str]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    source = name or "<bytes>"
    _check_byte_size(len(data), limits, source)
    return bytes(data), source


# ----------------------------------------------------------------------------------------------
# Parts


@dataclass(frozen=True)
class Text:
    """A run of text."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Text.text must be a str, got {type(self.text).__name__}")


_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


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
    """An RGB image. Any PIL mode given is converted (alpha is composited over white)."""

    pixels: PIL.Image.Image
    source: str | None = None

    def __post_init__(self) -> None:
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


@dataclass(frozen=True, eq=False)
class Audio:
    """A waveform: float32 ``[channels, samples]`` in [-1, 1] at ``sample_rate`` Hz.

    A 1-D array is taken as mono. The stored array is a read-only view.
    """

    waveform: np.ndarray
    sample_rate: int
    source: str | None = None

    def __post_init__(self) -> None:
        wave = np.asarray(self.waveform)
        if not np.issubdtype(wave.dtype, np.floating):
            raise TypeError(
                f"Audio.waveform must hold floats in [-1, 1], got {wave.dtype}; "
                f"scale integer PCM first (e.g. int16 / 32768)"
            )
        wave = wave.astype(np.float32, copy=False)
        if wave.ndim == 1:
            wave = wave[None, :]
        if wave.ndim != 2:
            raise ValueError(f"Audio.waveform must be [channels, samples], got shape {wave.shape}")
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise CorruptMediaError(f"sample rate must be a positive int, got {rate!r}", source=self.source)
        if wave.shape[0] == 0 or wave.shape[1] == 0:
            raise EmptyMediaError(f"audio has no samples (shape {wave.shape})", source=self.source)
        if not np.isfinite(wave).all():
            raise CorruptMediaError("audio holds NaN or infinite samples", source=self.source)
        peak = float(np.abs(wave).max())
        if peak > 1.0:
            raise ValueError(
                f"Audio samples must lie in [-1, 1], got peak {peak:.4g}; normalise or np.clip the waveform first"
            )
        wave = wave.view()
        wave.flags.writeable = False  # the dataclass is frozen; so is its data
        object.__setattr__(self, "waveform", wave)
        object.__setattr__(self, "sample_rate", int(rate))

    @property
    def num_channels(self) -> int:
        return self.waveform.shape[0]

    @property
    def num_samples(self) -> int:
        return self.waveform.shape[1]

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.sample_rate

    def to_mono(self) -> Audio:
        """A one-channel copy: the mean of the channels."""
        return Audio(self.waveform.mean(axis=0, keepdims=True), self.sample_rate, self.source)

    def to_wav_bytes(self) -> bytes:
        """16-bit PCM WAV. Samples on the 1/32768 grid (anything read from a 16-bit file)
        round-trip exactly; other values are rounded to it."""
        pcm = np.clip(np.rint(self.waveform * 32768.0), -32768, 32767).astype(np.int16)
        buffer = io.BytesIO()
        soundfile.write(buffer, pcm.T, self.sample_rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue()

    @classmethod
    def open(cls, path: PathLike, *, limits: MediaLimits | None = None) -> Audio:
        """Read a WAV, FLAC or Ogg (Vorbis/Opus) file (format recognised by content)."""
        limits = _limits(limits)
        path = _checked_path(path, limits)
        with path.open("rb") as f:
            return _decode_audio(f, _read_head(path), str(path), limits, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str | None = None, limits: MediaLimits | None = None) -> Audio:
        """Decode encoded WAV, FLAC or Ogg bytes; ``name`` labels errors and becomes the source."""
        limits = _limits(limits)
        data, source = _checked_bytes(data, name, limits)
        return _decode_audio(io.BytesIO(data), data[:_HEAD_BYTES], source, limits, name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Audio):
            return NotImplemented
        return self.sample_rate == other.sample_rate and np.array_equal(self.waveform, other.waveform)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Audio({self.num_channels} ch, {self.duration:.3f} s @ {self.sample_rate} Hz, source={self.source!r})"


_SOUNDFILE_FORMATS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "FLAC": "flac", "OGG": "ogg"}
# libsndfile's open log reports a WAV whose data chunk runs past the end of the file like this;
# it then silently shortens the audio, which would hide a truncated download.
_WAV_TRUNCATED = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


def _decode_audio(file: BinaryIO, head: bytes, source: str, limits: MediaLimits, name: str | None) -> Audio:
    _reject_other_formats(head, "audio", source)
    try:
        sound = soundfile.SoundFile(file)
    except Exception as exc:
        raise _unreadable(head, "audio", source, exc) from exc
    with sound:
        if sound.format not in _SOUNDFILE_FORMATS:
            raise UnsupportedMediaError(
                f"{sound.format_info} audio is not supported (supported audio formats: {_formats_of('audio')})",
                source=source,
            )
        what = _short_name(_SOUNDFILE_FORMATS[sound.format])
        if sound.samplerate <= 0:
            raise CorruptMediaError(f"corrupt {what}: sample rate {sound.samplerate}", source=source)
        if sound.frames == 0:
            raise EmptyMediaError("audio has no samples (zero length)", source=source)
        seconds = sound.frames / sound.samplerate
        if seconds > limits.max_audio_seconds:
            raise MediaTooLargeError(
                f"audio is {seconds:.1f} s long, over the limit of {limits.max_audio_seconds} s "
                f"(MediaLimits.max_audio_seconds)",
                source=source,
            )
        match = _WAV_TRUNCATED.search(sound.extra_info)
        if match and int(match.group(2)) < int(match.group(1)) < 0xFFFFFFF0:
            raise CorruptMediaError(
                f"truncated WAV: header declares {match.group(1)} data bytes, the file holds {match.group(2)}",
                source=source,
            )
        with _decoder_errors(source, what):
            samples_SC = sound.read(dtype="float32", always_2d=True)
        if len(samples_SC) < sound.frames:
            raise CorruptMediaError(
                f"truncated {what}: header declares {sound.frames} samples, only {len(samples_SC)} decode",
                source=source,
            )
    # Float files may carry overs past full scale; PCM conversion clips the same way.
    waveform = np.clip(np.ascontiguousarray(samples_SC.T), -1.0, 1.0)
    return Audio(waveform, sound.samplerate, source=name)


@dataclass(frozen=True)
class VideoFrame:
    """One sampled video frame, ``time`` seconds from the start of the video."""

    time: float
    image: Image

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image):
            raise TypeError(f"VideoFrame.image must be an Image, got {type(self.image).__name__}")
        if not (math.isfinite(self.time) and self.time >= 0):
            raise ValueError(f"VideoFrame.time must be a finite time >= 0, got {self.time!r}")
        object.__setattr__(self, "time", float(self.time))


@dataclass(frozen=True)
class Video:
    """Frames sampled from a video (in time order) plus its audio track on the same clock."""

    frames: tuple[VideoFrame, ...]
    audio: Audio | None
    duration: float
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        frames = tuple(self.frames)
        if not frames:
            raise EmptyMediaError("video has no frames", source=self.source)
        if not all(isinstance(f, VideoFrame) for f in frames):
            raise TypeError("Video.frames must all be VideoFrame")
        if any(b.time < a.time for a, b in zip(frames, frames[1:], strict=False)):
            raise ValueError("Video.frames must be in time order")
        if self.audio is not None and not isinstance(self.audio, Audio):
            raise TypeError(f"Video.audio must be Audio or None, got {type(self.audio).__name__}")
        if not (math.isfinite(self.duration) and self.duration >= frames[-1].time):
            raise ValueError(
                f"Video.duration must be finite and >= the last frame time {frames[-1].time}, got {self.duration!r}"
            )
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "duration", float(self.duration))

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        fps: float = 1.0,
        max_frames: int | None = None,
        limits: MediaLimits | None = None,
    ) -> Video:
        """Read an MP4 or WebM file, sampling ``fps`` frames per second.

        The number of frames this will produce is computed from the container's duration and
        checked against ``max_frames`` and ``limits.max_video_frames`` before any frame is
        decoded. A frame is never taken twice, so ``fps`` above the video's own rate yields
        each frame once.
        """
        limits = _limits(limits)
        path = _checked_path(path, limits)
        head = _read_head(path)
        return _decode_video(str(path), head, str(path), str(path), fps, max_frames, limits)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        name: str | None = None,
        fps: float = 1.0,
        max_frames: int | None = None,
        limits: MediaLimits | None = None,
    ) -> Video:
        """Decode encoded MP4 or WebM bytes; see :meth:`open`."""
        limits = _limits(limits)
        data, source = _checked_bytes(data, name, limits)
        head = data[:_HEAD_BYTES]
        return _decode_video(io.BytesIO(data), head, source, name, fps, max_frames, limits)

    def __repr__(self) -> str:
        size = f"{self.frames[0].image.width}x{self.frames[0].image.height}"
        audio = f"{self.audio.duration:.2f} s audio" if self.audio else "no audio"
        return f"Video({self.num_frames} frames {size}, {self.duration:.2f} s, {audio}, source={self.source!r})"


# FFmpeg demuxer per sniffed format. Naming it (rather than letting FFmpeg probe) means a file
# that is really, say, an HLS playlist can never make FFmpeg open other files or URLs.
_DEMUXERS = {"mp4": "mp4", "webm": "matroska"}
# Frame times are rounded by containers (WebM keeps milliseconds); a frame this close before a
# sample time still counts as "at" it.
_TIME_EPS = 1e-3


def _check_sampling_args(fps: float, max_frames: int | None) -> None:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames <= 0):
        raise ConfigError(f"max_frames must be a positive int or None, got {max_frames!r}")


def _frame_limit(max_frames: int | None, limits: MediaLimits) -> tuple[int, str]:
    if max_frames is not None and max_frames <= limits.max_video_frames:
        return max_frames, "max_frames"
    return limits.max_video_frames, "MediaLimits.max_video_frames"


def _too_many_frames(
    duration: float | None, fps: float, count: int, limit: int, limit_name: str, source: str
) -> MediaTooLargeError:
    length = f"video is {duration:.2f} s long; " if duration is not None else ""
    suggestion = f" (e.g. fps={limit / duration:.3g})" if duration else ""
    return MediaTooLargeError(
        f"{length}sampling at {fps:g} fps gives {count} frames, over the limit of {limit} "
        f"({limit_name}); lower fps{suggestion} or raise {limit_name}",
        source=source,
    )


def _planned_frames(duration: float, fps: float, stream: av.VideoStream) -> int:
    """How many frames sampling at ``fps`` will take, from headers alone (an upper bound
    for well-formed files; decoding re-checks as it goes)."""
    last_start = duration
    if stream.average_rate:
        # The last frame starts one frame period before the end; sample times after it get none.
        last_start = max(0.0, duration - 1.0 / float(stream.average_rate))
    count = math.floor(last_start * fps + _TIME_EPS) + 1
    if stream.frames:
        count = min(count, stream.frames)  # never more frames than the stream has
    return count


def _decode_video(
    file: str | BinaryIO,
    head: bytes,
    label: str,
    source: str | None,
    fps: float,
    max_frames: int | None,
    limits: MediaLimits,
) -> Video:
    """Open, check the plan (seconds, frames, pixels) from headers, then decode in one pass.

    ``label`` names the input in errors; ``source`` is what the Video and its parts remember.
    """
    _check_sampling_args(fps, max_frames)
    fmt = _reject_other_formats(head, "video", label)
    if fmt is None:
        raise _unreadable(head, "video", label, ValueError("unrecognised content"))
    try:
        container = av.open(file, mode="r", format=_DEMUXERS[fmt])
    except Exception as exc:
        raise _unreadable(head, "video", label, exc) from exc
    with container:
        if not container.streams.video:
            raise EmptyMediaError("has no video stream", source=label)
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        duration = container.duration / av.time_base if container.duration else None
        limit, limit_name = _frame_limit(max_frames, limits)
        if duration is not None:
            if duration > limits.max_video_seconds:
                raise MediaTooLargeError(
                    f"video is {duration:.1f} s long, over the limit of "
                    f"{limits.max_video_seconds} s (MediaLimits.max_video_seconds)",
                    source=label,
                )
            planned = _planned_frames(duration, fps, vstream)
            if planned > limit:
                raise _too_many_frames(duration, fps, planned, limit, limit_name, label)
        width, height = vstream.codec_context.width, vstream.codec_context.height
        _check_pixels(width, height, limits.max_image_pixels, label)
        with _decoder_errors(label, _short_name(fmt)):
            frames, audio, last_time = _sample_streams(
                container, vstream, astream, fps, (limit, limit_name), limits, label, source
            )
        declared = _declared_seconds(vstream, astream, duration)
    if not frames:
        raise EmptyMediaError("no video frame could be decoded", source=label)
    period = 1.0 / float(vstream.average_rate) if vstream.average_rate else 0.0
    ended = max(last_time + period, audio.duration if audio else 0.0)
    # Matroska and fragmented MP4 decode up to wherever a cut file stops, without an error.
    if declared is not None and declared - ended > max(0.5, 0.05 * declared):
        raise CorruptMediaError(
            f"truncated {_short_name(fmt)}: the header says {declared:.2f} s but the data ends at {ended:.2f} s",
            source=label,
        )
    return Video(tuple(frames), audio, max(duration or ended, frames[-1].time), source=source)


def _declared_seconds(
    vstream: av.VideoStream, astream: av.AudioStream | None, container_seconds: float | None
) -> float | None:
    """How long the decoded streams say they are (the container's figure may count other streams)."""
    seconds = [float(s.duration * s.time_base) for s in (vstream, astream) if s is not None and s.duration]
    return max(seconds) if seconds else container_seconds


def _sample_streams(
    container: av.container.InputContainer,
    vstream: av.VideoStream,
    astream: av.AudioStream | None,
    fps: float,
    frame_limit: tuple[int, str],
    limits: MediaLimits,
    label: str,
    source: str | None,
) -> tuple[list[VideoFrame], Audio | None, float]:
    """One demuxing pass: keep the frames at/after each sample time, and all audio.

    Returns the frames, the audio (sample 0 at video time 0) and the last decoded frame's time.
    """
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    vstream.thread_type = "AUTO"
    frames: list[VideoFrame] = []
    next_sample = 0  # index k of the next sample time k / fps
    decoded = 0
    last_time = 0.0
    chunks_CS: list[np.ndarray] = []
    audio_start: float | None = None
    resampler = av.AudioResampler(format="fltp")  # sample format only: keep rate and channels
    for packet in container.demux(*[s for s in (vstream, astream) if s is not None]):
        for frame in packet.decode():
            # Timestamps can be absent on odd streams; fall back on the nominal frame rate.
            t = float(frame.time) - origin if frame.time is not None else None
            if t is not None and t > limits.max_video_seconds:
                raise MediaTooLargeError(
                    f"video runs past {limits.max_video_seconds} s (MediaLimits.max_video_seconds)",
                    source=label,
                )
            if isinstance(frame, av.AudioFrame):
                audio_start = (t or 0.0) if audio_start is None else audio_start
                chunks_CS.extend(f.to_ndarray() for f in resampler.resample(frame))
                continue
            if t is None:
                t = decoded / float(vstream.average_rate or 1)
            decoded += 1
            last_time = max(last_time, t)
            if t < next_sample / fps - _TIME_EPS:
                continue
            if len(frames) >= frame_limit[0]:
                raise _too_many_frames(None, fps, len(frames) + 1, *frame_limit, label)
            _check_pixels(frame.width, frame.height, limits.max_image_pixels, label)
            t = max(t, 0.0)
            image = Image(frame.to_image(), source=f"{source}#t={t:.3f}" if source else None)
            frames.append(VideoFrame(t, image))
            next_sample = math.floor(t * fps + _TIME_EPS) + 1
    if astream is not None:
        chunks_CS.extend(f.to_ndarray() for f in resampler.resample(None))
    audio = _join_audio(chunks_CS, astream, audio_start or 0.0, source)
    return frames, audio, last_time


def _join_audio(
    chunks_CS: list[np.ndarray],
    astream: av.AudioStream | None,
    start: float,
    source: str | None,
) -> Audio | None:
    if astream is None or not chunks_CS:
        return None
    rate = astream.codec_context.sample_rate
    wave_CS = np.concatenate(chunks_CS, axis=1).astype(np.float32, copy=False)
    # Put sample 0 at video time 0: pad a late start with silence, drop encoder pre-roll.
    offset = round(start * rate)
    if offset > 0:
        wave_CS = np.concatenate([np.zeros((wave_CS.shape[0], offset), np.float32), wave_CS], 1)
    elif offset < 0:
        wave_CS = wave_CS[:, -offset:]
    if wave_CS.shape[1] == 0:
        return None
    return Audio(np.clip(wave_CS, -1.0, 1.0), rate, source=f"{source}#audio" if source else None)


Part: TypeAlias = Text | Image | Audio | Video
_PART_TYPES = (Text, Image, Audio, Video)


def load_part(
    path: PathLike,
    *,
    limits: MediaLimits | None = None,
    fps: float = 1.0,
    max_frames: int | None = None,
) -> Part:
    """Read any supported file as the matching part.

    ``.txt`` / ``.md`` files are UTF-8 text; everything else is recognised by its content (magic
    bytes), whatever its name. ``fps`` and ``max_frames`` apply when the file is a video.
    """
    limits = _limits(limits)
    path = _checked_path(path, limits)
    if path.suffix.lower() in (".txt", ".md"):
        data = path.read_bytes()
        try:
            return Text(data.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise CorruptMediaError(
                f"not valid UTF-8 text: {exc.reason} at byte {exc.start}", source=str(path)
            ) from exc
    head = _read_head(path)
    kind = _KIND_OF.get(_sniff(head) or "")
    if kind == "image":
        return Image.open(path, limits=limits)
    if kind == "audio":
        return Audio.open(path, limits=limits)
    if kind == "video":
        return Video.open(path, fps=fps, max_frames=max_frames, limits=limits)
    found = _sniff(head)
    what = _FORMAT_NAMES[found] if found else f"unrecognised content (first bytes {head[:8].hex(' ')})"
    raise UnsupportedMediaError(f"{what} is not supported; polymodal reads {_SUPPORTED_TEXT}", source=str(path))


# ----------------------------------------------------------------------------------------------
# Messages and documents

Role = Literal["system", "user", "assistant"]
_ROLES = get_args(Role)


def _as_part(part: Part | str) -> Part:
    if isinstance(part, str):
        return Text(part)
    if not isinstance(part, _PART_TYPES):
        raise TypeError(f"a part must be Text, Image, Audio, Video or str, got {type(part).__name__}")
    return part


@dataclass(frozen=True)
class Message:
    """Parts under one chat role, or under no role (``None``) in a plain document."""

    role: Role | None
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in _ROLES:
            raise ConfigError(f"unknown role {self.role!r}; expected one of {_ROLES} or None")
        parts = self.parts
        if isinstance(parts, (str, *_PART_TYPES)):
            parts = (parts,)
        parts = tuple(_as_part(p) for p in parts)
        if not parts:
            raise ConfigError("a message needs at least one part")
        object.__setattr__(self, "parts", parts)


@dataclass(frozen=True)
class Document:
    """Ordered messages of interleaved parts: plain (one or more role-less messages) or a chat
    (every message has a role) — never a mix."""

    messages: Sequence[Message]

    def __post_init__(self) -> None:
        messages = tuple(self.messages)
        if not messages:
            raise ConfigError("a document needs at least one message")
        for i, message in enumerate(messages):
            if not isinstance(message, Message):
                raise TypeError(f"messages[{i}] must be a Message, got {type(message).__name__}")
        roles = [m.role is None for m in messages]
        if any(roles) and not all(roles):
            plain = roles.index(True)
            raise ConfigError(
                "a document is either plain (every role None) or a chat (every message has a "
                f"role), not a mix: messages[{plain}] has no role but others do"
            )
        object.__setattr__(self, "messages", messages)

    @classmethod
    def of(cls, *parts: Part | str) -> Document:
        """A plain document: one role-less message holding ``parts`` (str becomes Text)."""
        return cls((Message(None, parts),))

    @classmethod
    def chat(cls, *messages: Message | tuple[Role, Part | str | Sequence[Part | str]]) -> Document:
        """A chat: ``Document.chat(("user", [image, "what is this?"]), ("assistant", "a cat"))``."""
        built = []
        for i, entry in enumerate(messages):
            if isinstance(entry, Message):
                built.append(entry)
                continue
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise TypeError(f"chat entry {i} must be a (role, content) pair, got {entry!r}")
            role, content = entry
            if role is None:
                raise ConfigError(f"chat entry {i} has no role; use Document.of for plain documents")
            built.append(Message(role, content))
        return cls(tuple(built))

    @property
    def parts(self) -> tuple[Part, ...]:
        """Every part of every message, in order."""
        return tuple(p for m in self.messages for p in m.parts)

    @property
    def is_chat(self) -> bool:
        return self.messages[0].role is not None

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    # -- JSON ------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: Any, *, base_dir: PathLike, limits: MediaLimits | None = None) -> Document:
        """Build a document from its JSON form; media paths are relative to ``base_dir``.

        ``{"messages": [{"role": ..., "content": [...] | "text"}]}``, or ``{"parts": [...]}``
        for one plain message. Unknown keys or part types raise ConfigError naming the JSON path.
        """
        reader = _JsonReader(Path(base_dir), _limits(limits))
        _expect_object(obj, "", {"messages", "parts"})
        if ("messages" in obj) == ("parts" in obj):
            raise ConfigError("a document needs exactly one of 'messages' or 'parts'")
        if "parts" in obj:
            return cls((Message(None, reader.content(obj["parts"], "parts")),))
        messages = _expect_list(obj["messages"], "messages")
        built = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            _expect_object(message, where, {"role", "content"}, required=("content",))
            role = message.get("role")
            if role is not None and role not in _ROLES:
                raise ConfigError(f"{where}.role: unknown role {role!r}; expected one of {_ROLES} or null")
            built.append(Message(role, reader.content(message["content"], f"{where}.content")))
        return cls(tuple(built))

    @classmethod
    def load(cls, path: PathLike, *, limits: MediaLimits | None = None) -> Document:
        """Read a document JSON file; media paths in it are relative to its folder."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
        try:
            return cls.from_json(obj, base_dir=path.parent, limits=limits)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_json(self, *, media_dir: PathLike, relative_to: PathLike | None = None) -> dict:
        """The JSON form, writing media to ``media_dir`` (images and frames as PNG, audio as WAV).

        Paths in the result are relative to ``relative_to`` (default ``media_dir``): pass the
        folder the JSON will be saved in, which is then ``from_json``'s ``base_dir``.
        """
        media_dir = Path(media_dir)
        base = Path(relative_to) if relative_to is not None else media_dir

        def write(name: str, data: bytes) -> str:
            write_bytes_atomic(media_dir / name, data)
            return Path(os.path.relpath(media_dir / name, base)).as_posix()

        messages = []
        for i, message in enumerate(self.messages):
            content = []
            for j, part in enumerate(message.parts):
                stem = f"m{i}_p{j}"
                if isinstance(part, Text):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, Image):
                    content.append({"type": "image", "path": write(f"{stem}.png", part.to_png_bytes())})
                elif isinstance(part, Audio):
                    content.append({"type": "audio", "path": write(f"{stem}.wav", part.to_wav_bytes())})
                else:
                    frames = [
                        {"time": f.time, "path": write(f"{stem}_f{k}.png", f.image.to_png_bytes())}
                        for k, f in enumerate(part.frames)
                    ]
                    audio = write(f"{stem}.wav", part.audio.to_wav_bytes()) if part.audio else None
                    content.append({"type": "video", "frames": frames, "audio": audio, "duration": part.duration})
            messages.append({"role": message.role, "content": content})
        return {"messages": messages}

    def save(self, path: PathLike) -> None:
        """Write ``path`` (JSON) and its media into ``<path stem>_media/`` beside it."""
        path = Path(path)
        obj = self.to_json(media_dir=path.parent / f"{path.stem}_media", relative_to=path.parent)
        write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# -- JSON reading helpers ------------------------------------------------------------------------

_PART_KEYS = {
    "text": {"type", "text"},
    "image": {"type", "path"},
    "audio": {"type", "path"},
    "video": {"type", "path", "fps", "max_frames", "frames", "audio", "duration"},
}


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _expect_object(obj: Any, where: str, allowed: set[str], required: Sequence[str] = ()) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where or 'document'}: expected a JSON object, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"{_join(where, str(key))}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in obj:
            raise ConfigError(f"{_join(where, key)}: missing")


def _expect_list(obj: Any, where: str) -> list:
    if not isinstance(obj, list):
        raise ConfigError(f"{where}: expected a JSON list, got {type(obj).__name__}")
    return obj


def _expect(obj: dict, key: str, types: type | tuple[type, ...], where: str) -> Any:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ConfigError(f"{_join(where, key)}: expected {names}, got {value!r}")
    return value


@dataclass(frozen=True)
class _JsonReader:
    """Reads the content lists of a document's JSON form, resolving paths against base_dir."""

    base_dir: Path
    limits: MediaLimits = field(default=DEFAULT_LIMITS)

    def content(self, obj: Any, where: str) -> tuple[Part, ...]:
        if isinstance(obj, str):
            return (Text(obj),)
        items = _expect_list(obj, where)
        if not items:
            raise ConfigError(f"{where}: empty; a message needs at least one part")
        return tuple(self.part(item, f"{where}[{i}]") for i, item in enumerate(items))

    def path(self, obj: dict, key: str, where: str) -> Path:
        path = Path(_expect(obj, key, str, where))
        return path if path.is_absolute() else self.base_dir / path

    def part(self, obj: Any, where: str) -> Part:
        if not isinstance(obj, dict) or "type" not in obj:
            raise ConfigError(f"{where}: expected an object with a 'type'")
        kind = obj["type"]
        if kind not in _PART_KEYS:
            raise ConfigError(f"{where}.type: unknown part type {kind!r} (known: {', '.join(_PART_KEYS)})")
        required = {"text": ("text",), "image": ("path",), "audio": ("path",)}.get(kind, ())
        _expect_object(obj, where, _PART_KEYS[kind], required)
        try:
            if kind == "text":
                return Text(_expect(obj, "text", str, where))
            if kind == "image":
                return Image.open(self.path(obj, "path", where), limits=self.limits)
            if kind == "audio":
                return Audio.open(self.path(obj, "path", where), limits=self.limits)
            return self.video(obj, where)
        except (MediaError, OSError) as exc:
            if hasattr(exc, "add_note"):  # Python 3.11+: say which JSON entry named the file
                exc.add_note(f"while reading {where} of the document JSON")
            raise

    def video(self, obj: dict, where: str) -> Video:
        if ("path" in obj) == ("frames" in obj):
            raise ConfigError(f"{where}: a video needs exactly one of 'path' (a file) or 'frames' (as to_json writes)")
        if "path" in obj:
            extra = {"audio", "duration"} & obj.keys()
            if extra:
                raise ConfigError(f"{_join(where, min(extra))}: only valid with 'frames'")
            fps = _expect(obj, "fps", (int, float), where) if "fps" in obj else 1.0
            max_frames = _expect(obj, "max_frames", int, where) if obj.get("max_frames") is not None else None
            try:
                _check_sampling_args(fps, max_frames)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
            return Video.open(self.path(obj, "path", where), fps=fps, max_frames=max_frames, limits=self.limits)
        extra = {"fps", "max_frames"} & obj.keys()
        if extra:
            raise ConfigError(f"{_join(where, min(extra))}: only valid with 'path'")
        entries = _expect_list(obj["frames"], f"{where}.frames")
        if len(entries) > self.limits.max_video_frames:
            raise MediaTooLargeError(
                f"{where}.frames lists {len(entries)} frames, over the limit of "
                f"{self.limits.max_video_frames} (MediaLimits.max_video_frames)"
            )
        times, images = [], []
        for k, entry in enumerate(entries):
            at = f"{where}.frames[{k}]"
            _expect_object(entry, at, {"time", "path"}, required=("time", "path"))
            times.append(_expect(entry, "time", (int, float), at))
            images.append(Image.open(self.path(entry, "path", at), limits=self.limits))
        audio = None
        if obj.get("audio") is not None:
            audio = Audio.open(self.path(obj, "audio", where), limits=self.limits)
        if "duration" in obj:
            duration = _expect(obj, "duration", (int, float), where)
        else:
            duration = max(max(times, default=0.0), audio.duration if audio else 0.0)
        try:
            return Video(tuple(map(VideoFrame, times, images)), audio, duration)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PolymodalError):
                raise
            raise ConfigError(f"{where}: {exc}") from exc
