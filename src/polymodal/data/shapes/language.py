"""English for the shapes world: noun phrases, number words and varied scene captions.

Every sentence is computed from a :class:`~polymodal.data.shapes.world.Scene`, so a caption is
true of its picture by construction: counts are counted, relations come from
:func:`~polymodal.data.shapes.world.relations`, positions from the objects' cells. Templates are
chosen by the caller's random generator, so the same generator state gives the same words.

This module knows nothing about pixels, sound or documents.
"""

from __future__ import annotations

import numpy as np

from polymodal.data.shapes.world import Scene, ShapeObject, relations

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_RELATION_PHRASES = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "higher than", "over"),
    "below": ("below", "lower than", "under"),
}

_POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}

_OPENINGS = (
    "A picture of {list}",
    "An image showing {list}",
    "This picture shows {list}",
    "There is {list}",
    "We can see {list}",
    "{List}",
)


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def article(phrase: str) -> str:
    """``"an orange circle"``, ``"a red star"``."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def count_phrase(n: int, noun: str) -> str:
    """``"one star"``, ``"two crosses"``."""
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural(noun)}"


def describe(obj: ShapeObject, *, with_size: bool = False) -> str:
    """``"red circle"`` or ``"large red circle"`` (no article)."""
    return f"{obj.size} {obj.name}" if with_size else obj.name


def join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")


def background_phrase(scene: Scene, rng: np.random.Generator) -> str:
    bg = scene.background
    style = {"plain": pick(rng, ("plain", "flat")), "gradient": "gradient", "texture": "textured"}[bg.style]
    return f"on a {bg.tone} {style} background"


def listing_sentence(scene: Scene, rng: np.random.Generator) -> str:
    """Names every object: "A picture of a large red circle and a blue star on a dark background."."""
    with_size = rng.random() < 0.5
    items = [article(describe(o, with_size=with_size)) for o in scene.objects]
    order = rng.permutation(len(items))
    listed = join_list([items[i] for i in order])
    opening = pick(rng, _OPENINGS)
    text = opening.format(list=listed, List=listed)
    if rng.random() < 0.5:
        text += " " + background_phrase(scene, rng)
    return sentence(text)


def total_count_sentence(scene: Scene, rng: np.random.Generator) -> str:
    n = len(scene.objects)
    noun = pick(rng, ("shape", "object"))
    if rng.random() < 0.5:
        verb = "is" if n == 1 else "are"
        return sentence(f"there {verb} {count_phrase(n, noun)} in the picture")
    return sentence(f"the picture contains {count_phrase(n, noun)}")


def shape_count_sentence(scene: Scene, rng: np.random.Generator) -> str:
    """Counts one shape, preferring shapes that occur more than once."""
    shapes = sorted({o.shape for o in scene.objects}, key=lambda s: (-scene.count(shape=s), s))
    shape = shapes[0] if scene.count(shape=shapes[0]) > 1 and rng.random() < 0.8 else pick(rng, shapes)
    n = scene.count(shape=shape)
    return sentence(f"there {'is' if n == 1 else 'are'} {count_phrase(n, shape)}")


def relation_sentence(scene: Scene, rng: np.random.Generator) -> str | None:
    """``"The red circle is to the left of the blue star."`` or None when no pair is related."""
    pairs = [(a, b, rel) for a in scene.objects for b in scene.objects if a is not b for rel in relations(a, b)]
    if not pairs:
        return None
    a, b, rel = pairs[int(rng.integers(len(pairs)))]
    return sentence(f"the {a.name} is {pick(rng, _RELATION_PHRASES[rel])} the {b.name}")


def position_sentence(scene: Scene, rng: np.random.Generator) -> str | None:
    """``"The red circle is in the top left corner."`` or None when no object sits in a cell."""
    placed = [o for o in scene.objects if o.position is not None]
    if not placed:
        return None
    obj = placed[int(rng.integers(len(placed)))]
    return sentence(f"the {obj.name} is {_POSITION_PHRASES[obj.position]}")


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A one-to-three sentence caption: the objects, then up to two facts (counts, relations,
    positions) in random order."""
    extra = [
        total_count_sentence(scene, rng),
        shape_count_sentence(scene, rng),
        relation_sentence(scene, rng),
        position_sentence(scene, rng),
    ]
    extra = [s for s in extra if s is not None]
    keep = int(rng.integers(0, 3))
    chosen = [extra[i] for i in sorted(rng.choice(len(extra), size=min(keep, len(extra)), replace=False))]
    return " ".join([listing_sentence(scene, rng), *chosen])


def position_phrase(position: str) -> str:
    """``"top left"`` -> ``"in the top left corner"``."""
    return _POSITION_PHRASES[position]
