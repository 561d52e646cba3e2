"""Sound events: each shape has its own timbre, its colour sets the note and its size the octave.

=========  ================================================================
circle     sine chirp gliding up a fifth
square     band-limited square wave (odd harmonics, 1/n): a hollow beep
triangle   band-limited triangle wave (odd harmonics, 1/n^2): soft flute
star       noise burst band-passed around 8x the note: a hiss
diamond    inharmonic bell partials (1, 2.76, 5.40, 8.93) with decay
hexagon    band-limited sawtooth (all harmonics, 1/n) with vibrato: buzz
cross      train of short knocks, 12 per second: a rattle
=========  ================================================================

Notes follow the colours up the C major scale (red C4 ... pink B4); large objects sound an octave
lower, so every (colour, size) has its own pitch. Harmonic waves are summed from sines below 0.45x
the sample rate, so nothing aliases. Every event fades in over 10 ms and out over 30 ms (no
clicks), lasts 0.2-1 s, and is rounded to 16-bit sample values so that FLAC/WAV storage gives back
exactly the same waveform.

This module knows nothing about pictures, words or documents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from polymodal.content import Audio
from polymodal.data.shapes.seeds import child_seed
from polymodal.data.shapes.world import COLOURS, SHAPES, SIZES
from polymodal.errors import ConfigError

SAMPLE_RATE = 16_000
MIN_SECONDS, MAX_SECONDS = 0.2, 1.0

#: The note each colour plays (Hz) for a small object; large objects play an octave lower. All within
#: one octave, so no large object sounds like a small one.
NOTES: dict[str, float] = {
    "red": 261.63,  # C4
    "orange": 293.66,  # D4
    "yellow": 329.63,  # E4
    "green": 349.23,  # F4
    "blue": 392.00,  # G4
    "purple": 440.00,  # A4
    "pink": 493.88,  # B4
}
_FADE_IN, _FADE_OUT = 0.010, 0.030


@dataclass(frozen=True)
class SoundEvent:
    """The ground truth of one sound: which object makes it, its note, length and loudness.

    ``seed`` drives the only randomness inside a timbre (the star's noise).
    """

    shape: str
    colour: str
    size: str
    duration: float
    gain: float
    seed: int = 0

    @property
    def frequency(self) -> float:
        return NOTES[self.colour] * (0.5 if self.size == "large" else 1.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "frequency": self.frequency}

    @classmethod
    def from_dict(cls, obj: dict) -> SoundEvent:
        return cls(**{k: v for k, v in obj.items() if k != "frequency"})


def random_event(
    rng: np.random.Generator,
    *,
    shape: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    seconds: tuple[float, float] = (0.25, 0.9),
) -> SoundEvent:
    """A random event; fix any of shape, colour and size to make a given object's sound."""
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colour or list(COLOURS)[int(rng.integers(len(COLOURS)))]
    size = size or SIZES[int(rng.integers(len(SIZES)))]
    duration = round(float(rng.uniform(*seconds)), 3)
    gain = round(float(rng.uniform(0.35, 0.75)), 3)
    return SoundEvent(shape, colour, size, duration, gain, child_seed(rng))


def render_event(event: SoundEvent) -> Audio:
    """The event as 16 kHz mono :class:`~polymodal.content.Audio`."""
    return Audio(event_samples(event)[None, :], SAMPLE_RATE, source=f"shapes:sound:{event.shape}")


def event_samples(event: SoundEvent) -> np.ndarray:
    """The event's float32 samples, peak = ``gain``, on the 16-bit grid."""
    if event.shape not in _SYNTHS:
        raise ConfigError(f"unknown shape {event.shape!r}; expected one of {SHAPES}")
    if not MIN_SECONDS <= event.duration <= MAX_SECONDS:
        raise ConfigError(f"sound duration must be in [{MIN_SECONDS}, {MAX_SECONDS}] s, got {event.duration}")
    t = np.arange(round(event.duration * SAMPLE_RATE), dtype=np.float64) / SAMPLE_RATE
    wave = _SYNTHS[event.shape](t, event.frequency, np.random.default_rng(event.seed))
    wave = wave * _fades(len(t))
    wave *= event.gain / max(float(np.abs(wave).max()), 1e-9)
    return pcm16(wave)


def pcm16(wave: np.ndarray) -> np.ndarray:
    """``wave`` rounded to 16-bit sample values (as float32 in [-1, 1)): storing it as 16-bit
    FLAC/WAV and reading it back returns exactly these numbers."""
    return (np.clip(np.rint(np.asarray(wave, np.float64) * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def _fades(n: int) -> np.ndarray:
    """Raised-cosine fade in and out, so the event starts and ends at zero."""
    env = np.ones(n)
    k_in, k_out = min(n // 2, round(_FADE_IN * SAMPLE_RATE)), min(n // 2, round(_FADE_OUT * SAMPLE_RATE))
    env[:k_in] = 0.5 - 0.5 * np.cos(np.pi * np.arange(k_in) / k_in)
    env[n - k_out :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(k_out) + 1) / k_out)
    return env


def _harmonics(phase: np.ndarray, f_top: float, amplitude_of) -> np.ndarray:
    """Sum of sin(k * phase) * amplitude_of(k) for every harmonic k whose frequency stays below
    0.45x the sample rate (``f_top`` is the highest fundamental reached)."""
    wave = np.zeros_like(phase)
    for k in range(1, int(0.45 * SAMPLE_RATE / f_top) + 1):
        a = amplitude_of(k)
        if a:
            wave += a * np.sin(k * phase)
    return wave


def _decay(t: np.ndarray, seconds: float) -> np.ndarray:
    return np.exp(-t / seconds)


def _circle(t: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    # Exponential glide from f to 1.5 f over the event: the phase is the integral of frequency.
    glide = np.log(1.5) / max(t[-1], 1e-3)
    phase = 2 * np.pi * f * np.expm1(glide * t) / glide
    return np.sin(phase) * (0.6 + 0.4 * _decay(t, 0.4))


def _square(t: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    return _harmonics(2 * np.pi * f * t, f, lambda k: 1.0 / k if k % 2 else 0.0)


def _triangle(t: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    wave = _harmonics(2 * np.pi * f * t, f, lambda k: (-1) ** ((k - 1) // 2) / k**2 if k % 2 else 0.0)
    return wave * (0.5 + 0.5 * _decay(t, 0.3))


def _star(t: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(t))
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(len(t), 1.0 / SAMPLE_RATE)
    centre = 8.0 * f
    # Gaussian band on a log-frequency axis, about two thirds of an octave wide.
    band = np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / centre) / 0.3) ** 2)
    return np.fft.irfft(spectrum * band, n=len(t)) * _decay(t, 0.25)


def _diamond(t: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    partials = ((1.0, 1.0, 0.6), (2.76, 0.6, 0.35), (5.40, 0.35, 0.2), (8.93, 0.2, 0.12))
    wave = np.zeros_like(t)
    for ratio, amp, tau in partials:
        if ratio * f < 0.45 * SAMPLE_RATE:
            wave += amp * np.sin(2 * np.pi * ratio * f * t) * _decay(t, tau)
    return wave


def _hexagon(t: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    vibrato = 0.02 * f / 6.0  # +-2 % at 6 Hz; phase of f + d sin(2 pi 6 t) integrated
    phase = 2 * np.pi * f * t - 2 * np.pi * vibrato * np.cos(2 * np.pi * 6.0 * t)
    return _harmonics(phase, f * 1.02, lambda k: 1.0 / k)


def _cross(t: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    since_knock = np.mod(t, 1.0 / 12.0)
    return np.sin(2 * np.pi * 2.0 * f * t) * _decay(since_knock, 0.012)


_SYNTHS = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "diamond": _diamond,
    "hexagon": _hexagon,
    "cross": _cross,
}
