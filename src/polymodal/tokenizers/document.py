"""Document ⇄ TokenSequence: the chat template, media delimiters, positions and truncation.

The sequence layout of a document::

    <|bos|> text… <|image|> <|grid:8x8|> code×64 <|/image|> text… <|audio|> code… <|/audio|> <|eos|>

and of a chat (loss weight 1 only on what the assistant says, its ``<|end|>`` included; a message's
``learn`` overrides either rule)::

    <|bos|> <|system|> … <|end|> <|user|> … <|end|> <|assistant|> … <|end|> <|eos|>

Modality tokenizers are loaded lazily, the first time a part of their modality is seen: a
text-only use never loads the image, audio or video tokenizers, nor needs their files.

Truncation never splits a media span: ``"right"`` keeps the longest prefix that fits, dropping a
media span the limit would cut; ``"left"`` keeps the longest suffix, likewise. ``"error"`` (the
default when ``max_length`` is given) refuses a sequence that does not fit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from polymodal import positions as P
from polymodal import vocab as V
from polymodal.content import Audio, Document, Image, Message, Part, Text, Video
from polymodal.errors import ConfigError, PolymodalError, SequenceTooLongError, TokenizerNotAvailableError
from polymodal.files import staging_directory, swap_directory
from polymodal.positions import next_index
from polymodal.tokenizers import load_tokenizer
from polymodal.tokenizers.base import Grid, ModalityTokenizer, Sequential, Timed, TokenSpan
from polymodal.tokenizers.sequence import TokenSequence
from polymodal.tokenizers.video import AudioSegment, FrameSegment, VideoTokenizer
from polymodal.vocab import Vocabulary


class SpanCache(Protocol):
    """What :attr:`DocumentTokenizer.span_cache` needs: the encoding of ``part``, from the cache or
    from ``encode()`` (then kept). A server's implementation is :class:`polymodal.serve.cache.MediaCache`."""

    def get_or_encode(self, part: Part, encode: Callable[[], Any]) -> Any: ...


TOKENIZERS_DIRNAME = "tokenizers"
Truncation = Literal["error", "right", "left"]

_PART_MODALITY: dict[type, str] = {Text: "text", Image: "image", Audio: "audio", Video: "video"}


def part_modality(part: Part) -> str:
    try:
        return _PART_MODALITY[type(part)]
    except KeyError:
        raise TypeError(f"not a content part: {type(part).__name__}") from None


def _delimiters(modality: str) -> tuple[str, str]:
    return f"<|{modality}|>", f"<|/{modality}|>"


