"""Endless, seeded streams of media for the tokenizer trainers: scene images (captioned or not) and sound clips.

No documents, no metadata, no files: just :class:`~polymodal.content.Image` s or 16 kHz mono
:class:`~polymodal.content.Audio` s, item ``i`` drawn from its own generator (see
:mod:`~polymodal.data.shapes.seeds`), so a stream restarted at any point gives the same items.

This module knows nothing about shards or training.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from polymodal.content import Audio, Image
from polymodal.data.shapes.language import caption
from polymodal.data.shapes.questions import image_question
from polymodal.data.shapes.render import check_size, render_scene
from polymodal.data.shapes.seeds import check_seed, check_split, sample_rng
from polymodal.data.shapes.sounds import random_event, render_event
from polymodal.data.shapes.speech import random_voice, speak
from polymodal.data.shapes.world import random_scene
from polymodal.errors import ConfigError

_SPEECH_SHARE = 0.4  # of sound clips, when speech is included


def _indices(count: int | None) -> Iterator[int]:
    if count is None:
        return itertools.count()
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"count must be an int >= 0 or None (endless), got {count!r}")
    return iter(range(count))


def iter_scene_images(seed: int, *, size: int = 64, count: int | None = None, split: str = "train") -> Iterator[Image]:
    """Rendered random scenes, ``size`` x ``size``; endless when ``count`` is None."""
    seed, size = check_seed(seed), check_size(size)
    check_split(split)
    for i in _indices(count):
        yield render_scene(random_scene(sample_rng(seed, split, "stream/scene_image", i)), size=size)


def iter_captioned_scenes(
    seed: int, *, size: int = 64, count: int | None = None, split: str = "train"
) -> Iterator[tuple[Image, str]]:
    """:func:`iter_scene_images`' pictures (the same, item for item) with a caption of each."""
    seed, size = check_seed(seed), check_size(size)
    check_split(split)
    for i in _indices(count):
        rng = sample_rng(seed, split, "stream/scene_image", i)
        scene = random_scene(rng)
        yield render_scene(scene, size=size), caption(scene, rng)


def iter_sound_clips(
    seed: int, *, count: int | None = None, include_speech: bool = True, split: str = "train"
) -> Iterator[Audio]:
    """Sound events and (when ``include_speech``, about 40 %) spoken captions or questions, 16 kHz
    mono; endless when ``count`` is None."""
    seed = check_seed(seed)
    check_split(split)
    for i in _indices(count):
        rng = sample_rng(seed, split, "stream/sound_clip", i)
        if include_speech and rng.random() < _SPEECH_SHARE:
            scene = random_scene(rng)
            text = caption(scene, rng) if rng.random() < 0.6 else image_question(scene, rng).text
            yield speak(text, random_voice(rng), gain=float(rng.uniform(0.5, 0.9)))
        else:
            yield render_event(random_event(rng))
