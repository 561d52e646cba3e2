"""What a server allows: limits on requests and media, batching and queueing, access.

Every limit is checked before the work it bounds: body size before the body is read, item counts
before any media is decoded, pixels / seconds / frames from the media's headers (through
:class:`~polymodal.content.MediaLimits`), and prompt and completion tokens before generation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from polymodal.content.limits import MediaLimits
from polymodal.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    model_name: str = "polymodal"  # the id /v1/models lists and requests name
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()  # empty: no authentication; else "Authorization: Bearer KEY"
    # request and media limits
    max_request_bytes: int = 32 * 2**20
    max_images: int = 8  # media items per modality per request
    max_audios: int = 4
    max_videos: int = 1
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 120.0
    max_video_seconds: float = 120.0
    video_fps: float = 1.0  # frames sampled per second of video (a request may ask for fewer)
    max_video_frames: int = 16
    max_completion_tokens: int = 1024  # the most a request may ask for; also the default
    max_prompt_tokens: int | None = None  # None: the model's context length
    max_n: int = 8  # choices / images per request
    max_speech_characters: int = 4096
    # remote media: nothing is fetched unless its domain is allowed
    allowed_domains: tuple[str, ...] = ()
    allow_private_addresses: bool = False  # loopback / private / link-local destinations (tests, LANs)
    file_root: str | None = None  # file:// URLs are read only under this folder
    fetch_timeout_s: float = 10.0
    # batching and queueing
    max_batch: int = 16  # rows decoded together
    batch_window_ms: float = 5.0  # how long a new batch waits for requests that can join it
    max_queue: int = 64  # requests waiting or running; more get 429
    retry_after_s: int = 1
    media_cache_items: int = 512  # encoded media spans kept, keyed by content hash and settings
    compile: bool = False  # torch.compile the decode step (worth it on a GPU)
    # Every image and audio clip the server generates carries an invisible mark of this key
    # (polymodal.watermark; polymodal watermark detect FILE --key KEY). Set your own key.
    watermark: bool = True
    watermark_key: str = "polymodal"
    # cascade routing (polymodal serve SMALL --large LARGE): see polymodal.serve.router
    cascade_threshold: float = -0.5  # the small run's mean token log-probability below which the large answers
    cascade_large_for: tuple[str, ...] = ()  # input modalities sent straight to the large run
    cascade_max_small_prompt_tokens: int | None = None  # longer prompts go straight to the large run
    cascade_high_detail_to_large: bool = True  # pictures asked with detail "high" go to the large run

    def __post_init__(self) -> None:
        positive = ("max_request_bytes", "max_image_pixels", "max_video_frames", "max_completion_tokens", "max_n",
                    "max_speech_characters", "max_batch", "max_queue", "port")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"serve config: {name} must be a positive integer, got {value!r}")
        for name in ("max_images", "max_audios", "max_videos", "media_cache_items", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"serve config: {name} must be an integer >= 0, got {value!r}")
        for name in ("max_audio_seconds", "max_video_seconds", "video_fps", "fetch_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve config: {name} must be > 0, got {getattr(self, name)!r}")
        if self.batch_window_ms < 0:
            raise ConfigError(f"serve config: batch_window_ms must be >= 0, got {self.batch_window_ms}")

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_bytes=self.max_request_bytes, max_image_pixels=self.max_image_pixels,
            max_audio_seconds=self.max_audio_seconds, max_video_seconds=self.max_video_seconds,
            max_video_frames=self.max_video_frames,
        )  # fmt: skip

    def max_items(self, modality: str) -> int:
        return {"image": self.max_images, "audio": self.max_audios, "video": self.max_videos}[modality]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"serve config: unknown keys {unknown} (known: {sorted(known)})")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)
