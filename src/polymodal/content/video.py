"""Video: the :class:`Video` and :class:`VideoFrame` parts, and reading MP4 and WebM safely.

A video is frames sampled at a chosen rate (times in seconds from the start) plus its audio track
on the same clock. Duration, planned frame count and frame size are checked from headers before any
frame is decoded; decoding is then one demuxing pass over the video and audio streams, and a file
whose data ends well before its header says is reported as truncated.

This module knows nothing about documents or tokens. Frames are :class:`Image` s and the track an
:class:`Audio`; how those check and store their data is their modules' business.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import BinaryIO

import av
import numpy as np

from polymodal.content.audio import Audio
from polymodal.content.image import Image, _check_pixels
from polymodal.content.limits import (
    _HEAD_BYTES,
    MediaLimits,
    PathLike,
    _checked_bytes,
    _checked_path,
    _decoder_errors,
    _limits,
    _read_head,
    _reject_other_formats,
    _short_name,
    _unreadable,
)
from polymodal.errors import ConfigError, CorruptMediaError, EmptyMediaError, MediaTooLargeError


@dataclass(frozen=True)
class VideoFrame:
    """One sampled video frame, ``time`` seconds from the start of the video."""

    time: float
    image: Image

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image):
            raise TypeError(f"VideoFrame.image must be an Image, got {type(self.image).__name__}")
        if not (math.isfinite(self.time) and self.time >= 0):
            raise ValueError(f"VideoFrame.time must be a finite time >= 0, got {self.time!r}")
        object.__setattr__(self, "time", float(self.time))


@dataclass(frozen=True)
class Video:
    """Frames sampled from a video (in time order) plus its audio track on the same clock."""

    frames: tuple[VideoFrame, ...]
    audio: Audio | None
    duration: float
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        frames = tuple(self.frames)
        if not frames:
            raise EmptyMediaError("video has no frames", source=self.source)
        if not all(isinstance(f, VideoFrame) for f in frames):
            raise TypeError("Video.frames must all be VideoFrame")
        if any(b.time < a.time for a, b in zip(frames, frames[1:], strict=False)):
            raise ValueError("Video.frames must be in time order")
        if self.audio is not None and not isinstance(self.audio, Audio):
            raise TypeError(f"Video.audio must be Audio or None, got {type(self.audio).__name__}")
        if not (math.isfinite(self.duration) and self.duration >= frames[-1].time):
            raise ValueError(
                f"Video.duration must be finite and >= the last frame time {frames[-1].time}, got {self.duration!r}"
            )
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "duration", float(self.duration))

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        fps: float = 1.0,
        max_frames: int | None = None,
        limits: MediaLimits | None = None,
    ) -> Video:
        """Read an MP4 or WebM file, sampling ``fps`` frames per second.

        The number of frames this will produce is computed from the container's duration and
        checked against ``max_frames`` and ``limits.max_video_frames`` before any frame is
        decoded. A frame is never taken twice, so ``fps`` above the video's own rate yields
        each frame once.
        """
        limits = _limits(limits)
        path = _checked_path(path, limits)
        head = _read_head(path)
        return _decode_video(str(path), head, str(path), str(path), fps, max_frames, limits)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        name: str | None = None,
        fps: float = 1.0,
        max_frames: int | None = None,
        limits: MediaLimits | None = None,
    ) -> Video:
        """Decode encoded MP4 or WebM bytes; see :meth:`open`."""
        limits = _limits(limits)
        data, source = _checked_bytes(data, name, limits)
        head = data[:_HEAD_BYTES]
        return _decode_video(io.BytesIO(data), head, source, name, fps, max_frames, limits)

    def to_mp4_bytes(self, *, fps: int | None = None) -> bytes:
        """A playable MP4: MPEG-4 Part 2 video and, with a track, AAC mono audio.

        Frame k is shown from ``round(time_k · fps)``; ``fps`` defaults to the frames' own rate
        (one over the median gap). Output is bit-identical for identical input.
        """
        if not self.frames:
            raise EmptyMediaError("a video with no frames cannot be written", source=self.source)
        times = [f.time for f in self.frames]
        if len(set(times)) != len(times):
            raise ConfigError(
                "two frames have the same time: an MP4 cannot show both",
            )
        if fps is None:
            # the smallest whole rate that gives every frame its own slot (frames from polymodal's
            # samplers or decoder sit on a regular grid, so this is their own rate)
            gaps = np.diff(times)
            fps = max(1, round(1.0 / float(np.median(gaps)))) if len(gaps) else 1
            while len({round(t * fps) for t in times}) != len(times) and fps < 1000:
                fps += 1
        slots = [round(t * fps) for t in times]
        if len(set(slots)) != len(slots):
            raise ConfigError(f"frames are closer together than 1/{fps} s: pass a higher fps")
        buffer = io.BytesIO()
        first = self.frames[0].image
        with av.open(buffer, mode="w", format="mp4") as container:
            # Every stream must exist before the first packet is muxed (that writes the header).
            vstream = container.add_stream("mpeg4", rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = first.width, first.height, "yuv420p"
            vstream.bit_rate = 400_000
            vstream.codec_context.thread_count = 1  # threaded encoding may reorder work: keep output stable
            astream = None
            if self.audio is not None:
                astream = container.add_stream("aac", rate=self.audio.sample_rate)
                astream.layout = "mono"
                astream.bit_rate = 64_000
            for frame, slot in zip(self.frames, slots, strict=True):
                picture = av.VideoFrame.from_ndarray(frame.image.to_array(), format="rgb24")
                picture.pts = slot
                container.mux(vstream.encode(picture))
            container.mux(vstream.encode())
            if astream is not None:
                _mux_audio(container, astream, self.audio)
        return buffer.getvalue()

    def __repr__(self) -> str:
        size = f"{self.frames[0].image.width}x{self.frames[0].image.height}"
        audio = f"{self.audio.duration:.2f} s audio" if self.audio else "no audio"
        return f"Video({self.num_frames} frames {size}, {self.duration:.2f} s, {audio}, source={self.source!r})"


# FFmpeg demuxer per sniffed format. Naming it (rather than letting FFmpeg probe) means a file
# that is really, say, an HLS playlist can never make FFmpeg open other files or URLs.
_DEMUXERS = {"mp4": "mp4", "webm": "matroska"}
# Frame times are rounded by containers (WebM keeps milliseconds); a frame this close before a
# sample time still counts as "at" it.
_TIME_EPS = 1e-3


def _check_sampling_args(fps: float, max_frames: int | None) -> None:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames <= 0):
        raise ConfigError(f"max_frames must be a positive int or None, got {max_frames!r}")


def _frame_limit(max_frames: int | None, limits: MediaLimits) -> tuple[int, str]:
    if max_frames is not None and max_frames <= limits.max_video_frames:
        return max_frames, "max_frames"
    return limits.max_video_frames, "MediaLimits.max_video_frames"


def _too_many_frames(
    duration: float | None, fps: float, count: int, limit: int, limit_name: str, source: str
) -> MediaTooLargeError:
    length = f"video is {duration:.2f} s long; " if duration is not None else ""
    suggestion = f" (e.g. fps={limit / duration:.3g})" if duration else ""
    return MediaTooLargeError(
        f"{length}sampling at {fps:g} fps gives {count} frames, over the limit of {limit} "
        f"({limit_name}); lower fps{suggestion} or raise {limit_name}",
        source=source,
    )


def _planned_frames(duration: float, fps: float, stream: av.VideoStream) -> int:
    """How many frames sampling at ``fps`` will take, from headers alone (an upper bound
    for well-formed files; decoding re-checks as it goes)."""
    last_start = duration
    if stream.average_rate:
        # The last frame starts one frame period before the end; sample times after it get none.
        last_start = max(0.0, duration - 1.0 / float(stream.average_rate))
    count = math.floor(last_start * fps + _TIME_EPS) + 1
    if stream.frames:
        count = min(count, stream.frames)  # never more frames than the stream has
    return count


def _decode_video(
    file: str | BinaryIO,
    head: bytes,
    label: str,
    source: str | None,
    fps: float,
    max_frames: int | None,
    limits: MediaLimits,
) -> Video:
    """Open, check the plan (seconds, frames, pixels) from headers, then decode in one pass.

    ``label`` names the input in errors; ``source`` is what the Video and its parts remember.
    """
    _check_sampling_args(fps, max_frames)
    fmt = _reject_other_formats(head, "video", label)
    if fmt is None:
        raise _unreadable(head, "video", label, ValueError("unrecognised content"))
    try:
        container = av.open(file, mode="r", format=_DEMUXERS[fmt])
    except Exception as exc:
        raise _unreadable(head, "video", label, exc) from exc
    with container:
        if not container.streams.video:
            raise EmptyMediaError("has no video stream", source=label)
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        duration = container.duration / av.time_base if container.duration else None
        limit, limit_name = _frame_limit(max_frames, limits)
        if duration is not None:
            if duration > limits.max_video_seconds:
                raise MediaTooLargeError(
                    f"video is {duration:.1f} s long, over the limit of "
                    f"{limits.max_video_seconds} s (MediaLimits.max_video_seconds)",
                    source=label,
                )
            planned = _planned_frames(duration, fps, vstream)
            if planned > limit:
                raise _too_many_frames(duration, fps, planned, limit, limit_name, label)
        width, height = vstream.codec_context.width, vstream.codec_context.height
        _check_pixels(width, height, limits.max_image_pixels, label)
        with _decoder_errors(label, _short_name(fmt)):
            frames, audio, last_time = _sample_streams(
                container, vstream, astream, fps, (limit, limit_name), limits, label, source
            )
        declared = _declared_seconds(vstream, astream, duration)
        # PyAV 18 refuses to read a stream's attributes once its container is closed
        period = 1.0 / float(vstream.average_rate) if vstream.average_rate else 0.0
    if not frames:
        raise EmptyMediaError("no video frame could be decoded", source=label)
    ended = max(last_time + period, audio.duration if audio else 0.0)
    # Matroska and fragmented MP4 decode up to wherever a cut file stops, without an error.
    if declared is not None and declared - ended > max(0.5, 0.05 * declared):
        raise CorruptMediaError(
            f"truncated {_short_name(fmt)}: the header says {declared:.2f} s but the data ends at {ended:.2f} s",
            source=label,
        )
    return Video(tuple(frames), audio, max(duration or ended, frames[-1].time), source=source)


def _declared_seconds(
    vstream: av.VideoStream, astream: av.AudioStream | None, container_seconds: float | None
) -> float | None:
    """How long the decoded streams say they are (the container's figure may count other streams)."""
    seconds = [float(s.duration * s.time_base) for s in (vstream, astream) if s is not None and s.duration]
    return max(seconds) if seconds else container_seconds


def _sample_streams(
    container: av.container.InputContainer,
    vstream: av.VideoStream,
    astream: av.AudioStream | None,
    fps: float,
    frame_limit: tuple[int, str],
    limits: MediaLimits,
    label: str,
    source: str | None,
) -> tuple[list[VideoFrame], Audio | None, float]:
    """One demuxing pass: keep the frames at/after each sample time, and all audio.

    Returns the frames, the audio (sample 0 at video time 0) and the last decoded frame's time.
    """
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    vstream.thread_type = "AUTO"
    frames: list[VideoFrame] = []
    next_sample = 0  # index k of the next sample time k / fps
    decoded = 0
    last_time = 0.0
    chunks_CS: list[np.ndarray] = []
    audio_start: float | None = None
    resampler = av.AudioResampler(format="fltp")  # sample format only: keep rate and channels
    for packet in container.demux(*[s for s in (vstream, astream) if s is not None]):
        for frame in packet.decode():
            # Timestamps can be absent on odd streams; fall back on the nominal frame rate.
            t = float(frame.time) - origin if frame.time is not None else None
            if t is not None and t > limits.max_video_seconds:
                raise MediaTooLargeError(
                    f"video runs past {limits.max_video_seconds} s (MediaLimits.max_video_seconds)",
                    source=label,
                )
            if isinstance(frame, av.AudioFrame):
                audio_start = (t or 0.0) if audio_start is None else audio_start
                chunks_CS.extend(f.to_ndarray() for f in resampler.resample(frame))
                continue
            if t is None:
                t = decoded / float(vstream.average_rate or 1)
            decoded += 1
            last_time = max(last_time, t)
            if t < next_sample / fps - _TIME_EPS:
                continue
            if len(frames) >= frame_limit[0]:
                raise _too_many_frames(None, fps, len(frames) + 1, *frame_limit, label)
            _check_pixels(frame.width, frame.height, limits.max_image_pixels, label)
            t = max(t, 0.0)
            image = Image(frame.to_image(), source=f"{source}#t={t:.3f}" if source else None)
            frames.append(VideoFrame(t, image))
            next_sample = math.floor(t * fps + _TIME_EPS) + 1
    if astream is not None:
        chunks_CS.extend(f.to_ndarray() for f in resampler.resample(None))
    audio = _join_audio(chunks_CS, astream, audio_start or 0.0, source)
    return frames, audio, last_time


def _join_audio(
    chunks_CS: list[np.ndarray],
    astream: av.AudioStream | None,
    start: float,
    source: str | None,
) -> Audio | None:
    if astream is None or not chunks_CS:
        return None
    rate = astream.codec_context.sample_rate
    wave_CS = np.concatenate(chunks_CS, axis=1).astype(np.float32, copy=False)
    # Put sample 0 at video time 0: pad a late start with silence, drop encoder pre-roll.
    offset = round(start * rate)
    if offset > 0:
        wave_CS = np.concatenate([np.zeros((wave_CS.shape[0], offset), np.float32), wave_CS], 1)
    elif offset < 0:
        wave_CS = wave_CS[:, -offset:]
    if wave_CS.shape[1] == 0:
        return None
    return Audio(np.clip(wave_CS, -1.0, 1.0), rate, source=f"{source}#audio" if source else None)


def _mux_audio(container: av.container.OutputContainer, astream: av.AudioStream, audio: Audio) -> None:
    wave = np.ascontiguousarray(audio.to_mono().waveform, dtype=np.float32)
    step = 1024  # AAC's frame length
    for start in range(0, wave.shape[1], step):
        chunk = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(wave[:, start : start + step]), format="fltp", layout="mono"
        )
        chunk.sample_rate, chunk.pts = audio.sample_rate, start
        container.mux(astream.encode(chunk))
    container.mux(astream.encode())
