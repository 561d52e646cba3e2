"""What the text-to-image judge reads: the attributes a caption names, and pictures drawn to show them.

Kept free of torch: the suite writer's worker processes draw the items' true pictures with it.
"""

from __future__ import annotations

import numpy as np

from polymodal.data.shapes.world import (
    COLOURS,
    POSITIONS,
    RADIUS,
    SHAPES,
    SIZES,
    Scene,
    random_background,
    random_object,
    random_scene,
)
from polymodal.errors import ConfigError

COUNT_WORDS = ("one", "two", "three", "four")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": POSITIONS,
    "count": COUNT_WORDS,
}


def _cell_centre(rng: np.random.Generator, cell: int, size: str) -> tuple[float, float]:
    room = max(0.0, 1 / 6 - RADIUS[size] - 0.01)  # the whole object stays inside its cell where it fits
    dx, dy = rng.uniform(-room, room, size=2) if room > 0 else (0.0, 0.0)
    return (cell % 3 + 0.5) / 3 + dx, (cell // 3 + 0.5) / 3 + dy


def draw_scene(
    rng: np.random.Generator,
    *,
    colour: str | None = None,
    shape: str | None = None,
    position: str | None = None,
    count: str | None = None,
) -> Scene:
    """A scene showing what a prompt names, the rest drawn at random: ``count`` objects of any kinds
    (as the corpus draws scenes), or one object of ``colour`` and ``shape`` in the cell ``position``."""
    if count is not None:
        if colour or shape or position:
            raise ConfigError("a count is drawn with objects of any kind, at any place")
        n = COUNT_WORDS.index(count) + 1
        return random_scene(rng, min_objects=n, max_objects=n)
    colour = colour or str(rng.choice(list(COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    size = str(rng.choice(SIZES))
    cell = POSITIONS.index(position) if position else int(rng.integers(9))
    x, y = _cell_centre(rng, cell, size)
    obj = random_object(rng, shape, colour, x, y, size)
    return Scene((obj,), random_background(rng, [obj.rgb]), "grid")
