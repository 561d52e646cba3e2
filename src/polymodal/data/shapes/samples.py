"""The sample kinds: one document per training direction, with its metadata, from one generator.

Each kind builds a :class:`~polymodal.content.Document` from the ground truth of one random scene,
sound, video or digit, plus JSON-ready metadata kept *beside* the document (kind, direction,
ability, split, seed, index, generator version and the ground truth it was computed from)::

    kind               direction              document
    image_caption      image->text            image, caption
    caption_image      text->image            caption, image
    speech_transcript  speech->text           spoken caption or question, its text
    transcript_speech  text->speech           text, its speech
    sound_label        sound->text            sound event, "a small red circle"
    image_qa           image+text->text       chat: user image + question, assistant answer (1-2 turns)
    spoken_image_qa    image+speech->text     chat: user image + spoken question, assistant answer
    sound_qa           sound+text->text       chat: user sound + "which shape makes this sound?"
    video_qa           video+text->text       chat: user video (frames + audio) + timing question
    digit_caption      image->text            real handwritten digit, its name
    spoken_digit       speech->image          the digit's name spoken, the handwritten digit
    interleaved        interleaved            text, image, caption, a sound, the caption spoken

:func:`make_sample` is a pure function of (kind, index, seed, split, config): see
:mod:`~polymodal.data.shapes.seeds`. This module knows nothing about shards or files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from polymodal.content import Audio, Document, Image, Text
from polymodal.data.shapes.digits import DIGIT_NAMES, load_digits, render_digit, split_indices
from polymodal.data.shapes.language import article, caption, pick
from polymodal.data.shapes.questions import (
    Question,
    digit_question,
    image_question,
    sound_question,
    sync_question,
)
from polymodal.data.shapes.render import check_size, render_scene
from polymodal.data.shapes.seeds import GENERATOR_VERSION, check_seed, check_split, sample_rng
from polymodal.data.shapes.sounds import random_event, render_event
from polymodal.data.shapes.speech import random_voice, speak
from polymodal.data.shapes.video import random_video_scene, render_video
from polymodal.data.shapes.world import Scene, random_scene
from polymodal.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ShapesConfig:
    """Rendering settings shared by every kind. Changing one changes the samples (not the ground
    truth: scenes, sounds and questions depend only on the seed)."""

    image_size: int = 64
    video_size: int = 64
    video_fps: int = 10
    max_objects: int = 4  # objects in a picture: 1 to this (4 is the whole world; fewer is an easier corpus)
    easy_scenes: bool = False  # pictures: large objects on light, untextured backgrounds (videos unchanged)

    def __post_init__(self) -> None:
        check_size(self.image_size)
        check_size(self.video_size)
        if isinstance(self.video_fps, bool) or not isinstance(self.video_fps, int) or not 1 <= self.video_fps <= 30:
            raise ConfigError(f"video_fps must be an int in [1, 30], got {self.video_fps!r}")
        if (
            isinstance(self.max_objects, bool)
            or not isinstance(self.max_objects, int)
            or not 1 <= self.max_objects <= 4
        ):
            raise ConfigError(f"max_objects must be an int in [1, 4], got {self.max_objects!r}")
        if not isinstance(self.easy_scenes, bool):
            raise ConfigError(f"easy_scenes must be a bool, got {self.easy_scenes!r}")

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "video_size": self.video_size, "video_fps": self.video_fps,
                "max_objects": self.max_objects, "easy_scenes": self.easy_scenes}  # fmt: skip


@dataclass(frozen=True)
class ShapesSample:
    """One generated (or read back) sample: its key, its document and its metadata."""

    key: str
    document: Document
    meta: dict = field(compare=False)


# A builder draws everything from the generator and returns (document, ability, ground truth).
_Built = tuple[Document, str, dict]
_Builder = Callable[[np.random.Generator, ShapesConfig, str], _Built]


@dataclass(frozen=True)
class _Kind:
    build: _Builder
    direction: str


def _spoken(rng: np.random.Generator, text: str) -> tuple[Audio, dict]:
    voice = random_voice(rng)
    return speak(text, voice, gain=round(float(rng.uniform(0.5, 0.9)), 3)), voice.to_dict()


def _scene_and_caption(rng: np.random.Generator, config: ShapesConfig) -> tuple[Scene, Image, str]:
    scene = random_scene(rng, max_objects=config.max_objects, easy=config.easy_scenes)
    return scene, render_scene(scene, size=config.image_size), caption(scene, rng)


def _image_caption(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    scene, image, text = _scene_and_caption(rng, config)
    return Document.of(image, Text(text)), "captioning/image", {"scene": scene.to_dict(), "caption": text}


def _caption_image(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    scene, image, text = _scene_and_caption(rng, config)
    return Document.of(Text(text), image), "generation/image", {"scene": scene.to_dict(), "caption": text}


def _speech_text(rng: np.random.Generator, config: ShapesConfig) -> tuple[str, str]:
    """A caption or a question about a random scene: what gets spoken."""
    scene = random_scene(rng, max_objects=config.max_objects, easy=config.easy_scenes)
    if rng.random() < 0.6:
        return caption(scene, rng), "caption"
    return image_question(scene, rng).text, "question"


def _speech_transcript(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    text, source = _speech_text(rng, config)
    audio, voice = _spoken(rng, text)
    return Document.of(audio, Text(text)), "speech/recognition", {"text": text, "source": source, "voice": voice}


def _transcript_speech(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    text, source = _speech_text(rng, config)
    audio, voice = _spoken(rng, text)
    return Document.of(Text(text), audio), "speech/synthesis", {"text": text, "source": source, "voice": voice}


def _sound_label(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    event = random_event(rng)
    described = article(f"{event.size} {event.colour} {event.shape}")
    label = pick(rng, ("{d}", "the sound of {d}", "{d} makes this sound")).format(d=described)
    truth = {"sound": event.to_dict(), "label": label}
    return Document.of(render_event(event), Text(label)), "audio/sound-event", truth


def _asked(rng: np.random.Generator, question: Question) -> str:
    """The question as put to the model: a third of the time with its options listed."""
    return question.with_options_text() if rng.random() < 1 / 3 else question.text


def _image_qa(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    scene = random_scene(rng, max_objects=config.max_objects, easy=config.easy_scenes)
    image = render_scene(scene, size=config.image_size)
    questions = [image_question(scene, rng)]
    turns = [("user", [image, _asked(rng, questions[0])]), ("assistant", questions[0].answer)]
    if rng.random() < 0.4:
        follow_up = image_question(scene, rng)
        if follow_up.text != questions[0].text:
            questions.append(follow_up)
            turns += [("user", _asked(rng, follow_up)), ("assistant", follow_up.answer)]
    truth = {"scene": scene.to_dict(), "questions": [q.to_dict() for q in questions]}
    return Document.chat(*turns), questions[0].ability, truth


def _spoken_image_qa(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    scene = random_scene(rng, max_objects=config.max_objects, easy=config.easy_scenes)
    image = render_scene(scene, size=config.image_size)
    question = image_question(scene, rng)
    audio, voice = _spoken(rng, question.text)
    truth = {"scene": scene.to_dict(), "questions": [question.to_dict()], "voice": voice}
    return Document.chat(("user", [image, audio]), ("assistant", question.answer)), question.ability, truth


def _sound_qa(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    event = random_event(rng)
    question = sound_question(event, rng)
    doc = Document.chat(("user", [render_event(event), _asked(rng, question)]), ("assistant", question.answer))
    return doc, question.ability, {"sound": event.to_dict(), "questions": [question.to_dict()]}


def _video_qa(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    scene = random_video_scene(rng, fps=config.video_fps)
    video = render_video(scene, size=config.video_size)
    question = sync_question(scene.sound_object, scene.all_objects(), rng)
    doc = Document.chat(("user", [video, _asked(rng, question)]), ("assistant", question.answer))
    return doc, question.ability, {"video": scene.to_dict(), "questions": [question.to_dict()]}


def _random_digit(rng: np.random.Generator, split: str) -> tuple[int, int]:
    indices = split_indices(split)
    index = int(indices[int(rng.integers(len(indices)))])
    return index, int(load_digits()[1][index])


def _digit_caption(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    index, label = _random_digit(rng, split)
    name = DIGIT_NAMES[label]
    text = pick(rng, ("{n}", "the digit {n}", "a handwritten {n}", "{d}", "The number {d}, written by hand."))
    text = text.format(n=name, d=label)
    question = digit_question(label, rng)
    truth = {"digit": label, "dataset_index": index, "text": text, "questions": [question.to_dict()]}
    return Document.of(render_digit(index, size=config.image_size), Text(text)), "perception/digit", truth


def _spoken_digit(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    index, label = _random_digit(rng, split)
    text = pick(rng, ("{n}", "the digit {n}", "write a {n}", "number {n}")).format(n=DIGIT_NAMES[label])
    audio, voice = _spoken(rng, text)
    truth = {"digit": label, "dataset_index": index, "text": text, "voice": voice}
    return Document.of(audio, render_digit(index, size=config.image_size)), "generation/image-from-speech", truth


def _interleaved(rng: np.random.Generator, config: ShapesConfig, split: str) -> _Built:
    scene, image, text = _scene_and_caption(rng, config)
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    event = random_event(rng, shape=obj.shape, colour=obj.colour, size=obj.size)
    speech, voice = _spoken(rng, text)
    intro = pick(rng, ("Look at this picture: ", "Here is a scene. ", "A small drawing: "))
    doc = Document.of(
        Text(intro),
        image,
        Text(f" {text} If you tap the {obj.name}, it sounds like this: "),
        render_event(event),
        Text(pick(rng, (" Here is the description read aloud: ", " Someone describes it: "))),
        speech,
    )
    truth = {"scene": scene.to_dict(), "caption": text, "sound": event.to_dict(), "voice": voice}
    return doc, "interleaved", truth


KINDS: dict[str, _Kind] = {
    "image_caption": _Kind(_image_caption, "image->text"),
    "caption_image": _Kind(_caption_image, "text->image"),
    "speech_transcript": _Kind(_speech_transcript, "speech->text"),
    "transcript_speech": _Kind(_transcript_speech, "text->speech"),
    "sound_label": _Kind(_sound_label, "sound->text"),
    "image_qa": _Kind(_image_qa, "image+text->text"),
    "spoken_image_qa": _Kind(_spoken_image_qa, "image+speech->text"),
    "sound_qa": _Kind(_sound_qa, "sound+text->text"),
    "video_qa": _Kind(_video_qa, "video+text->text"),
    "digit_caption": _Kind(_digit_caption, "image->text"),
    "spoken_digit": _Kind(_spoken_digit, "speech->image"),
    "interleaved": _Kind(_interleaved, "interleaved"),
}
ALL_KINDS: tuple[str, ...] = tuple(KINDS)


def list_kinds() -> tuple[str, ...]:
    """Every sample kind, in the order mixed corpora cycle through them."""
    return tuple(KINDS)


def check_kinds(kinds: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    if not kinds:
        raise ConfigError("kinds is empty; pick some of " + ", ".join(KINDS))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"unknown sample kind(s) {unknown}; known: {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"kinds lists a kind twice: {list(kinds)}")
    return kinds


def sample_key(kind: str, index: int, *, seed: int, split: str) -> str:
    """``"image_qa-train-0-0000012"``: unique per sample, no dots (WebDataset splits on them)."""
    return f"{kind}-{split}-{seed}-{index:07d}"


def make_sample(
    kind: str, index: int, *, seed: int = 0, split: str = "train", config: ShapesConfig | None = None
) -> ShapesSample:
    """Sample ``index`` of ``kind``: the same for the same arguments, in any process."""
    check_kinds((kind,))
    seed, config = check_seed(seed), config or ShapesConfig()
    check_split(split)
    document, ability, truth = KINDS[kind].build(sample_rng(seed, split, kind, index), config, split)
    key = sample_key(kind, index, seed=seed, split=split)
    meta = {
        "key": key,
        "kind": kind,
        "direction": KINDS[kind].direction,
        "ability": ability,
        "split": split,
        "seed": seed,
        "index": index,
        "generator_version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "truth": truth,
    }
    return ShapesSample(key, document, meta)
