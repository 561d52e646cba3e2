"""Media limits, format recognition, and the checks every media reader shares.

:class:`MediaLimits` holds the ceilings checked before anything large is decoded. Formats are
recognised from a file's first bytes (:func:`_sniff`), never from its name alone; the name only
helps tell a corrupt file of a format polymodal reads from a file of some other format. The helpers
here do the checks that need no decoding (exists, is a file, byte size) and turn decoder failures
into :class:`~polymodal.errors.MediaError` s that name the file. :func:`check_media_file` is the
cheapest check of all, by ``stat`` and name only, for validating a whole dataset up front.

This module decodes nothing and knows nothing about the part types or documents: the image, audio
and video modules call it before and around their own decoders.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import av
import PIL.Image

from polymodal.errors import (
    ConfigError,
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    PolymodalError,
    UnsupportedMediaError,
)

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
    "audio": ("wav", "flac", "ogg", "mp3"),
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
_SUPPORTED_TEXT = "text (.txt, .md), images (PNG, JPEG, WebP), audio (WAV, FLAC, Ogg, MP3) and video (MP4, WebM)"
# What a file name claims, used only to tell "corrupt X" from "unrecognised" when content fails.
_EXTENSIONS = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".wav": "wav", ".mp3": "mp3",
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
# Cheap checks by name, for validating many files before any is opened


def media_kind_of(path: PathLike) -> str | None:
    """``"image"``, ``"audio"`` or ``"video"``: what a file's extension claims it holds, or None.

    Names only, for checks over many files before any is opened; the readers still recognise the
    format by content when they decode.
    """
    return _KIND_OF.get(_EXTENSIONS.get(Path(path).suffix.lower(), ""))


def media_extensions(kind: str) -> tuple[str, ...]:
    """The file extensions :func:`media_kind_of` maps to ``kind`` (``".png"``, ...)."""
    return tuple(ext for ext, fmt in _EXTENSIONS.items() if _KIND_OF[fmt] == kind)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def check_media_file(path: PathLike, kind: str, *, limits: MediaLimits | None = None) -> Path:
    """The checks a media file needs before it is opened, from one ``stat`` and its name.

    ``path`` must be an existing regular file (else :class:`~polymodal.errors.ConfigError`), not
    empty nor over ``limits.max_bytes``, and named with one of ``kind``'s extensions (else
    :class:`~polymodal.errors.UnsupportedMediaError`). Nothing is read, so this is cheap enough
    to run over a whole dataset; corrupt content is only found when the file is decoded.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file")
    claimed = media_kind_of(path)
    if claimed != kind:
        named = f"named like {_a(claimed)} file ({path.suffix})" if claimed else f"extension {path.suffix!r} is"
        raise UnsupportedMediaError(
            f"{named} not {_a(kind)} file; {kind} files are named {', '.join(media_extensions(kind))}",
            source=str(path),
        )
    _check_byte_size(stat.st_size, _limits(limits), str(path))
    return path
