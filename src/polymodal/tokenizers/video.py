"""The video tokenizer: sampled frames through the image tokenizer, the track through the audio one.

A video has no id range of its own. Its tokens are image codes (one grid per sampled frame) and
audio codes (the whole track, encoded once), interleaved in time order: before the frame sampled
at ``s`` seconds come exactly the audio codes whose time is before ``s``. In the sequence::

    <|video|> [audio codes < s0] <|frame|> <|grid:HxW|> codes×HW [audio codes in [s0, s1)] <|frame|> … <|/video|>

Positions put frames and sound on one clock (:func:`polymodal.positions.video_positions`). The ids
alone fix the frame times when there is a track (the number of audio codes before each frame);
without one, frames are taken to be ``1 / fps`` apart.

This module knows nothing of the vocabulary: it returns segments of local ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from polymodal.content import Audio, Video, VideoFrame
from polymodal.errors import TokenizerNotAvailableError
from polymodal.tokenizers.base import ModalityTokenizer, Timed, TokenSpan

DEFAULT_FPS = 1.0


@dataclass(frozen=True)
class FrameSegment:
    """One sampled frame: its time in seconds (None when only the ids are known) and its image codes."""

    time: float | None
    span: TokenSpan


@dataclass(frozen=True)
class AudioSegment:
    """Consecutive codes of the track; code ``first + i`` sits at ``(first + i) / rate`` seconds."""

    first: int
    span: TokenSpan

    def times(self) -> tuple[float, ...]:
        rate = self.span.layout.tokens_per_second
        return tuple((self.first + i) / rate for i in range(len(self.span)))


Segment = FrameSegment | AudioSegment


class VideoTokenizer:
    """Frames and track of a :class:`~polymodal.content.Video` ⇄ time-ordered segments."""

    modality = "video"

    def __init__(self, image: ModalityTokenizer, audio: ModalityTokenizer | None = None) -> None:
        self.image = image
        self.audio = audio

    def encode(self, video: Video) -> list[Segment]:
        if not isinstance(video, Video):
            raise TypeError(f"the video tokenizer encodes Video parts, got {type(video).__name__}")
        track: TokenSpan | None = None
        if video.audio is not None:
            if self.audio is None:
                raise TokenizerNotAvailableError(
                    "this video has an audio track but the vocabulary has no audio tokenizer; "
                    "drop the track (Video(frames, audio=None, duration=...)) to use the frames alone"
                )
            track = self.audio.encode(video.audio)
        segments: list[Segment] = []
        emitted = 0
        for frame in sorted(video.frames, key=lambda f: f.time):
            if track is not None:
                emitted = self._emit_audio(segments, track, emitted, until=frame.time)
            segments.append(FrameSegment(frame.time, self.image.encode(frame.image)))
        if track is not None:
            self._emit_audio(segments, track, emitted, until=float("inf"))
        return segments

    @staticmethod
    def _emit_audio(segments: list[Segment], track: TokenSpan, emitted: int, *, until: float) -> int:
        rate = track.layout.tokens_per_second
        # codes whose time i / rate is before `until` (a hair of tolerance for float times)
        stop = len(track) if until == float("inf") else min(len(track), int(-(-(until * rate - 1e-6) // 1)))
        if stop > emitted:
            segments.append(AudioSegment(emitted, TokenSpan("audio", track.ids[emitted:stop], track.layout)))
        return max(stop, emitted)

    def decode(self, segments: list[Segment], *, fps: float = DEFAULT_FPS) -> Video:
        audio_spans = [s.span for s in segments if isinstance(s, AudioSegment)]
        frames_spans = [s.span for s in segments if isinstance(s, FrameSegment)]
        if not frames_spans:
            raise ValueError("a video span needs at least one frame")
        track: Audio | None = None
        rate = 0.0
        if audio_spans:
            if self.audio is None:
                raise TokenizerNotAvailableError("this video span holds audio codes but there is no audio tokenizer")
            rate = self.audio.tokens_per_second
            codes = torch.cat([span.ids for span in audio_spans])
            track = self.audio.decode(TokenSpan("audio", codes, Timed(rate)))
        frames, seen_audio = [], 0
        for segment in segments:
            if isinstance(segment, AudioSegment):
                seen_audio += len(segment.span)
                continue
            # Exact times when positions were given; otherwise the audio codes before the frame
            # (frames never come before the sound of their second), or 1 / fps steps without sound.
            time = segment.time if segment.time is not None else seen_audio / rate if audio_spans else len(frames) / fps
            frames.append(VideoFrame(time, self.image.decode(segment.span)))
        gaps = [b.time - a.time for a, b in pairwise(frames) if b.time > a.time]
        last = frames[-1].time + (min(gaps) if gaps else 1.0 / fps)
        duration = max(last, track.duration if track is not None else 0.0)
        return Video(tuple(frames), track, duration)
