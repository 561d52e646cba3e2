"""Readers for a user's own data on disk: each item becomes a :class:`~polymodal.content.Document`.

Four formats (the ``kind`` of :func:`read_documents` and :func:`check_source`)::

    kind               on disk                                               documents (default)
    image_captions     images + captions.jsonl or captions.csv               Image, Text    image->text
    audio_transcripts  audio + transcripts.jsonl/.csv (or captions.*)        Audio, Text    audio->text
    video_captions     videos + captions.jsonl or captions.csv               Video, Text    video->text
    documents          one .jsonl file, a document per line                  as written

A captions or transcripts row names a media file relative to the index file's folder and its text:
``{"file": "cat.png", "text": "a cat"}`` per JSONL line, or a CSV with the header ``file,text``.
A documents line is exactly what :meth:`Document.from_json <polymodal.content.Document.from_json>`
reads, with media paths relative to the JSONL file's folder.

A caption document trains what its direction asks for: in ``image->text`` the caption is the
target and the picture its context (no loss on the picture's codes, as instruction tuning puts
none on the prompt); ``learn="all"`` also trains the input (the model learns to predict the
pictures' codes too). ``kind="auto"`` tells them apart: a
``.jsonl`` file is documents; a folder with ``captions.*`` holds captions of whichever modality its
rows name (by extension); a folder with ``transcripts.*`` holds audio.

Every reader first checks the whole source, as :func:`check_source` does, before it returns: the
index parses, rows have exactly the expected keys and non-empty text, and every media file exists,
is not empty and is named as its modality. That takes one ``stat`` per file and decodes nothing, so
it is quick on big folders. Media are decoded one document at a time as the iterator is consumed;
a corrupt file then raises the content model's :class:`~polymodal.errors.MediaError` naming the
file and the row that named it. Every error here names the index file and line (``file:line:``).

This module knows nothing about tokenizers, vocabularies or models: it only builds documents, and
the directions it reports (``"image->text"``) are read off the documents' shape.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from polymodal.content import (
    Audio,
    Document,
    Image,
    MediaLimits,
    Message,
    Part,
    PathLike,
    Text,
    Video,
    check_media_file,
    media_extensions,
    media_kind_of,
)
from polymodal.errors import ConfigError, MediaError, PolymodalError, UnsupportedMediaError

Kind = Literal["auto", "documents", "image_captions", "audio_transcripts", "video_captions"]
FORMATS = ("documents", "image_captions", "audio_transcripts", "video_captions")
_FORMAT_OF = {"image": "image_captions", "audio": "audio_transcripts", "video": "video_captions"}
_MODALITY_OF = {fmt: modality for modality, fmt in _FORMAT_OF.items()}
_CAPTIONS = ("captions.jsonl", "captions.csv")
_TRANSCRIPTS = ("transcripts.jsonl", "transcripts.csv")
_COLUMNS = ("file", "text")
# The directions a captions folder can be read in; "speech" and "sound" are names for audio.
_DIRECTIONS = {
    "image": ("image->text", "text->image"),
    "audio": ("audio->text", "text->audio"),
    "video": ("video->text",),
}
_CAPTION_OPTIONS = ("direction", "as_chat", "instruction", "fps", "max_frames", "learn")
LEARN = ("target", "all")  # what a caption document trains: its second part alone, or both
_ALIASES = {"speech": "audio", "sound": "audio"}
_PART_MODALITY = {Text: "text", Image: "image", Audio: "audio", Video: "video"}


@dataclass(frozen=True)
class SourceSummary:
    """What :func:`check_source` found, before any media was decoded."""

    format: str  # one of FORMATS
    source: Path  # the folder or file given
    index: Path  # the captions/transcripts file, or the documents JSONL itself
    items: int  # how many documents reading yields
    modalities: tuple[str, ...]  # sorted: ("image", "text")
    directions: tuple[str, ...]  # sorted: ("image->text",); see directions_of

    def __str__(self) -> str:
        return (
            f"{self.format}: {self.items} document{'' if self.items == 1 else 's'} from {self.index} "
            f"(modalities {', '.join(self.modalities)}; directions {', '.join(self.directions) or 'none'})"
        )


def directions_of(document: Document) -> tuple[str, ...]:
    """The directions a document trains, sorted: ``"<inputs>-><output>"`` for every part the model
    learns to predict (every part after the first of a plain document, every assistant part of a
    chat, as each message's ``learn`` says), the inputs being the modalities of everything before it."""
    seen: set[str] = set()
    found: set[str] = set()
    for message in document.messages:
        learned = message.learn if message.learn is not None else not document.is_chat or message.role == "assistant"
        for part in message.parts:
            modality = _PART_MODALITY[type(part)]
            if learned and seen:
                found.add(f"{'+'.join(sorted(seen))}->{modality}")
            seen.add(modality)
    return tuple(sorted(found))


# -- public entry points ---------------------------------------------------------------------------


def read_documents(
    source: PathLike,
    *,
    kind: Kind = "auto",
    direction: str | None = None,
    as_chat: bool = False,
    instruction: str | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    learn: str | None = None,
    limits: MediaLimits | None = None,
) -> Iterator[Document]:
    """Documents from a captions/transcripts folder or a documents JSONL file, decoded lazily.

    The whole source is checked first (see :func:`check_source`), so a bad row fails here, not
    hours into training. ``direction``, ``as_chat`` and ``instruction`` shape caption documents
    (see :func:`read_image_captions`); ``fps`` and ``max_frames`` apply to videos only. Options
    that do not apply to the source are an error, never ignored.
    """
    options = _Options(direction, as_chat, instruction, fps, max_frames, learn, limits)
    return _plan(Path(source), kind, options).documents()


def check_source(
    source: PathLike,
    *,
    kind: Kind = "auto",
    direction: str | None = None,
    as_chat: bool = False,
    instruction: str | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    learn: str | None = None,
    limits: MediaLimits | None = None,
) -> SourceSummary:
    """Check a source as :func:`read_documents` would read it, decoding nothing, and describe it.

    Raises :class:`~polymodal.errors.ConfigError` (or the fitting
    :class:`~polymodal.errors.MediaError`: unsupported extension, empty or oversize file) naming
    the index file and line for: a missing folder or index file, bad JSON or UTF-8, a missing,
    unknown or empty key or column, a row naming a missing media file, rows mixing modalities,
    an empty dataset, and options that do not fit the source.
    """
    options = _Options(direction, as_chat, instruction, fps, max_frames, learn, limits)
    return _plan(Path(source), kind, options).summary


def read_image_captions(
    source: PathLike,
    *,
    direction: str = "image->text",
    as_chat: bool = False,
    instruction: str | None = None,
    learn: str | None = None,
    limits: MediaLimits | None = None,
) -> Iterator[Document]:
    """Images and their captions: ``source`` is a folder holding ``captions.jsonl`` or
    ``captions.csv``, or such a file itself (any name).

    Each row gives a plain document of the image, then its caption (the target; ``learn="all"``
    trains the image too, see the module docstring); ``direction="text->image"`` puts the caption
    first. ``as_chat=True`` gives a chat instead: the user sends the input (then ``instruction``, if
    given), the assistant answers with the output.
    """
    options = _Options(direction, as_chat, instruction, learn=learn, limits=limits)
    return _plan(Path(source), "image_captions", options).documents()


def read_audio_transcripts(
    source: PathLike,
    *,
    direction: str = "audio->text",
    as_chat: bool = False,
    instruction: str | None = None,
    learn: str | None = None,
    limits: MediaLimits | None = None,
) -> Iterator[Document]:
    """Audio and its transcripts (or sound descriptions): a folder holding ``transcripts.jsonl``,
    ``transcripts.csv``, ``captions.jsonl`` or ``captions.csv``, or such a file itself.

    ``Document.of(audio, text)``, or text first with ``direction="text->audio"`` (``"speech"`` and
    ``"sound"`` are accepted for ``"audio"``); ``as_chat`` and ``learn`` as in :func:`read_image_captions`.
    """
    options = _Options(direction, as_chat, instruction, learn=learn, limits=limits)
    return _plan(Path(source), "audio_transcripts", options).documents()


def read_video_captions(
    source: PathLike,
    *,
    fps: float = 1.0,
    max_frames: int | None = None,
    as_chat: bool = False,
    instruction: str | None = None,
    limits: MediaLimits | None = None,
) -> Iterator[Document]:
    """Videos and their captions: a folder holding ``captions.jsonl`` or ``captions.csv``, or
    such a file itself. ``Document.of(video, caption)``, each video opened by
    :meth:`Video.open <polymodal.content.Video.open>` with ``fps`` and ``max_frames``."""
    options = _Options(None, as_chat, instruction, fps, max_frames, limits=limits)
    return _plan(Path(source), "video_captions", options).documents()


def read_jsonl_documents(path: PathLike, *, limits: MediaLimits | None = None) -> Iterator[Document]:
    """One document per non-blank line of a JSONL file, each in the JSON form that
    :meth:`Document.from_json <polymodal.content.Document.from_json>` reads, media paths relative
    to the file's folder."""
    return _plan(Path(path), "documents", _Options(limits=limits)).documents()


# -- planning: resolve the format, check everything, describe it -----------------------------------


@dataclass(frozen=True)
class _Options:
    direction: str | None = None
    as_chat: bool = False
    instruction: str | None = None
    fps: float | None = None
    max_frames: int | None = None
    learn: str | None = None  # None: "target"
    limits: MediaLimits | None = None


@dataclass(frozen=True)
class _Plan:
    """A checked source: its summary, and how to read its documents."""

    summary: SourceSummary
    documents: Callable[[], Iterator[Document]]


def _plan(source: Path, kind: str, options: _Options) -> _Plan:
    fmt = _resolve_kind(source, kind)
    if fmt == "documents":
        given = [name for name in _CAPTION_OPTIONS if getattr(options, name) not in (None, False)]
        if given:
            raise ConfigError(
                f"{source}: {', '.join(given)} only apply to captions and transcripts; "
                f"each line of a documents JSONL sets its own roles and order"
            )
        return _documents_plan(source, options.limits)
    index = _check_index(source, _MODALITY_OF.get(fmt), options.limits)
    return _captions_plan(source, index, options)


def _resolve_kind(source: Path, kind: str) -> str | None:
    """The format to read, or None for a captions folder whose rows decide the modality."""
    if kind not in ("auto", *FORMATS):
        raise ConfigError(f"unknown kind {kind!r}; expected one of auto, {', '.join(FORMATS)}")
    if kind != "auto":
        return kind
    if not source.exists():
        raise ConfigError(f"{source}: no such file or folder")
    if source.is_file():
        if source.name in _CAPTIONS:
            return None
        if source.name in _TRANSCRIPTS:
            return "audio_transcripts"
        if source.suffix.lower() == ".jsonl":
            return "documents"
        raise ConfigError(
            f"{source}: cannot tell the format from this file's name; give a .jsonl file of documents, "
            f"a folder holding {', '.join(_CAPTIONS + _TRANSCRIPTS)}, or pass kind="
        )
    captions = [name for name in _CAPTIONS if (source / name).is_file()]
    transcripts = [name for name in _TRANSCRIPTS if (source / name).is_file()]
    if captions and transcripts:
        raise ConfigError(f"{source}: holds both {captions[0]} and {transcripts[0]}; keep one, or pass kind=")
    if transcripts:
        return "audio_transcripts"
    if captions:
        return None
    raise ConfigError(
        f"{source}: no {', '.join(_CAPTIONS + _TRANSCRIPTS)} in this folder "
        f"(for a documents JSONL, give the .jsonl file itself)"
    )


def _documents_plan(path: Path, limits: MediaLimits | None) -> _Plan:
    if not path.is_file():
        raise ConfigError(f"{path}: {'is a folder, not' if path.is_dir() else 'no such file; expected'} a .jsonl file")
    count, modalities, directions = 0, set(), set()
    for line, obj in _json_lines(path):
        try:
            document = Document.check_json(obj, base_dir=path.parent, limits=limits)
        except PolymodalError as exc:
            raise _located(exc, f"{path}:{line}") from exc
        count += 1
        modalities.update(_PART_MODALITY[type(p)] for p in document.parts)
        directions.update(directions_of(document))
    if not count:
        raise ConfigError(f"{path}: no documents: the file has no non-blank line")

    def documents() -> Iterator[Document]:
        for line, obj in _json_lines(path):
            try:
                yield Document.from_json(obj, base_dir=path.parent, limits=limits)
            except PolymodalError as exc:
                raise _located(exc, f"{path}:{line}") from exc

    summary = SourceSummary("documents", path, path, count, tuple(sorted(modalities)), tuple(sorted(directions)))
    return _Plan(summary, documents)


def _captions_plan(source: Path, index: _Index, options: _Options) -> _Plan:
    modality = index.modality
    if modality != "video" and (options.fps is not None or options.max_frames is not None):
        raise ConfigError(f"{index.path}: fps and max_frames apply to videos; these rows name {modality} files")
    layout = _layout(modality, options)
    fps = 1.0 if options.fps is None else options.fps
    opener: dict[str, Callable[[Path], Part]] = {
        "image": lambda path: Image.open(path, limits=options.limits),
        "audio": lambda path: Audio.open(path, limits=options.limits),
        "video": lambda path: Video.open(path, fps=fps, max_frames=options.max_frames, limits=options.limits),
    }

    def documents() -> Iterator[Document]:
        for row in index.rows:
            try:
                media = opener[modality](row.file)
            except PolymodalError as exc:
                raise _located(exc, f"{index.path}:{row.line}") from exc
            yield layout.document(media, row.text)

    # The shape of every document, from a stand-in for the first row's file (nothing decoded).
    first = {"parts": [{"type": modality, "path": str(index.rows[0].file)}]}
    stand_in = Document.check_json(first, base_dir=".", limits=options.limits)
    shape = layout.document(stand_in.parts[0], index.rows[0].text)
    modalities = tuple(sorted({_PART_MODALITY[type(p)] for p in shape.parts}))
    summary = SourceSummary(_FORMAT_OF[modality], source, index.path, len(index.rows), modalities, directions_of(shape))
    return _Plan(summary, documents)


# -- how a caption row becomes a document ----------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    media_first: bool
    as_chat: bool
    instruction: str | None
    learn_all: bool = False

    def document(self, media: Part, text: str) -> Document:
        """A plain document (the input as context, the output as its target; ``learn="all"``: both
        trained) or, ``as_chat``, a user turn and the assistant's answer."""
        given, wanted = (media, Text(text)) if self.media_first else (Text(text), media)
        if not self.as_chat:
            if self.learn_all:
                return Document.of(given, wanted)
            return Document((Message(None, (given,), learn=False), Message(None, (wanted,))))
        prompt = (given, Text(self.instruction)) if self.instruction is not None else (given,)
        return Document.chat(("user", prompt), ("assistant", wanted))


def _layout(modality: str, options: _Options) -> _Layout:
    direction = options.direction or f"{modality}->text"
    if not isinstance(direction, str):
        raise ConfigError(f"direction must be a str like 'image->text', got {direction!r}")
    normal = "->".join(_ALIASES.get(side.strip(), side.strip()) for side in direction.split("->"))
    if normal not in _DIRECTIONS[modality]:
        raise ConfigError(
            f"direction {direction!r} does not fit {modality} captions; use {' or '.join(_DIRECTIONS[modality])}"
        )
    if not isinstance(options.as_chat, bool):
        raise ConfigError(f"as_chat must be True or False, got {options.as_chat!r}")
    if options.instruction is not None:
        if not options.as_chat:
            raise ConfigError("instruction is only used with as_chat=True (it becomes part of the user's turn)")
        if not isinstance(options.instruction, str) or not options.instruction.strip():
            raise ConfigError(f"instruction must be non-empty text, got {options.instruction!r}")
    fps, max_frames = options.fps, options.max_frames
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ConfigError(f"max_frames must be a positive int or None, got {max_frames!r}")
    learn = "target" if options.learn is None else options.learn
    if learn not in LEARN:
        raise ConfigError(f"learn must be one of {', '.join(LEARN)}, got {learn!r}")
    if learn == "all" and options.as_chat:
        raise ConfigError("learn='all' is for plain caption documents; a chat trains what the assistant says")
    return _Layout(normal.startswith(modality), options.as_chat, options.instruction, learn == "all")


# -- captions and transcripts files -----------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    line: int  # where the row starts in the index file
    file: Path
    text: str


@dataclass(frozen=True)
class _Index:
    """A checked captions/transcripts file: at least one row, every file present, one modality."""

    path: Path
    modality: str
    rows: tuple[_Row, ...]


def _check_index(source: Path, modality: str | None, limits: MediaLimits | None) -> _Index:
    """Parse and check an index; ``modality=None`` takes it from the rows' file extensions."""
    path = _find_index(source, (_TRANSCRIPTS, _CAPTIONS) if modality == "audio" else (_CAPTIONS,))
    records = _json_lines(path) if path.suffix.lower() == ".jsonl" else _csv_rows(path)
    rows = tuple(_row(record, path, line) for line, record in records)
    if not rows:
        raise ConfigError(f"{path}: no rows: the dataset is empty")
    modality = modality or _rows_modality(rows, path)
    for row in rows:
        try:
            check_media_file(row.file, modality, limits=limits)
        except PolymodalError as exc:
            raise _located(exc, f"{path}:{row.line}") from exc
    return _Index(path, modality, rows)


def _find_index(source: Path, choices: tuple[tuple[str, ...], ...]) -> Path:
    """``source`` if it is a file, else the one index file in the folder, from the first of
    ``choices`` (alternative names, most specific first) that the folder holds."""
    if not source.exists():
        raise ConfigError(f"{source}: no such file or folder")
    if source.is_dir():
        for names in choices:
            found = [source / name for name in names if (source / name).is_file()]
            if len(found) > 1:
                raise ConfigError(f"{source}: holds both {found[0].name} and {found[1].name}; keep one")
            if found:
                break
        else:
            raise ConfigError(f"{source}: no {' or '.join(sum(choices, ()))} in this folder")
        source = found[0]
    if source.suffix.lower() not in (".jsonl", ".csv"):
        raise ConfigError(f"{source}: a captions or transcripts file must be .jsonl or .csv")
    return source


def _row(record: Any, path: Path, line: int) -> _Row:
    if not isinstance(record, dict):
        raise ConfigError(f"{path}:{line}: expected a JSON object with keys file and text, got {type(record).__name__}")
    _check_names(record, path, line, "key")
    for key in _COLUMNS:
        value = record[key]
        if not isinstance(value, str):
            raise ConfigError(f"{path}:{line}: {key!r} must be a string, got {value!r}")
        if not value.strip():
            raise ConfigError(f"{path}:{line}: {key!r} is empty")
    return _Row(line, path.parent / record["file"], record["text"])


def _check_names(names: Iterable[str], path: Path, line: int, noun: str) -> None:
    names = list(names)
    for name in names:
        if name not in _COLUMNS:
            raise ConfigError(f"{path}:{line}: unknown {noun} {name!r} ({noun}s are: {', '.join(_COLUMNS)})")
        if names.count(name) > 1:
            raise ConfigError(f"{path}:{line}: {noun} {name!r} appears twice")
    for name in _COLUMNS:
        if name not in names:
            raise ConfigError(f"{path}:{line}: missing {noun} {name!r} ({noun}s are: {', '.join(_COLUMNS)})")


def _rows_modality(rows: tuple[_Row, ...], path: Path) -> str:
    """The one modality the rows' files are named as; an error if they name several or none."""
    first: dict[str, _Row] = {}
    for row in rows:
        kind = media_kind_of(row.file)
        if kind is not None:
            first.setdefault(kind, row)
    if len(first) > 1:
        named = ", ".join(f"{kind} (line {row.line}: {row.file.name})" for kind, row in first.items())
        raise ConfigError(f"{path}: rows name more than one kind of media: {named}; keep one modality per folder")
    if not first:
        known = "; ".join(f"{kind}: {' '.join(media_extensions(kind))}" for kind in _FORMAT_OF)
        raise UnsupportedMediaError(
            f"not named as a media file polymodal reads ({known}) (named on {path}:{rows[0].line})",
            source=str(rows[0].file),
        )
    return next(iter(first))


# -- line readers shared by the index and documents files ------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, streamed; a byte-order mark at the start is dropped."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSONL file."""
    for number, text in _lines(path):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON: {exc.msg} (column {exc.colno})") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line the row starts on, {column: value}) for every non-blank row after the header."""
    reader = csv.reader((text for _, text in _lines(path)), skipinitialspace=True)
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not any(field.strip() for field in fields):
                continue
            if header is None:
                header = [field.strip() for field in fields]
                _check_names(header, path, line, "column")
            elif len(fields) != len(header):
                raise ConfigError(f"{path}:{line}: {len(fields)} fields, but the header has {len(header)}")
            else:
                yield line, dict(zip(header, fields, strict=True))
    except csv.Error as exc:
        raise ConfigError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None


def _located(exc: PolymodalError, where: str) -> PolymodalError:
    """The same kind of error with ``where`` (``file:line``) in its message."""
    if isinstance(exc, MediaError):
        located = type(exc)(f"{exc} (named on {where})")  # the message already starts with the media path
        located.source = exc.source
        return located
    return type(exc)(f"{where}: {exc}")
