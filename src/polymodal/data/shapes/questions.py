"""Questions with reference answers and four-way multiple choice, computed from ground truth.

A :class:`Question` holds the question text, the reference answer, four options (the answer once,
at a position drawn from the generator, and three distinct distractors drawn from the same
attribute: colours for a colour question, shapes for a shape question ...) and an ability label
(``perception/colour``, ``audio/sound-event`` ...) that evaluation reports group scores by.

Questions are only asked when the ground truth gives exactly one right answer: a colour question
names a shape that occurs once, a position question an object that sits clearly inside a cell, a
relation question a reference that exactly one object is clearly left of (or above ...).

This module knows nothing about pixels, audio samples or documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from polymodal.data.shapes.digits import DIGIT_NAMES
from polymodal.data.shapes.language import NUMBER_WORDS, article, pick, plural
from polymodal.data.shapes.sounds import SoundEvent
from polymodal.data.shapes.world import COLOURS, POSITIONS, RELATION_GAP, SHAPES, Scene, ShapeObject, relations

N_OPTIONS = 4

ABILITIES: tuple[str, ...] = (
    "perception/colour",
    "perception/shape",
    "perception/count",
    "perception/position",
    "perception/spatial-relation",
    "perception/digit",
    "audio/sound-event",
    "crossmodal/audio-visual-timing",
)


@dataclass(frozen=True)
class Question:
    """A question, its reference answer, 4 options with the answer at ``answer_index``, and the
    ability it tests."""

    text: str
    answer: str
    options: tuple[str, ...]
    answer_index: int
    ability: str

    def __post_init__(self) -> None:
        if self.options[self.answer_index] != self.answer or self.options.count(self.answer) != 1:
            raise ValueError(f"answer {self.answer!r} must appear exactly once, at {self.answer_index}")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"options repeat: {self.options}")

    def with_options_text(self) -> str:
        """The question followed by its options: ``"... Answer with one of: red, blue, ..."``."""
        return f"{self.text} Answer with one of: {', '.join(self.options[:-1])} or {self.options[-1]}."

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict) -> Question:
        return cls(**{**obj, "options": tuple(obj["options"])})


def multiple_choice(rng: np.random.Generator, text: str, answer: str, pool: Sequence[str], ability: str) -> Question:
    """A :class:`Question` whose three distractors are drawn from ``pool`` without the answer."""
    others = [p for p in dict.fromkeys(pool) if p != answer]
    if len(others) < N_OPTIONS - 1:
        raise ValueError(f"need {N_OPTIONS - 1} distractors besides {answer!r}, the pool has {others}")
    chosen = [others[i] for i in rng.choice(len(others), size=N_OPTIONS - 1, replace=False)]
    at = int(rng.integers(N_OPTIONS))
    options = (*chosen[:at], answer, *chosen[at:])
    return Question(text, answer, options, at, ability)


# -- about a picture --------------------------------------------------------------------------------


def _colour(scene: Scene, rng: np.random.Generator) -> Question | None:
    unique = [o for o in scene.objects if scene.count(shape=o.shape) == 1]
    if not unique:
        return None
    obj = pick(rng, unique)
    text = pick(rng, ("What colour is the {s}?", "Which colour is the {s}?", "What is the colour of the {s}?"))
    return multiple_choice(rng, text.format(s=obj.shape), obj.colour, list(COLOURS), "perception/colour")


def _shape(scene: Scene, rng: np.random.Generator) -> Question | None:
    unique = [o for o in scene.objects if scene.count(colour=o.colour) == 1]
    if not unique:
        return None
    obj = pick(rng, unique)
    text = pick(rng, ("What shape is the {c} object?", "Which shape is {c}?", "What is the {c} shape?"))
    return multiple_choice(rng, text.format(c=obj.colour), obj.shape, SHAPES, "perception/shape")


def _count(scene: Scene, rng: np.random.Generator) -> Question:
    """How many objects, shapes of one kind or shapes of one colour. The answer is drawn first, uniformly
    among the counts this scene can give, then a question with that answer: so the wording does not give
    the answer away (drawn the other way round, with one or two objects "one" was right 88% of the time
    without looking). The options are zero to three (counts up to four: the four up to the answer)."""
    asks: dict[int, list[str]] = {}
    for text in ("How many objects are there?", "How many shapes are in the picture?"):
        asks.setdefault(len(scene.objects), []).append(text)
    for shape in SHAPES:
        asks.setdefault(scene.count(shape=shape), []).append(f"How many {plural(shape)} are there?")
    for colour in COLOURS:
        asks.setdefault(scene.count(colour=colour), []).append(f"How many {colour} shapes are there?")
    n = pick(rng, sorted(asks))
    pool = NUMBER_WORDS[max(0, n - 3) : max(4, n + 1)]
    return multiple_choice(rng, pick(rng, asks[n]), NUMBER_WORDS[n], pool, "perception/count")


def _position(scene: Scene, rng: np.random.Generator) -> Question | None:
    placed = [o for o in scene.objects if o.position is not None]
    if not placed:
        return None
    obj = pick(rng, placed)
    text = pick(rng, ("Where is the {o}?", "In which part of the picture is the {o}?"))
    return multiple_choice(rng, text.format(o=obj.name), obj.position, POSITIONS, "perception/position")


def _relation(scene: Scene, rng: np.random.Generator) -> Question | None:
    """ "What shape is left of the blue star?" when exactly one object clearly is, and every other
    object is clearly not (at least half the relation gap the other way)."""
    asks = []
    for ref in scene.objects:
        others = [o for o in scene.objects if o is not ref]
        for rel in ("left of", "right of", "above", "below"):
            hits = [o for o in others if rel in relations(o, ref)]
            if len(hits) == 1 and all(_clearly_not(o, ref, rel) for o in others if o is not hits[0]):
                asks.append((hits[0], ref, rel))
    if not asks:
        return None
    obj, ref, rel = asks[int(rng.integers(len(asks)))]
    phrase = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}[rel]
    return multiple_choice(
        rng, f"What shape is {phrase} the {ref.name}?", obj.shape, SHAPES, "perception/spatial-relation"
    )


def _clearly_not(obj: ShapeObject, ref: ShapeObject, rel: str) -> bool:
    margin = RELATION_GAP / 2
    return {
        "left of": obj.x > ref.x - margin,
        "right of": obj.x < ref.x + margin,
        "above": obj.y > ref.y - margin,
        "below": obj.y < ref.y + margin,
    }[rel]


_IMAGE_QUESTIONS: dict[str, Callable[[Scene, np.random.Generator], Question | None]] = {
    "perception/colour": _colour,
    "perception/shape": _shape,
    "perception/count": _count,
    "perception/position": _position,
    "perception/spatial-relation": _relation,
}


def image_question(scene: Scene, rng: np.random.Generator, *, ability: str | None = None) -> Question:
    """A question about the picture. The ability is drawn uniformly among those the scene can
    answer unambiguously (counting always can), unless ``ability`` asks for one."""
    if ability is not None:
        if ability not in _IMAGE_QUESTIONS:
            raise ValueError(f"no image question for ability {ability!r}; known: {list(_IMAGE_QUESTIONS)}")
        question = _IMAGE_QUESTIONS[ability](scene, rng)
        if question is None:
            raise ValueError(f"this scene cannot answer a {ability} question unambiguously")
        return question
    for i in rng.permutation(len(_IMAGE_QUESTIONS)):
        question = list(_IMAGE_QUESTIONS.values())[i](scene, rng)
        if question is not None:
            return question
    raise AssertionError("counting questions always apply")


# -- about sounds, videos and digits -------------------------------------------------------------------


def sound_question(event: SoundEvent, rng: np.random.Generator) -> Question:
    text = pick(rng, ("Which shape makes this sound?", "What shape does this sound belong to?", "Which shape is this?"))
    return multiple_choice(rng, text, event.shape, SHAPES, "audio/sound-event")


def sync_question(target: ShapeObject, seen: Sequence[ShapeObject], rng: np.random.Generator) -> Question:
    """ "Which object appeared when the sound played?": the answer names the sounding object;
    distractors are first the other objects of the video, then unseen colour/shape pairs."""
    text = pick(
        rng,
        (
            "Which object appeared when the sound played?",
            "What appeared at the moment of the sound?",
            "Which object showed up when you heard the sound?",
        ),
    )
    others = [o.name for o in seen if o.name != target.name]
    rng.shuffle(others)
    filler = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in {target.name, *others}]
    filler = [filler[i] for i in rng.permutation(len(filler))]
    pool = [*others, *filler][: N_OPTIONS - 1]
    at = int(rng.integers(N_OPTIONS))
    options = tuple(article(o) for o in (*pool[:at], target.name, *pool[at:]))
    return Question(text, article(target.name), options, at, "crossmodal/audio-visual-timing")


def digit_question(label: int, rng: np.random.Generator) -> Question:
    text = pick(rng, ("Which digit is this?", "What number is written here?", "Which digit was written?"))
    return multiple_choice(rng, text, DIGIT_NAMES[label], DIGIT_NAMES, "perception/digit")
