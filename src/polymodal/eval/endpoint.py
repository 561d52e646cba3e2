"""The endpoint runner: ask a suite's questions to any OpenAI-compatible chat endpoint.

:class:`EndpointResponder` is a :class:`~polymodal.eval.runner.Responder` that sends each prompt as
one ``/v1/chat/completions`` request through the official ``openai`` client, several at a time, at
temperature 0. Media go the way OpenAI's chat API takes them:

- pictures as base64 PNG data URLs in ``image_url`` parts, with the picture's own ``detail``;
- audio as ``input_audio`` parts (16-bit WAV, base64);
- video as a ``video_url`` part holding an MP4 data URL, with the rate its frames were sampled at in
  ``media_io_kwargs.video.fps`` (``video="url"``, what polymodal's server and vLLM read), or, for
  servers that take no video, as its sampled frames (``image_url`` parts) followed by its sound track
  (``input_audio``) (``video="frames"``).

Text-to-image items go to ``/v1/images/generations`` (``b64_json``) and text-to-speech items to
``/v1/audio/speech`` (WAV), each with its own ``seed``.

A plain (role-less) prompt is sent as one user message: an endpoint only speaks chat. A request the
endpoint refuses as bad (HTTP 400/422: a modality it does not take, a size over its limits) skips its
task, with the endpoint's message as the reason in the report; a connection, authentication or
server failure stops the evaluation with an :class:`EndpointError` that says which.
"""

from __future__ import annotations

import base64
import io
import statistics
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from polymodal.content import Audio, Document, Image, Text, Video
from polymodal.errors import ConfigError, PolymodalError
from polymodal.generation import DirectionNotSupportedError

VIDEO_MODES = ("url", "frames")


class EndpointError(PolymodalError):
    """The endpoint could not be reached, refused the key, or failed (after the client's retries)."""


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_content(image: Image) -> dict:
    out = io.BytesIO()
    image.pixels.save(out, format="PNG")
    return {"type": "image_url", "image_url": {"url": _data_url("image/png", out.getvalue()), "detail": image.detail}}


def audio_content(audio: Audio) -> dict:
    data = base64.b64encode(audio.to_wav_bytes()).decode("ascii")
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def frame_rate(video: Video) -> float:
    """The rate a video's frames were sampled at: one over the median gap between them (1 for one frame)."""
    times = [f.time for f in video.frames]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return 1.0 / statistics.median(gaps) if gaps else 1.0


