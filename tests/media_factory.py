"""Small real media files for tests, written on the spot (never downloaded).

Images with Pillow, audio with soundfile, video with PyAV's bundled FFmpeg encoders. Videos are
built so that what a decoder returns can be checked by value: each second has its own solid colour
and its own tone loudness.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image as PILImage

# One colour and one tone amplitude per second of test video.
SECOND_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
SECOND_AMPLITUDES = [0.2, 0.5, 0.8, 0.3]


def gradient_rgb(height: int, width: int) -> np.ndarray:
    """A smooth uint8 [H, W, 3] image (compresses well, so lossy codecs stay close)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack(
        [xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), np.full_like(xs, 128)], axis=-1
    ).astype(np.uint8)


def write_image(path: Path, array: np.ndarray, fmt: str, **save_args) -> Path:
    PILImage.fromarray(array).save(path, format=fmt, **save_args)
    return path


def sine(seconds: float, sample_rate: int, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """float32 [samples] sine."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def pcm16_grid(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to the values a 16-bit file holds exactly."""
    return (np.round(array * 32768).clip(-32768, 32767) / 32768).astype(np.float32)


def write_audio(path: Path, waveform_CS: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> Path:
    soundfile.write(path, np.asarray(waveform_CS).T, sample_rate, format=fmt, subtype=subtype)
    return path


def pick_codec(*names: str) -> str:
    """The first of ``names`` this PyAV build can encode with; skips the test when none can."""
    for name in names:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except Exception:
                continue
            return name
    pytest.skip(f"none of the encoders {names} is available in this PyAV build")


def write_video(
    path: Path,
    *,
    container: str,
    video_codec: str | None,
    audio_codec: str | None = None,
    seconds: int = 3,
    fps: int = 10,
    size: int = 32,
    sample_rate: int = 48_000,
) -> Path:
    """A ``seconds``-long video whose second k is SECOND_COLOURS[k] with a 440 Hz tone at
    SECOND_AMPLITUDES[k]. ``video_codec=None`` writes audio only."""
    with av.open(str(path), mode="w", format=container) as out:
        vstream = astream = None
        if video_codec:
            vstream = out.add_stream(video_codec, rate=fps)
            vstream.width = vstream.height = size
            vstream.pix_fmt = "yuv420p"
        if audio_codec:
            astream = out.add_stream(audio_codec, rate=sample_rate)
            astream.layout = "mono"
        for i in range(seconds * fps if vstream else 0):
            rgb = np.zeros((size, size, 3), np.uint8)
            rgb[:] = SECOND_COLOURS[i // fps]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(vstream.encode(frame))
        if vstream:
            out.mux(vstream.encode(None))
        if astream:
            wave = np.concatenate([sine(1.0, sample_rate, amplitude=a) for a in SECOND_AMPLITUDES[:seconds]])
            step = astream.codec_context.frame_size or 1024
            for start in range(0, len(wave), step):
                frame = av.AudioFrame.from_ndarray(wave[None, start : start + step], format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    return path
