"""The unified vocabulary: one id space for special tokens and every modality's codes.

Layout (fixed when a run starts, saved with every checkpoint as ``vocab.json``)::

    [0, n_specials)                     special tokens (bos/eos/pad, chat roles, media delimiters, grids)
    [text.start, text.start + size)     the text tokenizer's ids, shifted by ``text.start``
    [image.start, ...)                  the image tokenizer's codes
    [audio.start, ...)                  the audio tokenizer's codes

Each modality tokenizer works in its own *local* ids ``0..size-1``; this module only shifts them
into the shared space (``to_global`` / ``to_local``) and answers ``modality_of(ids)`` by a range
lookup. Adding a modality means adding a range here and a tokenizer for it — nothing else.

This module knows nothing about tokenizers, models or positions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from polymodal.errors import ConfigError
from polymodal.files import write_text_atomic

VOCAB_FILENAME = "vocab.json"
FORMAT_VERSION = 1

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
END_OF_TURN = "<|end|>"
IMAGE_START, IMAGE_END = "<|image|>", "<|/image|>"
AUDIO_START, AUDIO_END = "<|audio|>", "<|/audio|>"
VIDEO_START, VIDEO_END = "<|video|>", "<|/video|>"
FRAME = "<|frame|>"

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

BASE_SPECIALS: tuple[str, ...] = (
    BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END_OF_TURN,
    IMAGE_START, IMAGE_END, AUDIO_START, AUDIO_END, VIDEO_START, VIDEO_END, FRAME,
)  # fmt: skip

# Modality index 0 is reserved for special tokens; the ranges follow in vocabulary order.
SPECIAL = "special"

_GRID_RE = re.compile(r"^<\|grid:(\d+)x(\d+)\|>$")

# Time units per second of the temporal rotary axis (DESIGN.md, "Positions"): 25 units/s puts one
# unit on every 40 ms, the hop of a 25 tokens/s audio code, so speech tokens never share a t.
DEFAULT_TIME_UNITS_PER_SECOND = 25.0

DEFAULT_GRIDS: tuple[tuple[int, int], ...] = ((4, 4), (8, 8), (16, 16))


def grid_token(height: int, width: int) -> str:
    """The special token that announces an image grid of ``height`` × ``width`` codes."""
    return f"<|grid:{height}x{width}|>"


def parse_grid_token(token: str) -> tuple[int, int] | None:
    """``(height, width)`` for a grid token, ``None`` for any other token."""
    match = _GRID_RE.match(token)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class ModalityRange:
    """A contiguous block ``[start, start + size)`` of global ids owned by one modality."""

    name: str
    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size

    def __contains__(self, token_id: int) -> bool:
        return self.start <= token_id < self.stop


class Vocabulary:
    """Special tokens plus one contiguous id range per modality.

    Build one with :meth:`build` (from each modality's tokenizer size) or :meth:`load`.
    """

    def __init__(
        self,
        specials: Sequence[str],
        ranges: Sequence[ModalityRange],
        *,
        time_units_per_second: float = DEFAULT_TIME_UNITS_PER_SECOND,
    ) -> None:
        self.specials: tuple[str, ...] = tuple(specials)
        self.ranges: tuple[ModalityRange, ...] = tuple(ranges)
        self.time_units_per_second = float(time_units_per_second)
        self._special_ids = {tok: i for i, tok in enumerate(self.specials)}
        self._ranges_by_name = {r.name: r for r in self.ranges}
        self._validate()
        # modality_of() looks ids up in this table: one entry per id, the modality's index.
        self._modality_table = torch.zeros(self.size, dtype=torch.long)
        for index, r in enumerate(self.ranges, start=1):
            self._modality_table[r.start : r.stop] = index

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        modality_sizes: dict[str, int],
        *,
        grids: Iterable[tuple[int, int]] = DEFAULT_GRIDS,
        extra_specials: Iterable[str] = (),
        time_units_per_second: float = DEFAULT_TIME_UNITS_PER_SECOND,
    ) -> Vocabulary:
        """Lay out a vocabulary: the specials first, then each modality's range in the given order.

        ``modality_sizes`` maps a modality name (``"text"``, ``"image"``, ``"audio"``, …) to the
        number of local ids its tokenizer emits.
        """
        specials = list(BASE_SPECIALS)
        specials += [grid_token(h, w) for h, w in grids]
        specials += list(extra_specials)
        ranges, start = [], len(specials)
        for name, size in modality_sizes.items():
            ranges.append(ModalityRange(name, start, int(size)))
            start += int(size)
        return cls(specials, ranges, time_units_per_second=time_units_per_second)

    def _validate(self) -> None:
        if len(self._special_ids) != len(self.specials):
            raise ConfigError("vocabulary: duplicate special tokens")
        missing = [tok for tok in BASE_SPECIALS if tok not in self._special_ids]
        if missing:
            raise ConfigError(f"vocabulary: missing required special tokens {missing}")
        if not self.time_units_per_second > 0:
            raise ConfigError(f"vocabulary: time_units_per_second must be > 0, got {self.time_units_per_second}")
        expected_start = len(self.specials)
        for r in self.ranges:
            if r.name == SPECIAL or r.name in ("", None):
                raise ConfigError(f"vocabulary: invalid modality name {r.name!r}")
            if r.size <= 0:
                raise ConfigError(f"vocabulary: modality {r.name!r} has size {r.size}; must be > 0")
            if r.start != expected_start:
                raise ConfigError(
                    f"vocabulary: range {r.name!r} starts at {r.start}, expected {expected_start} "
                    "(ranges must be contiguous and follow the specials)"
                )
            expected_start = r.stop
        if len(self._ranges_by_name) != len(self.ranges):
            raise ConfigError("vocabulary: duplicate modality names")

    # -- lookups ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Total number of ids (the model's embedding and head size)."""
        return self.ranges[-1].stop if self.ranges else len(self.specials)

    def __len__(self) -> int:
        return self.size

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names by index: index 0 is ``"special"``, then the ranges in order."""
        return (SPECIAL, *(r.name for r in self.ranges))

    def modality_index(self, name: str) -> int:
        """The integer code of a modality in ``TokenSequence.modality``."""
        try:
            return self.modalities.index(name)
        except ValueError:
            raise KeyError(f"modality {name!r} is not in this vocabulary (has {list(self.modalities)})") from None

    def has_modality(self, name: str) -> bool:
        return name in self._ranges_by_name

    def range(self, name: str) -> ModalityRange:
        try:
            return self._ranges_by_name[name]
        except KeyError:
            raise KeyError(
                f"modality {name!r} has no id range in this vocabulary (ranges: {[r.name for r in self.ranges]})"
            ) from None

    def special_id(self, token: str) -> int:
        try:
            return self._special_ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a special token of this vocabulary") from None

    def special_token(self, token_id: int) -> str | None:
        """The special token string for an id, or ``None`` if the id is not a special."""
        return self.specials[token_id] if 0 <= token_id < len(self.specials) else None

    @property
    def bos_id(self) -> int:
        return self._special_ids[BOS]

    @property
    def eos_id(self) -> int:
        return self._special_ids[EOS]

    @property
    def pad_id(self) -> int:
        return self._special_ids[PAD]

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        """Image grid sizes (height, width) that have a grid token."""
        found = (parse_grid_token(tok) for tok in self.specials)
        return tuple(g for g in found if g is not None)

    def grid_id(self, height: int, width: int) -> int:
        token = grid_token(height, width)
        if token not in self._special_ids:
            raise KeyError(
                f"no grid token for a {height}x{width} image grid; this vocabulary has "
                f"{[f'{h}x{w}' for h, w in self.grids]}"
            )
        return self._special_ids[token]

    def modality_of(self, ids: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
        """The modality index of every id (0 = special); raises on ids outside the vocabulary."""
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        if ids_t.numel() and (int(ids_t.min()) < 0 or int(ids_t.max()) >= self.size):
            bad = ids_t[(ids_t < 0) | (ids_t >= self.size)][0].item()
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.size})")
        return self._modality_table[ids_t]

    def to_global(self, modality: str, local_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Shift a tokenizer's local ids into this vocabulary's range for ``modality``."""
        r = self.range(modality)
        ids = torch.as_tensor(local_ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= r.size):
            raise ValueError(f"{modality} tokenizer produced id {int(ids.max())} outside its range of {r.size}")
        return ids + r.start

    def to_local(self, modality: str, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Inverse of :meth:`to_global`; raises if an id is not in ``modality``'s range."""
        r = self.range(modality)
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < r.start or int(ids.max()) >= r.stop):
            raise ValueError(f"ids outside the {modality} range [{r.start}, {r.stop})")
        return ids - r.start

    def describe(self, token_id: int) -> str:
        """A human-readable name: the special token, or ``modality:local_id``."""
        special = self.special_token(token_id)
        if special is not None:
            return special
        for r in self.ranges:
            if token_id in r:
                return f"{r.name}:{token_id - r.start}"
        return f"<out of vocabulary {token_id}>"

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "time_units_per_second": self.time_units_per_second,
            "specials": list(self.specials),
            "ranges": [{"name": r.name, "start": r.start, "size": r.size} for r in self.ranges],
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "vocabulary") -> Vocabulary:
        expected = {"format_version", "time_units_per_second", "specials", "ranges"}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        unknown, missing = set(data) - expected, expected - set(data)
        if unknown or missing:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        if data["format_version"] != FORMAT_VERSION:
            raise ConfigError(
                f"{source}: format_version {data['format_version']} is not supported "
                f"(this polymodal reads {FORMAT_VERSION})"
            )
        try:
            ranges = [ModalityRange(str(r["name"]), int(r["start"]), int(r["size"])) for r in data["ranges"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: malformed 'ranges' entry ({exc})") from exc
        return cls(
            [str(s) for s in data["specials"]],
            ranges,
            time_units_per_second=data["time_units_per_second"],
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vocab.json`` into ``directory`` atomically; returns the file's path."""
        path = Path(directory) / VOCAB_FILENAME
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a ``vocab.json`` file, or the one inside a directory."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no vocabulary file here") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        ranges = ", ".join(f"{r.name}=[{r.start},{r.stop})" for r in self.ranges)
        return f"Vocabulary(size={self.size}, specials={len(self.specials)}, {ranges})"
