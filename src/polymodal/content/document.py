"""Documents: :class:`Message` s of parts under optional chat roles, the :class:`Document` that
orders them, and the document's JSON form.

``Document.from_json`` / ``Document.load`` read the JSON form (media paths relative to the JSON's
folder) and ``Document.check_json`` checks it without opening a media file; ``Document.to_json`` /
``Document.save`` write it, with images and frames as PNG and audio as WAV beside it. Mistakes in
the JSON are :class:`~polymodal.errors.ConfigError` s naming the JSON path
(``messages[1].content[0].type``), and a media error says which entry named the file.

This module knows nothing about file formats or decoding beyond calling the part readers, and
nothing about tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from polymodal.content.audio import Audio
from polymodal.content.image import DETAILS, Image
from polymodal.content.limits import DEFAULT_LIMITS, MediaLimits, PathLike, _limits, check_media_file
from polymodal.content.parts import _PART_TYPES, Part, Text
from polymodal.content.video import Video, VideoFrame, _check_sampling_args
from polymodal.errors import ConfigError, MediaError, MediaTooLargeError, PolymodalError
from polymodal.files import write_bytes_atomic, write_text_atomic

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
    """Parts under one chat role, or under no role (``None``) in a plain document.

    ``learn``: whether a model trains on this message's tokens. ``None`` is the usual rule: every
    token of a plain document, only what the assistant says in a chat. ``False`` makes a message
    context only (a caption's picture when the caption is the target), ``True`` a target."""

    role: Role | None
    parts: tuple[Part, ...]
    learn: bool | None = None

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in _ROLES:
            raise ConfigError(f"unknown role {self.role!r}; expected one of {_ROLES} or None")
        if self.learn is not None and not isinstance(self.learn, bool):
            raise ConfigError(f"learn must be True, False or None, got {self.learn!r}")
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
        return cls._from_json(obj, _JsonReader(Path(base_dir), _limits(limits)))

    @classmethod
    def check_json(cls, obj: Any, *, base_dir: PathLike, limits: MediaLimits | None = None) -> Document:
        """Check the JSON form as :meth:`from_json` reads it, without opening a media file.

        Every key, type and role is checked, and every media file must pass
        :func:`~polymodal.content.check_media_file` (exists, not empty, named as its part type).
        The result has the document's shape (messages, roles, part types) with 1-pixel / 1-sample
        stand-ins for the media: use it to count and classify, never for its content.
        """
        return cls._from_json(obj, _JsonReader(Path(base_dir), _limits(limits), decode=False))

    @classmethod
    def _from_json(cls, obj: Any, reader: _JsonReader) -> Document:
        _expect_object(obj, "", {"messages", "parts"})
        if ("messages" in obj) == ("parts" in obj):
            raise ConfigError("a document needs exactly one of 'messages' or 'parts'")
        if "parts" in obj:
            return cls((Message(None, reader.content(obj["parts"], "parts")),))
        messages = _expect_list(obj["messages"], "messages")
        built = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            _expect_object(message, where, {"role", "content", "learn"}, required=("content",))
            role, learn = message.get("role"), message.get("learn")
            if role is not None and role not in _ROLES:
                raise ConfigError(f"{where}.role: unknown role {role!r}; expected one of {_ROLES} or null")
            if learn is not None and not isinstance(learn, bool):
                raise ConfigError(f"{where}.learn: expected true, false or null, got {learn!r}")
            built.append(Message(role, reader.content(message["content"], f"{where}.content"), learn))
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
                    entry = {"type": "image", "path": write(f"{stem}.png", part.to_png_bytes())}
                    content.append(entry if part.detail == "auto" else {**entry, "detail": part.detail})
                elif isinstance(part, Audio):
                    content.append({"type": "audio", "path": write(f"{stem}.wav", part.to_wav_bytes())})
                else:
                    frames = [
                        {"time": f.time, "path": write(f"{stem}_f{k}.png", f.image.to_png_bytes())}
                        for k, f in enumerate(part.frames)
                    ]
                    audio = write(f"{stem}.wav", part.audio.to_wav_bytes()) if part.audio else None
                    content.append({"type": "video", "frames": frames, "audio": audio, "duration": part.duration})
            learn = {} if message.learn is None else {"learn": message.learn}
            messages.append({"role": message.role, "content": content, **learn})
        return {"messages": messages}

    def save(self, path: PathLike) -> None:
        """Write ``path`` (JSON) and its media into ``<path stem>_media/`` beside it."""
        path = Path(path)
        obj = self.to_json(media_dir=path.parent / f"{path.stem}_media", relative_to=path.parent)
        write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# -- JSON reading helpers ------------------------------------------------------------------------

_PART_KEYS = {
    "text": {"type", "text"},
    "image": {"type", "path", "detail"},
    "audio": {"type", "path"},
    "video": {"type", "path", "fps", "max_frames", "frames", "audio", "duration"},
}


def drop_conditioning(document: Document, *, keep_last: bool = True) -> Document:
    """The document with its conditioning removed, as classifier-free guidance needs it.

    The trainer swaps a training document for this with some probability (conditioning dropout);
    generation builds its unconditional branch the same way, so the two always agree. In a chat,
    every turn but the last becomes an empty user turn; in a plain document every part but the last
    becomes empty text. ``keep_last=False`` blanks everything (a prompt with no target yet).
    """
    if document.is_chat:
        last = [document.messages[-1]] if keep_last and document.messages[-1].role == "assistant" else []
        return Document([Message("user", (Text(""),)), *last])
    return Document.of("", document.parts[-1]) if keep_last else Document.of("")


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
    decode: bool = True  # False: check media files by name only and stand in for them

    def open(self, kind: str, obj: dict, key: str, where: str, **sampling: Any) -> Part:
        path = self.path(obj, key, where)
        if self.decode:
            reader = {"image": Image.open, "audio": Audio.open, "video": Video.open}[kind]
            return reader(path, limits=self.limits, **sampling)
        try:
            check_media_file(path, kind, limits=self.limits)
        except ConfigError as exc:
            raise ConfigError(f"{_join(where, key)}: {exc}") from exc
        source = str(path)
        if kind == "audio":
            return Audio(np.zeros(1, np.float32), 1, source=source)
        image = Image.from_array(np.zeros((1, 1, 3), np.uint8), source=source)
        return image if kind == "image" else Video((VideoFrame(0.0, image),), None, 0.0, source=source)

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
                detail = obj.get("detail", "auto")
                if detail not in DETAILS:
                    raise ConfigError(f"{where}.detail: must be one of {', '.join(DETAILS)}, got {detail!r}")
                return self.open("image", obj, "path", where).with_detail(detail)
            if kind == "audio":
                return self.open("audio", obj, "path", where)
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
            return self.open("video", obj, "path", where, fps=fps, max_frames=max_frames)
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
            images.append(self.open("image", entry, "path", at))
        audio = None
        if obj.get("audio") is not None:
            audio = self.open("audio", obj, "audio", where)
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
