"""polymodal: native multimodal transformers — one model over one token space of text, image,
audio and video tokens. See DESIGN.md for the architecture; the public entry points are the content
types below, the vocabulary (:mod:`polymodal.vocab`) and the tokenizers (:mod:`polymodal.tokenizers`).
"""

from polymodal.content import Audio, Document, Image, MediaLimits, Message, Text, Video, load_part

__version__ = "0.1.0.dev0"

__all__ = ["Audio", "Document", "Image", "MediaLimits", "Message", "Text", "Video", "load_part", "__version__"]
