"""The shapes world's ground truth: what a scene holds, and how random scenes are drawn.

A :class:`Scene` is one to four :class:`ShapeObject` s (shape, colour name, size, centre, exact fill
colour, tilt) on a :class:`Background`. Coordinates are fractions of the image side, so one scene
renders at any size. Captions, questions, sounds and videos are all computed from these records,
never from pixels, which is what lets the tests check each rendering against its ground truth.

Objects in a scene never overlap and no two share both shape and colour, so "the red circle" always
names exactly one object. Backgrounds are pale or dark and unsaturated, and are redrawn until every
object stands out from them by a clear colour distance.

This module knows nothing about pixels, sound, words or documents.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass

import numpy as np

from polymodal.data.shapes.seeds import child_seed

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")

#: Named object colours (sRGB). Saturated on purpose: backgrounds are not, so contrast is easy.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (250, 128, 14),
    "yellow": (238, 200, 20),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "purple": (148, 60, 189),
    "pink": (240, 100, 180),
}

SIZES: tuple[str, ...] = ("small", "large")
#: Object radius (circumscribed) as a fraction of the image side.
RADIUS: dict[str, float] = {"small": 0.10, "large": 0.16}

ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "centre", "right")
#: The nine 3x3 positions, row-major, by the name questions answer with.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

BACKGROUND_STYLES: tuple[str, ...] = ("plain", "gradient", "texture")
#: Peak deviation (in 0-255 levels) of a textured background from its base colour.
TEXTURE_AMPLITUDE = 14
# Smallest RGB distance between an object's fill and any colour its background can take.
_MIN_CONTRAST = 110.0
# A free-layout object this close (fraction of the side) to a third's border has no named cell.
_CELL_MARGIN = 0.04
# Centres at least this far apart (fraction of the side) count as left/right of or above/below.
RELATION_GAP = 0.15


@dataclass(frozen=True)
class ShapeObject:
    """One object: ``x``/``y`` its centre as fractions of the width/height from the top left."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    rgb: tuple[int, int, int]
    angle: float = 0.0  # tilt in degrees, counter-clockwise

    @property
    def radius(self) -> float:
        """Circumscribed radius, fraction of the image side."""
        return RADIUS[self.size]

    @property
    def name(self) -> str:
        """``"red circle"``: unique within a scene (colour and shape never repeat together)."""
        return f"{self.colour} {self.shape}"

    @property
    def cell(self) -> tuple[int, int] | None:
        """(row, column) of the 3x3 cell holding the centre, or None when too near a border."""
        row_col = []
        for v in (self.y, self.x):
            if min(abs(v - 1 / 3), abs(v - 2 / 3)) < _CELL_MARGIN:
                return None  # on the border between two thirds: no honest single answer
            row_col.append(min(int(v * 3), 2))
        return row_col[0], row_col[1]

    @property
    def position(self) -> str | None:
        """The cell's name (``"top left"``, ``"centre"`` ...) or None."""
        cell = self.cell
        return None if cell is None else POSITIONS[3 * cell[0] + cell[1]]

    def moved(self, x: float, y: float) -> ShapeObject:
        return ShapeObject(self.shape, self.colour, self.size, x, y, self.rgb, self.angle)


@dataclass(frozen=True)
class Background:
    """``plain``, a linear ``gradient`` from ``rgb`` to ``rgb2`` along ``angle``, or ``texture``
    (``rgb`` plus smooth noise of :data:`TEXTURE_AMPLITUDE` drawn from ``texture_seed``)."""

    style: str
    tone: str  # "light" or "dark"
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int]
    angle: float = 0.0
    texture_seed: int = 0

    def extremes(self) -> list[np.ndarray]:
        """Colours bounding what the background can show (for the contrast check)."""
        base = [np.array(self.rgb, float), np.array(self.rgb2, float)]
        if self.style != "texture":
            return base
        return [np.clip(c + d, 0, 255) for c in base[:1] for d in (-TEXTURE_AMPLITUDE, TEXTURE_AMPLITUDE)]


