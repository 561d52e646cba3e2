"""The content model: the parts a user hands to polymodal and gets back from it.

A :class:`Document` is an ordered list of :class:`Message` s (chat roles optional), each holding
:data:`Part` s — :class:`Text`, :class:`Image`, :class:`Audio` or :class:`Video` — in the order they
appear. This package also reads media files safely: formats are recognised by content (never by
file name alone), sizes, pixel counts, durations and video frame counts are checked against
:class:`MediaLimits` *before* anything large is decoded, and every decoder failure becomes a
:class:`~polymodal.errors.MediaError` that names the file.

Canonical forms, so downstream code never has to ask: images are RGB (alpha composited over
white), audio is float32 ``[channels, samples]`` in [-1, 1] at its native rate, video is frames
sampled at a chosen rate plus its audio track on the same clock (seconds from the start).

One module per concern, each importing only those before it in this list:

- ``limits``: :class:`MediaLimits`, recognising formats by content, checks shared by the readers
- ``image``, ``audio``, ``video``: each part type and its safe reader
- ``parts``: :class:`Text`, the :data:`Part` union and :func:`load_part`
- ``document``: :class:`Message`, :class:`Document` and the document's JSON form

Import from ``polymodal.content`` itself; the modules' underscored helpers are private to it.

This package knows nothing about tokens, vocabularies or models: tokenizers read these types, and
decoders of generated ids build them.
"""

from polymodal.content.audio import Audio
from polymodal.content.document import Document, Message, Role
from polymodal.content.image import Image
from polymodal.content.limits import (
    DEFAULT_LIMITS,
    MediaLimits,
    PathLike,
    check_media_file,
    media_extensions,
    media_kind_of,
)
from polymodal.content.parts import Part, Text, load_part
from polymodal.content.video import Video, VideoFrame

__all__ = [
    "DEFAULT_LIMITS",
    "Audio",
    "Document",
    "Image",
    "MediaLimits",
    "Message",
    "Part",
    "PathLike",
    "Role",
    "Text",
    "Video",
    "VideoFrame",
    "check_media_file",
    "load_part",
    "media_extensions",
    "media_kind_of",
]