class _Builder:
    """Accumulates tokens with their positions, weights and whether a cut may fall before each."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, bool]] = []
        self.index = 0  # the running position index

    def add(self, ids: torch.Tensor, positions: torch.Tensor, weight: float, *, cuttable: bool) -> None:
        self.chunks.append((ids, positions, weight, cuttable))
        self.index = next_index(self.index, positions)

    def special(self, token: str, weight: float, *, cuttable: bool = True) -> None:
        ids = torch.tensor([self.vocab.special_id(token)])
        self.add(ids, torch.full((1, 3), self.index, dtype=torch.long), weight, cuttable=cuttable)

    def build(self) -> tuple[TokenSequence, torch.Tensor]:
        if not self.chunks:
            return TokenSequence.empty(), torch.ones(1, dtype=torch.bool)
        ids = torch.cat([c[0] for c in self.chunks])
        positions = torch.cat([c[1] for c in self.chunks])
        weights = torch.cat([torch.full((len(c[0]),), c[2], dtype=torch.float32) for c in self.chunks])
        # cut_ok[i]: the sequence may be cut just before token i (cut_ok[N] = whole sequence).
        cut_ok = torch.cat(
            [torch.full((len(c[0]),), c[3], dtype=torch.bool) for c in self.chunks] + [torch.ones(1, dtype=torch.bool)]
        )
        seq = TokenSequence(ids, self.vocab.modality_of(ids), positions, weights)
        return seq, cut_ok


class DocumentTokenizer:
    """Turns :class:`~polymodal.content.Document` into a :class:`TokenSequence` and back.

    ``tokenizers`` maps a modality name to a tokenizer, or to the folder it was saved in (loaded
    on first use).
    """

    def __init__(self, vocab: Vocabulary, tokenizers: Mapping[str, ModalityTokenizer | str | os.PathLike]) -> None:
        self.vocab = vocab
        # Encoded media by part, for callers that see the same media again (a server); None: no cache.
        self.span_cache: SpanCache | None = None
        self._sources = dict(tokenizers)
        self._loaded: dict[str, ModalityTokenizer] = {}
        for modality, source in self._sources.items():
            if not isinstance(source, (str, os.PathLike)):
                self._adopt(modality, source)

    @classmethod
    def from_tokenizers(
        cls,
        tokenizers: Sequence[ModalityTokenizer],
        *,
        grids: Sequence[tuple[int, int]] | None = None,
        time_units_per_second: float = V.DEFAULT_TIME_UNITS_PER_SECOND,
    ) -> DocumentTokenizer:
        """Lay out a fresh vocabulary around these tokenizers (ranges in the order given).

        ``grids`` defaults to every grid the tokenizers can emit (their ``grids`` attribute), or to
        the standard 4×4, 8×8 and 16×16 when none says.
        """
        modalities = [t.modality for t in tokenizers]
        if len(set(modalities)) != len(modalities):
            raise ConfigError(f"one tokenizer per modality, got {modalities}")
        if grids is None:
            emitted = sorted({g for t in tokenizers for g in getattr(t, "grids", ())})
            grids = emitted or V.DEFAULT_GRIDS
        vocab = Vocabulary.build(
            {t.modality: t.vocab_size for t in tokenizers}, grids=grids, time_units_per_second=time_units_per_second
        )
        return cls(vocab, {t.modality: t for t in tokenizers})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> DocumentTokenizer:
        """Read ``vocab.json`` and point at ``tokenizers/<modality>/`` folders (not loaded yet)."""
        directory = Path(directory)
        vocab = Vocabulary.load(directory)
        folders = {r.name: directory / TOKENIZERS_DIRNAME / r.name for r in vocab.ranges}
        return cls(vocab, folders)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json`` and every tokenizer as one folder, replaced atomically if it exists."""
        staging = staging_directory(directory)
        try:
            self.write_into(staging)
            swap_directory(staging, directory, marker=V.VOCAB_FILENAME)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def write_into(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json`` and ``tokenizers/`` into an empty folder (tokenizers never loaded are copied)."""
        directory = Path(directory)
        for modality, source in self._sources.items():
            target = directory / TOKENIZERS_DIRNAME / modality
            if modality in self._loaded:
                self._loaded[modality].save(target)
            elif not Path(source).is_dir():
                raise TokenizerNotAvailableError(f"the {modality} tokenizer folder {source} does not exist")
            else:
                shutil.copytree(source, target)
        self.vocab.save(directory)  # last: a folder with vocab.json is a complete one

    # -- lazy tokenizers ------------------------------------------------------------------------

    @property
    def loaded_modalities(self) -> tuple[str, ...]:
        """Modalities whose tokenizer has been loaded so far (a text-only use loads only text)."""
        return tuple(self._loaded)

    def tokenizer(self, modality: str) -> ModalityTokenizer:
        """The tokenizer for ``modality``, loading it from its folder on first use."""
        if modality in self._loaded:
            return self._loaded[modality]
        if modality == "video":
            return self._video_tokenizer()
        if not self.vocab.has_modality(modality) or modality not in self._sources:
            have = [r.name for r in self.vocab.ranges]
            raise TokenizerNotAvailableError(
                f"this vocabulary has no {modality} tokenizer (it covers: {', '.join(have)}); "
                f"a run that reads or writes {modality} needs one"
            )
        source = self._sources[modality]
        if not Path(source).is_dir():
            raise TokenizerNotAvailableError(f"the {modality} tokenizer folder {source} does not exist")
        return self._adopt(modality, load_tokenizer(source))

    def _video_tokenizer(self) -> VideoTokenizer:
        # A video is frames plus a track: it borrows the image tokenizer and, when the vocabulary
        # has one, the audio tokenizer (loaded only if a video actually has sound).
        audio = self.tokenizer("audio") if self.vocab.has_modality("audio") and "audio" in self._sources else None
        return VideoTokenizer(self.tokenizer("image"), audio)

    def _adopt(self, modality: str, tokenizer: ModalityTokenizer) -> ModalityTokenizer:
        if tokenizer.modality != modality:
            raise ConfigError(f"a {tokenizer.modality} tokenizer was given for the {modality} range")
        expected = self.vocab.range(modality).size
        if tokenizer.vocab_size != expected:
            raise ConfigError(
                f"the {modality} tokenizer has {tokenizer.vocab_size} ids but the vocabulary's "
                f"{modality} range holds {expected}: they were not saved together"
            )
        missing = [g for g in getattr(tokenizer, "grids", ()) if g not in self.vocab.grids]
        if missing:
            raise ConfigError(
                f"the {modality} tokenizer emits grids {missing} that have no grid token in this vocabulary "
                f"(it has {list(self.vocab.grids)}); rebuild the vocabulary with them"
            )
        self._loaded[modality] = tokenizer
        return tokenizer

    # -- encoding -------------------------------------------------------------------------------

    def encode(
        self,
        document: Document,
        *,
        add_bos: bool = True,
        add_eos: bool | None = None,
        add_generation_prompt: bool = False,
        max_length: int | None = None,
        truncation: Truncation = "error",
    ) -> TokenSequence:
        """Tokenize a document (see the module docstring for the layout and truncation rule).

        ``add_generation_prompt`` ends a chat with ``<|assistant|>`` for the model to answer;
        ``add_eos`` defaults to True unless a generation prompt is added.
        """
        if add_eos is None:
            add_eos = not add_generation_prompt
        if max_length is not None and truncation == "error":
            self._check_video_cost(document, max_length)
        builder = _Builder(self.vocab)
        if add_bos:
            builder.special(V.BOS, 0.0)
        weight = 1.0
        for message in document.messages:
            weight = self._encode_message(builder, message, document.is_chat)
        if add_generation_prompt:
            if not document.is_chat:
                raise PolymodalError("add_generation_prompt needs a chat document (messages with roles)")
            builder.special(V.ASSISTANT, 0.0)
        if add_eos:
            builder.special(V.EOS, weight if document.is_chat else 1.0)
        seq, cut_ok = builder.build()
        return self._fit(seq, cut_ok, max_length, truncation)

    def _encode_message(self, builder: _Builder, message: Message, chat: bool) -> float:
        learned = message.learn if message.learn is not None else not chat or message.role == "assistant"
        weight = float(learned)
        if chat:
            builder.special(V.ROLE_TOKENS[message.role], 0.0)
        for part in message.parts:
            self._encode_part(builder, part, weight)
        if chat:
            builder.special(V.END_OF_TURN, weight)
        return weight

    def _encoded(self, part: Part, encode: Callable[[], Any]) -> Any:
        if self.span_cache is None or isinstance(part, Text):
            return encode()
        return self.span_cache.get_or_encode(part, encode)

    def _check_video_cost(self, document: Document, max_length: int) -> None:
        """Refuse, before decoding-heavy work, videos whose frames alone cannot fit."""
        for part in document.parts:
            if isinstance(part, Video):
                smallest = min(h * w for h, w in self.vocab.grids) if self.vocab.grids else 1
                floor = 2 + part.num_frames * (2 + smallest)
                if floor > max_length:
                    raise SequenceTooLongError(
                        f"a video of {part.num_frames} frames costs at least {floor} tokens "
                        f"({part.num_frames} x (2 + {smallest})), over max_length={max_length}; "
                        "sample fewer frames (lower fps or max_frames)"
                    )

    def _encode_part(self, builder: _Builder, part: Part, weight: float) -> None:
        modality = part_modality(part)
        if modality == "video":
            self._encode_video(builder, part, weight)
            return
        span = self._encoded(part, lambda: self.tokenizer(modality).encode(part))
        ids = self.vocab.to_global(span.modality, span.ids)
        tau = self.vocab.time_units_per_second
        if modality == "text":
            builder.add(ids, span.layout.positions(builder.index, len(span), tau), weight, cuttable=True)
            return
        start, end = _delimiters(modality)
        builder.special(start, weight)
        if isinstance(span.layout, Grid):
            builder.special(V.grid_token(span.layout.height, span.layout.width), weight, cuttable=False)
        builder.add(ids, span.layout.positions(builder.index, len(span), tau), weight, cuttable=False)
        builder.special(end, weight, cuttable=False)

    def _encode_video(self, builder: _Builder, video: Video, weight: float) -> None:
        segments = self._encoded(video, lambda: self._video_tokenizer().encode(video))
        tau = self.vocab.time_units_per_second
        builder.special(V.VIDEO_START, weight)
        origin = builder.index  # second 0 of the video's clock
        for segment in segments:
            if isinstance(segment, AudioSegment):
                ids = self.vocab.to_global("audio", segment.span.ids)
                builder.add(ids, P.timed_positions(origin, segment.times(), tau), weight, cuttable=False)
                continue
            grid = segment.span.layout
            marker = P.timed_positions(origin, [segment.time, segment.time], tau)
            header = torch.tensor([self.vocab.special_id(V.FRAME), self.vocab.grid_id(grid.height, grid.width)])
            builder.add(header, marker, weight, cuttable=False)
            codes = self.vocab.to_global("image", segment.span.ids)
            positions = P.frame_positions(origin, segment.time, grid.height, grid.width, tau)
            builder.add(codes, positions, weight, cuttable=False)
        builder.special(V.VIDEO_END, weight, cuttable=False)

    @staticmethod
    def _fit(seq: TokenSequence, cut_ok: torch.Tensor, max_length: int | None, truncation: Truncation) -> TokenSequence:
        if max_length is None or len(seq) <= max_length:
            return seq
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if truncation == "error":
            raise SequenceTooLongError(
                f"document is {len(seq)} tokens, over max_length={max_length}; "
                "pass truncation='right' or 'left' to cut it (media spans are never split)"
            )
        if truncation == "right":
            cut = int(torch.nonzero(cut_ok[: max_length + 1]).max())
            return seq[:cut]
        if truncation == "left":
            first = len(seq) - max_length
            cut = first + int(torch.nonzero(cut_ok[first:]).min())
            return seq[cut:]
        raise ValueError(f"truncation must be 'error', 'right' or 'left', got {truncation!r}")

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, tokens: TokenSequence | torch.Tensor | Sequence[int]) -> Document:
        """Turn ids back into a Document (adjacent text comes back as one Text part)."""
        ids = tokens.ids if isinstance(tokens, TokenSequence) else torch.as_tensor(tokens, dtype=torch.long)
        ids_list = ids.tolist()
        # With positions, video frames get their exact times back from t; ids alone imply them.
        times = tokens.positions[:, 0].tolist() if isinstance(tokens, TokenSequence) else None
        modality = self.vocab.modality_of(ids).tolist()
        text_index = self.vocab.modality_index("text") if self.vocab.has_modality("text") else -1
        messages: list[tuple[str | None, list[Part]]] = [(None, [])]
        text_run: list[int] = []
        i = 0

        def flush_text() -> None:
            if text_run:
                local = self.vocab.to_local("text", text_run)
                messages[-1][1].append(self.tokenizer("text").decode(TokenSpan("text", local, Sequential())))
                text_run.clear()

        while i < len(ids_list):
            token_id = ids_list[i]
            if modality[i] == text_index:
                text_run.append(token_id)
                i += 1
                continue
            flush_text()
            special = self.vocab.special_token(token_id)
            if special is None:
                raise PolymodalError(f"position {i}: {self.vocab.describe(token_id)} outside a media span")
            if special in (V.BOS, V.EOS, V.PAD, V.END_OF_TURN):
                i += 1
            elif special in V.ROLE_TOKENS.values():
                role = next(r for r, tok in V.ROLE_TOKENS.items() if tok == special)
                messages.append((role, []))
                i += 1
            elif special.startswith("<|") and special[2:-2] in ("image", "audio", "video"):
                part, i = self._decode_media(special[2:-2], ids_list, i, times)
                messages[-1][1].append(part)
            else:
                raise PolymodalError(f"position {i}: unexpected {special} outside a media span")
        flush_text()
        return self._assemble(messages)

    def _decode_media(self, modality: str, ids: list[int], i: int, times: list[int] | None) -> tuple[Part, int]:
        _, end_token = _delimiters(modality)
        end_id = self.vocab.special_id(end_token)
        try:
            end = ids.index(end_id, i + 1)
        except ValueError:
            raise PolymodalError(f"position {i}: {modality} span is never closed with {end_token}") from None
        body = ids[i + 1 : end]
        if modality == "video":
            return self._decode_video(body, i, times), end + 1
        tokenizer = self.tokenizer(modality)
        grid = V.parse_grid_token(self.vocab.special_token(body[0]) or "") if body else None
        if grid is not None:
            body = body[1:]
        # Only grids are written into the sequence; a stream's rate is its tokenizer's own setting.
        layout = Grid(*grid) if grid is not None else Sequential()
        span = TokenSpan(modality, self.vocab.to_local(modality, body), layout)
        return tokenizer.decode(span), end + 1

    def _decode_video(self, body: list[int], at: int, times: list[int] | None) -> Video:
        frame_id = self.vocab.special_id(V.FRAME)
        origin = times[at] + 1 if times is not None else 0  # second 0 of the video's clock
        segments: list[FrameSegment | AudioSegment] = []
        audio_seen, j = 0, 0
        while j < len(body):
            if body[j] == frame_id:
                grid = V.parse_grid_token(self.vocab.special_token(body[j + 1]) or "") if j + 1 < len(body) else None
                if grid is None:
                    raise PolymodalError(f"position {at + 1 + j}: <|frame|> must be followed by a grid token")
                n = grid[0] * grid[1]
                codes = self.vocab.to_local("image", body[j + 2 : j + 2 + n])
                if len(codes) != n:
                    raise PolymodalError(f"position {at + 1 + j}: a {grid[0]}x{grid[1]} frame needs {n} codes")
                seconds = (times[at + 1 + j] - origin) / self.vocab.time_units_per_second if times is not None else None
                segments.append(FrameSegment(seconds, TokenSpan("image", codes, Grid(*grid))))
                j += 2 + n
                continue
            k = j
            while k < len(body) and body[k] != frame_id:
                k += 1
            codes = self.vocab.to_local("audio", body[j:k])
            tokens_per_second = self.tokenizer("audio").tokens_per_second
            segments.append(AudioSegment(audio_seen, TokenSpan("audio", codes, Timed(tokens_per_second))))
            audio_seen += k - j
            j = k
        return self._video_tokenizer().decode(segments)

    @staticmethod
    def _assemble(messages: list[tuple[str | None, list[Part]]]) -> Document:
        leading_role, leading_parts = messages[0]
        turns = messages[1:]
        while turns and not turns[-1][1]:
            turns.pop()  # a trailing role token with nothing after it: a generation prompt
        if not turns:
            return Document.of(*leading_parts) if leading_parts else Document.of(Text(""))
        if leading_parts:
            raise PolymodalError("ids hold content before the first chat role token")
        return Document([Message(role, tuple(parts) or (Text(""),)) for role, parts in turns])