@dataclass(frozen=True)
class Scene:
    """The ground truth of one picture. Objects are listed in drawing order."""

    objects: tuple[ShapeObject, ...]
    background: Background
    layout: str  # "grid" (centres on the 3x3 cells) or "free"

    def count(self, *, shape: str | None = None, colour: str | None = None) -> int:
        return sum(1 for o in self.objects if (shape in (None, o.shape)) and (colour in (None, o.colour)))

    def find(self, *, shape: str | None = None, colour: str | None = None) -> list[ShapeObject]:
        return [o for o in self.objects if (shape in (None, o.shape)) and (colour in (None, o.colour))]

    def to_dict(self) -> dict:
        """JSON-ready form (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict) -> Scene:
        objects = tuple(ShapeObject(**{**o, "rgb": tuple(o["rgb"])}) for o in obj["objects"])
        bg = obj["background"]
        background = Background(**{**bg, "rgb": tuple(bg["rgb"]), "rgb2": tuple(bg["rgb2"])})
        return cls(objects, background, obj["layout"])


def relations(a: ShapeObject, b: ShapeObject) -> list[str]:
    """What ``a`` is relative to ``b``: any of "left of", "right of", "above", "below"."""
    found = []
    if a.x < b.x - RELATION_GAP:
        found.append("left of")
    if a.x > b.x + RELATION_GAP:
        found.append("right of")
    if a.y < b.y - RELATION_GAP:
        found.append("above")
    if a.y > b.y + RELATION_GAP:
        found.append("below")
    return found


# -- drawing random scenes -------------------------------------------------------------------------


def random_kinds(rng: np.random.Generator, n: int, *, colours: list[str] | None = None) -> list[tuple[str, str]]:
    """``n`` distinct (shape, colour) pairs; shapes repeat often enough for counting questions.

    ``colours``, when given, is the pool colours are taken from without replacement.
    """
    pairs: list[tuple[str, str]] = []
    pool = list(colours) if colours is not None else None
    while len(pairs) < n:
        if pairs and rng.random() < 0.35:
            shape = pairs[int(rng.integers(len(pairs)))][0]
        else:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if pool is not None:
            colour = pool.pop(int(rng.integers(len(pool))))
        else:
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        if (shape, colour) not in pairs:
            pairs.append((shape, colour))
        elif pool is not None:
            pool.append(colour)
    return pairs


def jittered_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    """The named colour, each channel moved by up to 10 levels: varied, never another name."""
    base = np.array(COLOURS[colour]) + rng.integers(-10, 11, size=3)
    return tuple(int(c) for c in np.clip(base, 0, 255))


def random_object(rng: np.random.Generator, shape: str, colour: str, x: float, y: float, size: str) -> ShapeObject:
    angle = 0.0 if shape == "circle" else float(np.round(rng.uniform(-12, 12), 2))
    return ShapeObject(shape, colour, size, float(x), float(y), jittered_rgb(rng, colour), angle)


def free_positions(
    rng: np.random.Generator, radii: list[float], *, avoid: list[tuple[float, float, float]] = ()
) -> list[tuple[float, float]] | None:
    """Centres for circles of ``radii`` inside the unit square, not touching each other or ``avoid``
    ((x, y, r) triples). None if rejection sampling gives up (the caller draws again)."""
    placed = list(avoid)
    out = []
    for r in radii:
        for _ in range(200):
            x, y = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
            if all(math.hypot(x - px, y - py) >= r + pr + 0.03 for px, py, pr in placed):
                break
        else:
            return None
        placed.append((float(x), float(y), r))
        out.append((round(float(x), 4), round(float(y), 4)))
    return out


def grid_positions(rng: np.random.Generator, sizes: list[str]) -> list[tuple[float, float]]:
    """Distinct 3x3 cell centres, nudged by whatever room the object leaves in its cell."""
    cells = rng.choice(9, size=len(sizes), replace=False)
    out = []
    for cell, size in zip(cells, sizes, strict=True):
        room = max(0.0, 1 / 6 - RADIUS[size] - 0.01)
        dx, dy = rng.uniform(-room, room, size=2) if room > 0 else (0.0, 0.0)
        out.append((round((cell % 3 + 0.5) / 3 + dx, 4), round((cell // 3 + 0.5) / 3 + dy, 4)))
    return out


def random_background(rng: np.random.Generator, fills: list[tuple[int, int, int]], *, easy: bool = False) -> Background:
    """An unsaturated light or dark background that every colour in ``fills`` stands out from
    (``easy``: light and untextured whenever the fills allow it)."""
    style = BACKGROUND_STYLES[int(rng.integers(len(BACKGROUND_STYLES)))]
    tone_first = "light" if rng.random() < 0.6 else "dark"
    if easy:
        style = "plain" if style == "texture" else style
        tone_first = "light"
    for attempt in range(40):
        tone = tone_first if attempt < 20 else ("dark" if tone_first == "light" else "light")
        hue = rng.random()
        lo, hi = (0.82, 0.97) if tone == "light" else (0.10, 0.28)
        value = rng.uniform(lo, hi)
        rgb = _hsv(hue, rng.uniform(0.0, 0.18), value)
        rgb2 = rgb
        if style == "gradient":
            value2 = np.clip(value + rng.choice([-1, 1]) * rng.uniform(0.06, 0.14), lo - 0.05, hi + 0.03)
            rgb2 = _hsv((hue + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.0, 0.2), value2)
        angle = float(np.round(rng.uniform(0, 360), 1)) if style == "gradient" else 0.0
        seed = child_seed(rng) if style == "texture" else 0
        bg = Background(style, tone, rgb, rgb2, angle, seed)
        if all(
            np.linalg.norm(np.array(fill, float) - extreme) >= _MIN_CONTRAST
            for fill in fills
            for extreme in bg.extremes()
        ):
            return bg
    raise RuntimeError(f"no background contrasts with fills {fills}")  # never happens with COLOURS


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


def random_scene(rng: np.random.Generator, *, min_objects: int = 1, max_objects: int = 4, easy: bool = False) -> Scene:
    """A random scene: 1-4 objects on a 3x3 grid or at free positions, on a contrasting background.
    ``easy``: every object large, the background light and untextured (when its colours allow)."""
    n = int(rng.integers(min_objects, max_objects + 1))
    pairs = random_kinds(rng, n)
    sizes = [SIZES[int(rng.integers(2))] for _ in range(n)]
    if easy:
        sizes = ["large"] * n
    layout = "grid" if rng.random() < 0.5 else "free"
    positions = free_positions(rng, [RADIUS[s] for s in sizes]) if layout == "free" else None
    if positions is None:
        layout, positions = "grid", grid_positions(rng, sizes)
    objects = tuple(
        random_object(rng, shape, colour, x, y, size)
        for (shape, colour), (x, y), size in zip(pairs, positions, sizes, strict=True)
    )
    return Scene(objects, random_background(rng, [o.rgb for o in objects], easy=easy), layout)
