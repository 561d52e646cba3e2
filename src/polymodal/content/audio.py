"""Audio: the :class:`Audio` part, and reading WAV, FLAC, Ogg (Vorbis/Opus) and MP3 safely.

A waveform is float32 ``[channels, samples]`` in [-1, 1] at its native rate, held read-only. The
duration is checked from the header before samples are decoded, and a WAV whose data chunk is cut
short is reported as truncated rather than silently shortened.

This module knows nothing about images, video containers (the video reader decodes a video's audio
track itself and hands the samples to :class:`Audio`), documents or tokens.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile

from polymodal.content.limits import (
    _HEAD_BYTES,
    MediaLimits,
    PathLike,
    _checked_bytes,
    _checked_path,
    _decoder_errors,
    _formats_of,
    _limits,
    _read_head,
    _reject_other_formats,
    _short_name,
    _unreadable,
)
from polymodal.errors import CorruptMediaError, EmptyMediaError, MediaTooLargeError, UnsupportedMediaError


@dataclass(frozen=True, eq=False)
class Audio:
    """A waveform: float32 ``[channels, samples]`` in [-1, 1] at ``sample_rate`` Hz.

    A 1-D array is taken as mono. The stored array is a read-only view.
    """

    waveform: np.ndarray
    sample_rate: int
    source: str | None = None

    def __post_init__(self) -> None:
        wave = np.asarray(self.waveform)
        if not np.issubdtype(wave.dtype, np.floating):
            raise TypeError(
                f"Audio.waveform must hold floats in [-1, 1], got {wave.dtype}; "
                f"scale integer PCM first (e.g. int16 / 32768)"
            )
        wave = wave.astype(np.float32, copy=False)
        if wave.ndim == 1:
            wave = wave[None, :]
        if wave.ndim != 2:
            raise ValueError(f"Audio.waveform must be [channels, samples], got shape {wave.shape}")
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise CorruptMediaError(f"sample rate must be a positive int, got {rate!r}", source=self.source)
        if wave.shape[0] == 0 or wave.shape[1] == 0:
            raise EmptyMediaError(f"audio has no samples (shape {wave.shape})", source=self.source)
        if not np.isfinite(wave).all():
            raise CorruptMediaError("audio holds NaN or infinite samples", source=self.source)
        peak = float(np.abs(wave).max())
        if peak > 1.0:
            raise ValueError(
                f"Audio samples must lie in [-1, 1], got peak {peak:.4g}; normalise or np.clip the waveform first"
            )
        wave = wave.view()
        wave.flags.writeable = False  # the dataclass is frozen; so is its data
        object.__setattr__(self, "waveform", wave)
        object.__setattr__(self, "sample_rate", int(rate))

    @property
    def num_channels(self) -> int:
        return self.waveform.shape[0]

    @property
    def num_samples(self) -> int:
        return self.waveform.shape[1]

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.sample_rate

    def to_mono(self) -> Audio:
        """A one-channel copy: the mean of the channels."""
        return Audio(self.waveform.mean(axis=0, keepdims=True), self.sample_rate, self.source)

    def to_wav_bytes(self) -> bytes:
        """16-bit PCM WAV. Samples on the 1/32768 grid (anything read from a 16-bit file)
        round-trip exactly; other values are rounded to it."""
        pcm = np.clip(np.rint(self.waveform * 32768.0), -32768, 32767).astype(np.int16)
        buffer = io.BytesIO()
        soundfile.write(buffer, pcm.T, self.sample_rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue()

    @classmethod
    def open(cls, path: PathLike, *, limits: MediaLimits | None = None) -> Audio:
        """Read a WAV, FLAC, Ogg (Vorbis/Opus) or MP3 file (format recognised by content)."""
        limits = _limits(limits)
        path = _checked_path(path, limits)
        with path.open("rb") as f:
            return _decode_audio(f, _read_head(path), str(path), limits, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str | None = None, limits: MediaLimits | None = None) -> Audio:
        """Decode encoded WAV, FLAC, Ogg or MP3 bytes; ``name`` labels errors and becomes the source."""
        limits = _limits(limits)
        data, source = _checked_bytes(data, name, limits)
        return _decode_audio(io.BytesIO(data), data[:_HEAD_BYTES], source, limits, name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Audio):
            return NotImplemented
        return self.sample_rate == other.sample_rate and np.array_equal(self.waveform, other.waveform)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Audio({self.num_channels} ch, {self.duration:.3f} s @ {self.sample_rate} Hz, source={self.source!r})"


_SOUNDFILE_FORMATS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}
# libsndfile's open log reports a WAV whose data chunk runs past the end of the file like this;
# it then silently shortens the audio, which would hide a truncated download.
_WAV_TRUNCATED = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


def _decode_audio(file: BinaryIO, head: bytes, source: str, limits: MediaLimits, name: str | None) -> Audio:
    _reject_other_formats(head, "audio", source)
    try:
        sound = soundfile.SoundFile(file)
    except Exception as exc:
        raise _unreadable(head, "audio", source, exc) from exc
    with sound:
        if sound.format not in _SOUNDFILE_FORMATS:
            raise UnsupportedMediaError(
                f"{sound.format_info} audio is not supported (supported audio formats: {_formats_of('audio')})",
                source=source,
            )
        what = _short_name(_SOUNDFILE_FORMATS[sound.format])
        if sound.samplerate <= 0:
            raise CorruptMediaError(f"corrupt {what}: sample rate {sound.samplerate}", source=source)
        if sound.frames == 0:
            raise EmptyMediaError("audio has no samples (zero length)", source=source)
        seconds = sound.frames / sound.samplerate
        if seconds > limits.max_audio_seconds:
            raise MediaTooLargeError(
                f"audio is {seconds:.1f} s long, over the limit of {limits.max_audio_seconds} s "
                f"(MediaLimits.max_audio_seconds)",
                source=source,
            )
        match = _WAV_TRUNCATED.search(sound.extra_info)
        if match and int(match.group(2)) < int(match.group(1)) < 0xFFFFFFF0:
            raise CorruptMediaError(
                f"truncated WAV: header declares {match.group(1)} data bytes, the file holds {match.group(2)}",
                source=source,
            )
        with _decoder_errors(source, what):
            samples_SC = sound.read(dtype="float32", always_2d=True)
        if len(samples_SC) < sound.frames:
            raise CorruptMediaError(
                f"truncated {what}: header declares {sound.frames} samples, only {len(samples_SC)} decode",
                source=source,
            )
    # Float files may carry overs past full scale; PCM conversion clips the same way.
    waveform = np.clip(np.ascontiguousarray(samples_SC.T), -1.0, 1.0)
    return Audio(waveform, sound.samplerate, source=name)
