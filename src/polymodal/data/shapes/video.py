"""Short videos with sound: objects move, others appear, and one appearance makes a sound.

A :class:`VideoScene` is the ground truth: one or two *movers* glide and bounce off the edges from
the first frame; one or two *arrivals* pop into view at given frame times and then stay put; the
arrival named by ``sound_index`` plays its own sound event (its shape's timbre, its colour's note)
starting exactly at its appearance. When two objects appear they do so at least 0.8 s apart, so
"which object appeared when the sound played?" is answered by lining up the audio with the frames
on one clock. All objects have different colours and arrivals never overlap each other; arrivals
are drawn over movers, so an arrival is always visible from its first frame.

:func:`render_video` gives a :class:`~polymodal.content.Video` (frames every 1/fps s from 0, 16 kHz
mono track); :func:`encode_mp4` writes it as a playable MP4 (MPEG-4 Part 2 video + AAC audio, via
PyAV's bundled FFmpeg), bit-identical for identical input.

This module knows nothing about captions, questions or documents.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from polymodal.content import Audio, Video, VideoFrame
from polymodal.content import Image as ImagePart
from polymodal.data.shapes.render import SUPERSAMPLE, background_canvas, check_size, draw_objects
from polymodal.data.shapes.sounds import SAMPLE_RATE, SoundEvent, event_samples, random_event
from polymodal.data.shapes.world import (
    COLOURS,
    RADIUS,
    SIZES,
    Background,
    ShapeObject,
    free_positions,
    random_background,
    random_kinds,
    random_object,
)
from polymodal.errors import ConfigError

DURATIONS: tuple[float, ...] = (2.0, 2.5, 3.0, 3.5, 4.0)
_MIN_GAP = 0.8  # seconds between two appearances
_EARLIEST = 0.3  # no appearance in the first frames: the viewer first sees the movers


@dataclass(frozen=True)
class Mover:
    """An object at ``obj``'s position at t = 0, moving at (vx, vy) image sides per second and
    bouncing off the edges."""

    obj: ShapeObject
    vx: float
    vy: float

    def at(self, t: float) -> ShapeObject:
        return self.obj.moved(
            _bounce(self.obj.x, self.vx, t, self.obj.radius), _bounce(self.obj.y, self.vy, t, self.obj.radius)
        )


def _bounce(start: float, velocity: float, t: float, r: float) -> float:
    span = 1.0 - 2.0 * r
    u = (start - r + velocity * t) % (2.0 * span)
    return r + (2.0 * span - u if u > span else u)


@dataclass(frozen=True)
class Arrival:
    """An object that is visible from ``time`` (a frame time) on, standing still."""

    obj: ShapeObject
    time: float


@dataclass(frozen=True)
class VideoScene:
    """The ground truth of one video."""

    background: Background
    movers: tuple[Mover, ...]
    arrivals: tuple[Arrival, ...]
    sound: SoundEvent
    sound_index: int  # which arrival makes the sound
    duration: float
    fps: int

    @property
    def sound_object(self) -> ShapeObject:
        return self.arrivals[self.sound_index].obj

    @property
    def sound_time(self) -> float:
        return self.arrivals[self.sound_index].time

    @property
    def frame_times(self) -> list[float]:
        return [k / self.fps for k in range(round(self.duration * self.fps))]

    def objects_at(self, t: float) -> list[ShapeObject]:
        """What frame time ``t`` shows, in drawing order (movers under arrivals)."""
        shown = [m.at(t) for m in self.movers]
        # A frame time equal to the arrival time shows the arrival (half a frame of tolerance).
        return shown + [a.obj for a in self.arrivals if a.time <= t + 0.5 / self.fps]

    def all_objects(self) -> list[ShapeObject]:
        return [m.obj for m in self.movers] + [a.obj for a in self.arrivals]

    def to_dict(self) -> dict:
        """JSON-ready, with the answer spelt out: ``sound_time`` and ``sound_object`` (its name)."""
        out = asdict(self)
        out["sound"] = self.sound.to_dict()
        out["sound_time"] = self.sound_time
        out["sound_object"] = self.sound_object.name
        return out


def random_video_scene(rng: np.random.Generator, *, fps: int = 10) -> VideoScene:
    """A random video: 2-4 s, 1-2 movers, 1-2 arrivals (one of them sounding)."""
    duration = DURATIONS[int(rng.integers(len(DURATIONS)))]
    n_movers, n_arrivals = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    pairs = random_kinds(rng, n_movers + n_arrivals, colours=list(COLOURS))
    sizes = [SIZES[int(rng.integers(2))] for _ in pairs]
    arrival_radii = [RADIUS[s] for s in sizes[n_movers:]]
    spots = None
    while spots is None:
        spots = free_positions(rng, arrival_radii)
    movers = []
    for (shape, colour), size in zip(pairs[:n_movers], sizes[:n_movers], strict=True):
        r = RADIUS[size]
        x, y = rng.uniform(r, 1 - r, size=2)
        speed, heading = rng.uniform(0.12, 0.35), rng.uniform(0, 2 * math.pi)
        obj = random_object(rng, shape, colour, round(float(x), 4), round(float(y), 4), size)
        movers.append(Mover(obj, round(speed * math.cos(heading), 4), round(speed * math.sin(heading), 4)))
    sound_index = int(rng.integers(n_arrivals))
    shape, colour = pairs[n_movers + sound_index]
    event = random_event(rng, shape=shape, colour=colour, size=sizes[n_movers + sound_index], seconds=(0.3, 0.6))
    times = _arrival_times(rng, n_arrivals, sound_index, duration, event.duration, fps)
    kept = list(range(n_arrivals))
    if len(times) < n_arrivals:  # no room for a second, distant appearance: keep the sounding one
        kept, sound_index = [sound_index], 0
    arrivals = tuple(
        Arrival(random_object(rng, *pairs[n_movers + i], *spots[i], sizes[n_movers + i]), t)
        for i, t in zip(kept, times, strict=True)
    )
    objects = [m.obj for m in movers] + [a.obj for a in arrivals]
    background = random_background(rng, [o.rgb for o in objects])
    return VideoScene(background, tuple(movers), arrivals, event, sound_index, duration, fps)


def _arrival_times(
    rng: np.random.Generator, n: int, sound_index: int, duration: float, sound_seconds: float, fps: int
) -> list[float]:
    """Frame times for ``n`` appearances; the sounding one leaves room for its sound to finish.
    May return fewer than ``n`` when a short video has no room for a second, distant appearance."""
    first = math.ceil(_EARLIEST * fps)
    sound_frames = np.arange(first, math.floor((duration - sound_seconds - 0.05) * fps) + 1)
    sound_frame = int(rng.choice(sound_frames))
    frames = [sound_frame]
    if n == 2:
        quiet = [k for k in range(first, round((duration - 0.2) * fps)) if abs(k - sound_frame) >= _MIN_GAP * fps]
        if quiet:
            frames.append(int(rng.choice(quiet)))
    if sound_index == 1 and len(frames) == 2:
        frames.reverse()
    return [k / fps for k in frames]


def render_video(scene: VideoScene, *, size: int = 64) -> Video:
    """Frames at k / fps (k = 0 ... duration * fps - 1) and the 16 kHz mono sound track."""
    size = check_size(size)
    backdrop = background_canvas(scene.background, size)
    frames = []
    for t in scene.frame_times:
        canvas = backdrop.copy()
        draw_objects(canvas, scene.objects_at(t))
        frames.append(VideoFrame(t, ImagePart(canvas.reduce(SUPERSAMPLE), source="shapes:video")))
    track = np.zeros(round(scene.duration * SAMPLE_RATE), np.float32)
    sound = event_samples(scene.sound)
    start = round(scene.sound_time * SAMPLE_RATE)
    track[start : start + len(sound)] = sound[: len(track) - start]
    audio = Audio(track[None, :], SAMPLE_RATE, source="shapes:video")
    return Video(tuple(frames), audio, scene.duration, source="shapes:video")


def encode_mp4(video: Video, *, fps: int) -> bytes:
    """A playable MP4 of a rendered video (frames on the 1/fps grid): see ``Video.to_mp4_bytes``."""
    if any(abs(f.time * fps - round(f.time * fps)) > 1e-6 for f in video.frames):
        raise ConfigError(f"encode_mp4 needs frames on the 1/{fps} s grid")
    return video.to_mp4_bytes(fps=fps)
