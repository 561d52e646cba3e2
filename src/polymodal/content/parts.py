"""Parts: :class:`Text`, the :data:`Part` union of the four part types, and :func:`load_part`.

:func:`load_part` reads any supported file as the matching part: ``.txt`` / ``.md`` as UTF-8 text,
everything else recognised by its content and handed to the image, audio or video reader.

This module knows nothing about messages, roles or documents, and decodes no media itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from polymodal.content.audio import Audio
from polymodal.content.image import Image
from polymodal.content.limits import (
    _FORMAT_NAMES,
    _KIND_OF,
    _SUPPORTED_TEXT,
    MediaLimits,
    PathLike,
    _checked_path,
    _limits,
    _read_head,
    _sniff,
)
from polymodal.content.video import Video
from polymodal.errors import CorruptMediaError, UnsupportedMediaError


@dataclass(frozen=True)
class Text:
    """A run of text."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Text.text must be a str, got {type(self.text).__name__}")


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
