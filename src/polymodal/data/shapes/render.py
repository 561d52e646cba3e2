"""Drawing scenes: backgrounds and the seven shapes, anti-aliased, at any square size.

Everything is drawn at ``SUPERSAMPLE`` times the requested size and box-filtered down, so edges
are smooth while the inside of each shape keeps its exact fill colour. Textured backgrounds are
generated at the final size and enlarged without interpolation, so downsampling gives the texture
back exactly. The video module draws its frames with :func:`background_canvas` and
:func:`draw_objects` (the background is made once per video, not per frame).

This module knows nothing about captions, sound or documents; it turns ground truth into pixels.
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import PIL.ImageDraw

from polymodal.content import Image
from polymodal.data.shapes.world import TEXTURE_AMPLITUDE, Background, Scene, ShapeObject
from polymodal.errors import ConfigError

SUPERSAMPLE = 4
MIN_SIZE, MAX_SIZE = 16, 1024


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size must be an int in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    return int(size)


def render_scene(scene: Scene, *, size: int = 64) -> Image:
    """The scene as an RGB :class:`~polymodal.content.Image` of ``size`` x ``size`` pixels."""
    size = check_size(size)
    canvas = background_canvas(scene.background, size)
    draw_objects(canvas, scene.objects)
    return Image(canvas.reduce(SUPERSAMPLE), source="shapes:scene")


def background_canvas(background: Background, size: int) -> PIL.Image.Image:
    """The background at ``size * SUPERSAMPLE`` pixels (reduce by SUPERSAMPLE after drawing)."""
    big = size * SUPERSAMPLE
    if background.style == "plain":
        return PIL.Image.new("RGB", (big, big), background.rgb)
    if background.style == "gradient":
        # Position along the gradient direction, 0 at one corner-side and 1 at the opposite one.
        theta = math.radians(background.angle)
        ys, xs = np.mgrid[0:big, 0:big].astype(np.float32) / (big - 1) - 0.5
        along = xs * math.cos(theta) - ys * math.sin(theta)
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
        a, b = np.array(background.rgb, np.float32), np.array(background.rgb2, np.float32)
        pixels = a + t[..., None] * (b - a)
        return PIL.Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")
    if background.style == "texture":
        pixels = np.array(background.rgb, np.float32) + _texture(background.texture_seed, size)[..., None]
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(pixels, "RGB").resize((big, big), PIL.Image.Resampling.NEAREST)
    raise ConfigError(f"unknown background style {background.style!r}")


def _texture(seed: int, size: int) -> np.ndarray:
    """Smooth blotches plus fine grain, within +-TEXTURE_AMPLITUDE levels, ``[size, size]``."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, size=(6, 6)).astype(np.float32)
    blotches = np.asarray(
        PIL.Image.fromarray(coarse, "F").resize((size, size), PIL.Image.Resampling.BICUBIC), np.float32
    )
    grain = rng.uniform(-1, 1, size=(size, size)).astype(np.float32)
    mixed = 0.65 * np.clip(blotches, -1, 1) + 0.35 * grain
    return mixed * TEXTURE_AMPLITUDE


def draw_objects(canvas: PIL.Image.Image, objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> None:
    """Draw ``objects`` in order onto a supersampled canvas (in place)."""
    draw = PIL.ImageDraw.Draw(canvas)
    side = canvas.width
    for obj in objects:
        cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=obj.rgb)
        else:
            draw.polygon(outline_points(obj.shape, cx, cy, r, obj.angle), fill=obj.rgb)


def outline_points(shape: str, cx: float, cy: float, r: float, angle: float = 0.0) -> list[tuple[float, float]]:
    """The polygon of a non-circle shape of circumradius ``r`` centred on (cx, cy), in pixels."""
    if shape == "square":
        s = r / math.sqrt(2)
        unit = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "triangle":
        # Centroid on the centre: the apex at r up, the base at r/2 down.
        unit = [(r * math.cos(a), -r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    elif shape == "star":
        unit = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = math.pi / 2 + k * math.pi / 5
            unit.append((rad * math.cos(a), -rad * math.sin(a)))
    elif shape == "diamond":
        unit = [(0, -r), (0.62 * r, 0), (0, r), (-0.62 * r, 0)]
    elif shape == "hexagon":
        unit = [(r * math.cos(k * math.pi / 3), r * math.sin(k * math.pi / 3)) for k in range(6)]
    elif shape == "cross":
        w, h = 0.32 * r, 0.95 * r
        arm, unit = [(-w, -h), (w, -h), (w, -w)], []  # the top arm; the other three are quarter turns
        for _ in range(4):
            unit += arm
            arm = [(-y, x) for x, y in arm]
    else:
        raise ConfigError(f"unknown shape {shape!r}")
    cos_a, sin_a = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # Image y grows downwards, so a counter-clockwise tilt on screen uses -sin for the y term.
    return [(cx + x * cos_a + y * sin_a, cy - x * sin_a + y * cos_a) for x, y in unit]
