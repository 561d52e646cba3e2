"""A per-part account of how a document becomes tokens (what ``polymodal tokenize`` prints).

Pure reporting over :class:`DocumentTokenizer`: no tokenization logic lives here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from polymodal.content import Audio, Document, Image, Part, Text, Video
from polymodal.errors import TokenizerNotAvailableError
from polymodal.files import write_bytes_atomic
from polymodal.tokenizers.document import DocumentTokenizer, part_modality


def describe_part(part: Part) -> str:
    """A short human description: characters, pixels, seconds, frames."""
    if isinstance(part, Text):
        return f"{len(part.text)} chars"
    if isinstance(part, Image):
        return f"{part.width}x{part.height} px"
    if isinstance(part, Audio):
        return f"{part.duration:.2f} s @ {part.sample_rate} Hz, {part.num_channels} ch"
    if isinstance(part, Video):
        audio = "with audio" if part.audio is not None else "no audio"
        return f"{part.duration:.2f} s, {part.num_frames} frames, {audio}"
    return type(part).__name__


@dataclass(frozen=True)
class PartReport:
    role: str | None
    modality: str
    details: str
    num_tokens: int | None  # None: this vocabulary cannot tokenize the part
    first_ids: list[int]
    problem: str | None = None


@dataclass(frozen=True)
class DocumentReport:
    name: str
    parts: list[PartReport]
    total_tokens: int | None  # the whole document with <|bos|> … <|eos|>, if every part tokenized

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        total = "?" if self.total_tokens is None else str(self.total_tokens)
        lines = [f"{self.name}: {len(self.parts)} parts, {total} tokens in all (with <|bos|> and <|eos|>)"]
        lines.append(f"  {'#':>2}  {'role':<9} {'modality':<8} {'details':<28} {'tokens':>6}  first ids")
        for i, p in enumerate(self.parts):
            count = "-" if p.num_tokens is None else str(p.num_tokens)
            shown = (
                p.problem
                if p.problem
                else " ".join(map(str, p.first_ids))
                + (" …" if p.num_tokens and p.num_tokens > len(p.first_ids) else "")
            )
            lines.append(f"  {i:>2}  {p.role or '-':<9} {p.modality:<8} {p.details:<28} {count:>6}  {shown}")
        return "\n".join(lines)


def tokenize_report(tokenizer: DocumentTokenizer, name: str, document: Document, *, first: int = 8) -> DocumentReport:
    """Tokenize each part alone (ids include its media delimiters) and the whole document."""
    parts: list[PartReport] = []
    for message in document.messages:
        for part in message.parts:
            modality, details = part_modality(part), describe_part(part)
            try:
                seq = tokenizer.encode(Document.of(part), add_bos=False, add_eos=False)
            except TokenizerNotAvailableError as exc:
                parts.append(PartReport(message.role, modality, details, None, [], f"not tokenized: {exc}"))
                continue
            parts.append(PartReport(message.role, modality, details, len(seq), seq.ids[:first].tolist()))
    total = None
    if all(p.num_tokens is not None for p in parts):
        total = len(tokenizer.encode(document))
    return DocumentReport(name, parts, total)


def write_roundtrip(tokenizer: DocumentTokenizer, document: Document, out: str | os.PathLike) -> list[Path]:
    """Encode, decode and save what comes back: ``out.json`` with its media, and each video as MP4.

    The encode→decode check for one's own data: look at and listen to what the model will see.
    """
    out = Path(out)
    decoded = tokenizer.decode(tokenizer.encode(document))
    target = out.parent / f"{out.name}.json"  # not with_suffix: "clip.v2" must not become "clip.json"
    decoded.save(target)
    written = [target]
    videos = [p for p in decoded.parts if isinstance(p, Video)]
    for k, video in enumerate(videos):
        path = out.parent / f"{out.name}_video{k}.mp4"
        write_bytes_atomic(path, video.to_mp4_bytes())
        written.append(path)
    return written
