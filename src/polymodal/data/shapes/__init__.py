"""The shapes world: polymodal's built-in multimodal corpus, generated on the spot.

Coloured shapes on plain, gradient or textured backgrounds, their captions and questions, spoken
by eSpeak NG voices, their own sounds (one timbre per shape, one note per colour), short videos
where an object appears with its sound, and real handwritten digits (scikit-learn's bundled
8x8 scans). Every sample is a :class:`~polymodal.content.Document` for one training direction
(image->text, text->image, speech<->text, sound->text, chat QA over images, speech, sounds and
video, interleaved text and media) plus metadata: kind, direction, ability label and the ground
truth it was computed from. Nothing is downloaded and everything is deterministic by seed::

    from polymodal.data.shapes import make_shapes, read_shards

    make_shapes("corpus/", n=10_000, seed=0)                # train split, 12 kinds mixed
    make_shapes("eval/", n=1_000, seed=0, split="test")     # never-seen seeds streams
    for sample in read_shards("corpus/"):
        sample.document, sample.meta["ability"], sample.meta["truth"]

Seeds and splits (:mod:`.seeds`): sample ``i`` of a kind draws from
``SeedSequence(seed, spawn_key=(salt, split, kind, i))``, so it is the same for any worker count
or shard layout, and ``train``/``valid``/``test`` never share a random stream; the digits are
partitioned between splits once and for all.

One module per concern: ``world`` (ground truth), ``render`` (pixels), ``language`` (captions),
``questions`` (QA), ``sounds`` (sound events), ``speech`` (eSpeak NG), ``video``, ``digits``,
``samples`` (the kinds), ``shards`` (WebDataset files), ``streams`` (media for tokenizer training).
This package knows nothing about tokenizers or models.
"""

from polymodal.data.shapes.digits import DIGIT_NAMES, load_digits, render_digit, split_indices
from polymodal.data.shapes.questions import ABILITIES, Question
from polymodal.data.shapes.render import render_scene
from polymodal.data.shapes.samples import ALL_KINDS, ShapesConfig, ShapesSample, list_kinds, make_sample
from polymodal.data.shapes.seeds import GENERATOR_VERSION, SPLITS, sample_rng
from polymodal.data.shapes.shards import decode_sample, encode_sample, make_shapes, read_shards, read_texts
from polymodal.data.shapes.sounds import SoundEvent, random_event, render_event
from polymodal.data.shapes.speech import SpeechError, Voice, available_voices, random_voice, speak
from polymodal.data.shapes.streams import iter_captioned_scenes, iter_scene_images, iter_sound_clips
from polymodal.data.shapes.video import VideoScene, encode_mp4, random_video_scene, render_video
from polymodal.data.shapes.world import COLOURS, POSITIONS, SHAPES, SIZES, Background, Scene, ShapeObject, random_scene

__all__ = [
    "ABILITIES",
    "ALL_KINDS",
    "COLOURS",
    "DIGIT_NAMES",
    "GENERATOR_VERSION",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Background",
    "Question",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "ShapesSample",
    "SoundEvent",
    "SpeechError",
    "VideoScene",
    "Voice",
    "available_voices",
    "decode_sample",
    "encode_mp4",
    "encode_sample",
    "iter_captioned_scenes",
    "iter_scene_images",
    "iter_sound_clips",
    "list_kinds",
    "load_digits",
    "make_sample",
    "make_shapes",
    "random_event",
    "random_scene",
    "random_video_scene",
    "random_voice",
    "read_shards",
    "read_texts",
    "render_digit",
    "render_event",
    "render_scene",
    "render_video",
    "sample_rng",
    "speak",
    "split_indices",
]