def message_content(parts: Sequence, video: str = "url") -> list[dict]:
    """OpenAI chat content parts for polymodal parts (text, pictures, audio, video as ``video``)."""
    content: list[dict] = []
    for part in parts:
        if isinstance(part, Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            content.append(image_content(part))
        elif isinstance(part, Audio):
            content.append(audio_content(part))
        elif isinstance(part, Video) and video == "url":
            fps = frame_rate(part)
            mp4 = part.to_mp4_bytes(fps=max(1, round(fps)))
            content.append({"type": "video_url", "video_url": {"url": _data_url("video/mp4", mp4)}})
        elif isinstance(part, Video):
            content += [image_content(f.image) for f in part.frames]
            if part.audio is not None:
                content.append(audio_content(part.audio))
        else:
            raise TypeError(f"cannot send a {type(part).__name__} part to an endpoint")
    return content


def chat_request(document: Document, video: str = "url") -> tuple[list[dict], dict]:
    """The ``messages`` of one prompt and the ``extra_body`` it needs (the video sampling rate)."""
    messages = [
        {"role": message.role or "user", "content": message_content(message.parts, video)} for message in document
    ]
    videos = [p for p in document.parts if isinstance(p, Video)]
    extra = {"media_io_kwargs": {"video": {"fps": frame_rate(videos[0])}}} if videos and video == "url" else {}
    return messages, extra


class EndpointResponder:
    """Answers prompts through an OpenAI-compatible endpoint (``base_url`` ends in ``/v1``).

    ``concurrency`` requests are in flight at once (a batching server answers them together);
    ``max_retries`` and ``timeout`` go to the ``openai`` client, which retries 408/429/5xx and
    connection errors with backoff. ``usage`` adds up the token counts the endpoint reports.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        video: str = "url",
        timeout: float = 300.0,
        max_retries: int = 3,
    ) -> None:
        import openai

        if video not in VIDEO_MODES:
            raise ConfigError(f"video must be one of {VIDEO_MODES}, got {video!r}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self.model, self.concurrency, self.video = model, concurrency, video
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout,
                                    max_retries=max_retries)  # fmt: skip
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.Lock()

    def _call(self, request, refused: str, *, missing_skips: bool = False):  # noqa: ANN001, ANN202
        """``request()``, with the endpoint's failures as polymodal errors: a refusal of the inputs (400/422,
        and 404 for an endpoint a server lacks when ``missing_skips``) skips the task; anything else stops."""
        import openai

        skip = (openai.BadRequestError, openai.UnprocessableEntityError)
        skip += (openai.NotFoundError,) if missing_skips else ()
        try:
            reply = request()
        except skip as exc:
            raise DirectionNotSupportedError(f"{refused}: {_message(exc)}") from None
        except openai.AuthenticationError as exc:
            raise EndpointError(f"the endpoint refused the API key (--api-key): {_message(exc)}") from None
        except openai.NotFoundError as exc:
            where = f"{self.client.base_url} (model {self.model!r}?)"
            raise EndpointError(f"not found at {where}: {_message(exc)}") from None
        except openai.APIConnectionError as exc:
            raise EndpointError(f"cannot reach {self.client.base_url}: {exc}") from None
        except openai.APIStatusError as exc:
            raise EndpointError(f"the endpoint failed with HTTP {exc.status_code}: {_message(exc)}") from None
        with self._lock:
            self.usage["requests"] += 1
            usage = getattr(reply, "usage", None)
            if usage is not None and hasattr(usage, "prompt_tokens"):
                self.usage["prompt_tokens"] += usage.prompt_tokens
                self.usage["completion_tokens"] += usage.completion_tokens
        return reply

    def _ask(self, document: Document, max_tokens: int, temperature: float) -> str:
        messages, extra = chat_request(document, self.video)
        reply = self._call(lambda: self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens,
            extra_body=extra or None), "the endpoint refused these inputs")  # fmt: skip
        return reply.choices[0].message.content or ""

    def _text_to_media(self, document: Document, what: str, request):  # noqa: ANN001, ANN202
        """``request(text)`` for a text-only prompt (``what``: the endpoint, for messages)."""
        if any(not isinstance(p, Text) for p in document.parts):
            raise DirectionNotSupportedError(f"{what} takes a text prompt only")
        text = " ".join(p.text for p in document.parts)
        return self._call(lambda: request(text), f"the endpoint refused this ({what})", missing_skips=True)

    def _draw(self, document: Document, seed: int) -> Image:
        from polymodal.eval.runner import DRAW_SAMPLING

        extra = {"seed": seed, "guidance_scale": DRAW_SAMPLING["guidance_scale"]}
        reply = self._text_to_media(document, "/v1/images/generations", lambda text: self.client.images.generate(
            model=self.model, prompt=text, n=1, response_format="b64_json", extra_body=extra))  # fmt: skip
        return Image.from_bytes(base64.b64decode(reply.data[0].b64_json), name="generated picture")

    def _say(self, document: Document, seed: int) -> Audio:
        from polymodal.eval.runner import SAY_SAMPLING

        extra = {"seed": seed, "guidance_scale": SAY_SAMPLING["guidance_scale"]}
        reply = self._text_to_media(document, "/v1/audio/speech", lambda text: self.client.audio.speech.create(
            model=self.model, input=text, voice="alloy", response_format="wav", extra_body=extra))  # fmt: skip
        return Audio.from_bytes(reply.content, name="generated speech")

    def say(self, prompts: Sequence[Document], seeds: Sequence[int]) -> list[Audio]:
        """One clip per prompt from ``/v1/audio/speech`` (WAV), with the item's seed."""
        return self._map(self._say, prompts, seeds)

    def draw(self, prompts: Sequence[Document], seeds: Sequence[int]) -> list[Image]:
        """One picture per prompt from ``/v1/images/generations`` (b64_json), with the item's seed and
        the guidance scale the local runner uses (extra body fields, which other servers may ignore)."""
        return self._map(self._draw, prompts, seeds)

    def _map(self, ask, prompts: Sequence[Document], seeds: Sequence[int]) -> list:  # noqa: ANN001
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(ask, p, s) for p, s in zip(prompts, seeds, strict=True)]
            try:
                return [f.result() for f in futures]
            finally:
                for f in futures:
                    f.cancel()

    def __call__(self, prompts: Sequence[Document], settings) -> list[str]:  # noqa: ANN001 (GenerationSettings)
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._ask, p, settings.max_new_tokens, settings.temperature) for p in prompts]
            try:
                return [f.result() for f in futures]
            finally:
                for f in futures:
                    f.cancel()


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(exc)


def evaluate_endpoint(
    base_url: str,
    model: str,
    suite,  # noqa: ANN001 (Suite or folder)
    *,
    api_key: str | None = None,
    concurrency: int = 8,
    video: str = "url",
    max_retries: int = 3,
    **kwargs,  # noqa: ANN003 (as evaluate_responder: limit, tasks, blind, progress, video_fps, media_size)
):  # noqa: ANN201 (EvalReport)
    """Evaluate the model ``model`` served at ``base_url`` on ``suite``; the report's settings name the
    endpoint and hold the token usage it reported."""
    from polymodal.eval.runner import evaluate_responder

    responder = EndpointResponder(base_url, model, api_key=api_key, concurrency=concurrency, video=video,
                                  max_retries=max_retries)  # fmt: skip
    settings = {"endpoint": base_url, "concurrency": concurrency, "video": video}
    report = evaluate_responder(responder, suite, model_name=model, settings=settings, **kwargs)
    report.settings["usage"] = dict(responder.usage)
    return report
