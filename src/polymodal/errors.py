"""The exceptions polymodal raises on bad input.

Every error a user can cause (a corrupt file, an oversize request, a bad config) is one of these,
with a message that names the offending file, field or limit. They derive from ``ValueError`` so
that callers who only know the standard library still catch them.
"""

from __future__ import annotations


class PolymodalError(ValueError):
    """Base class of every user-facing error raised by polymodal."""


class ConfigError(PolymodalError):
    """A config, preset name or saved artefact (vocab.json, tokenizer files) is invalid."""


class MediaError(PolymodalError):
    """A media input (image, audio, video) could not be used.

    ``source`` names where it came from (a path, or a caller-supplied name for bytes).
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class UnsupportedMediaError(MediaError):
    """The format is not one polymodal reads (e.g. a GIF, a text file named .png)."""


class CorruptMediaError(MediaError):
    """The file claims a supported format but cannot be decoded (truncated, garbage bytes)."""


class EmptyMediaError(MediaError):
    """The media holds nothing: a zero-size image, zero-length audio, a video with no frames."""


class MediaTooLargeError(MediaError):
    """The media exceeds a configured limit (pixels, seconds, frames or bytes)."""


class TokenizerNotAvailableError(PolymodalError):
    """A document needs a modality tokenizer that this vocabulary/run does not provide."""


class SequenceTooLongError(PolymodalError):
    """A token sequence exceeds the allowed length and truncation was not requested."""
