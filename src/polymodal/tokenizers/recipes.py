"""Train a media tokenizer from the user's files or from the built-in shapes-world corpus.

What ``polymodal tokenizer train image|audio`` calls: it gathers training and held-out data,
trains, saves the tokenizer and writes ``report.json`` (held-out figures, settings, time) beside
it, so that every published reconstruction figure comes with the settings that produced it.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from polymodal.content import Audio, Image
from polymodal.errors import ConfigError
from polymodal.files import write_text_atomic
from polymodal.tokenizers.training import TrainConfig, TrainResult

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")
REPORT_FILENAME = "report.json"


def find_files(sources: Sequence[str | os.PathLike], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named directly, plus files with ``suffixes`` found recursively in named folders (sorted)."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        elif source.is_file():
            found.append(source)
        else:
            raise FileNotFoundError(f"no such file or folder: {source}")
    if sources and not found:
        raise ConfigError(f"no {'/'.join(suffixes)} files in {[str(s) for s in sources]}")
    return found


def _split_held_out(items: list, held_out: int) -> tuple[list, list]:
    """Every k-th item goes to the held-out set (deterministic, spread over the whole folder)."""
    if len(items) < 2:
        raise ConfigError(f"need at least 2 files to hold some out, got {len(items)}")
    held_out = max(1, min(held_out, len(items) // 10 or 1))
    step = len(items) // held_out
    held = set(range(0, step * held_out, step))
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def image_data(
    sources: Sequence[str | os.PathLike], *, side: int, seed: int, held_out: int = 64, corpus_images: int = 4000
) -> tuple[Iterable[Image], list[Image]]:
    """User images (a list, held-out split off) or a pool of shapes-world scenes rendered once."""
    if sources:
        images = [Image.open(p) for p in find_files(sources, IMAGE_SUFFIXES)]
        return _split_held_out(images, held_out)
    from polymodal.data.shapes import iter_scene_images

    # Rendering a scene costs more than a training step on it: render a pool once and cycle it.
    train = list(itertools.islice(iter_scene_images(seed, size=side, split="train"), corpus_images))
    return train, list(iter_scene_images(seed, size=side, count=held_out, split="valid"))


def captioned_image_data(
    sources: Sequence[str | os.PathLike], *, side: int, seed: int, held_out: int = 64, corpus_images: int = 4000
) -> tuple[list[Image], list[str], list[Image]]:
    """(training images, their captions, held-out images): the rows of captions folders (see
    :mod:`polymodal.data.readers`), or shapes-world scenes with their captions."""
    if sources:
        from polymodal.data.readers import read_image_captions

        pairs = [(doc.parts[0], doc.parts[1].text) for source in sources for doc in read_image_captions(source)]
        train, held = _split_held_out(pairs, held_out)
        return [p[0] for p in train], [p[1] for p in train], [p[0] for p in held]
    from polymodal.data.shapes import iter_captioned_scenes, iter_scene_images

    pairs = list(itertools.islice(iter_captioned_scenes(seed, size=side, split="train"), corpus_images))
    held = list(iter_scene_images(seed, size=side, count=held_out, split="valid"))
    return [p[0] for p in pairs], [p[1] for p in pairs], held


def audio_data(
    sources: Sequence[str | os.PathLike], *, seed: int, held_out: int = 24, corpus_clips: int = 2000
) -> tuple[Iterable[Audio], list[Audio]]:
    """User clips (a list, held-out split off) or a fixed set of shapes-world sounds and speech."""
    if sources:
        clips = [Audio.open(p) for p in find_files(sources, AUDIO_SUFFIXES)]
        return _split_held_out(clips, held_out)
    from polymodal.data.shapes import iter_sound_clips

    # A list, not a stream: clips are resampled once and cycled, which is far faster than speaking
    # new sentences every step; 2,000 clips (~40 minutes of audio) is plenty for a tokenizer.
    train = list(itertools.islice(iter_sound_clips(seed, split="train"), corpus_clips))
    return train, list(itertools.islice(iter_sound_clips(seed, split="valid"), held_out))


def write_report(
    directory: str | os.PathLike,
    *,
    kind: str,
    preset: str,
    data: str,
    train: TrainConfig,
    result: TrainResult,
    init: dict | None = None,
) -> dict:
    """Save what was trained, on what, how long it took and its held-out figures (with ``init``: the
    tokenizer it continued from, and that tokenizer's figures on the same held-out data)."""
    report = {
        "tokenizer": kind,
        "preset": preset,
        "data": data,
        **({"init": init} if init is not None else {}),
        "train": {k: v for k, v in vars(train).items() if k != "progress"},
        "seconds": round(result.seconds, 1),
        "held_out": result.history[-1] if result.history else {},
        "history": result.history,
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
    }
    write_text_atomic(Path(directory) / REPORT_FILENAME, json.dumps(report, indent=2) + "\n")
    return report
