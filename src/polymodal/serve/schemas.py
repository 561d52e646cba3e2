"""The request bodies of the OpenAI API that polymodal serves, validated with pydantic.

Fields clients commonly send and we honour are declared; fields we cannot honour (tools, logprobs,
penalties, logit bias) are refused when set to anything but their default, so that nobody gets a
silently different answer; any other extra field is ignored, as OpenAI-compatible servers do.
Content parts are read by :func:`polymodal.serve.app` code with errors that name the part.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polymodal.serve.errors import APIError


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class AudioOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    voice: str | dict[str, Any] = "default"
    format: Literal["wav", "flac", "pcm16", "mp3", "opus", "aac"] = "wav"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # extension (vLLM)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "audio", "image"]] | None = None
    audio: AudioOptions | None = None
    response_format: dict[str, Any] | None = None
    guidance_scale: float | None = Field(None, ge=0)  # extension: classifier-free guidance of media outputs
    media_io_kwargs: dict[str, dict[str, Any]] | None = None  # extension (vLLM): {"video": {"fps", "num_frames"}}


class ImageRequest(_Body):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    seed: int | None = None
    guidance_scale: float | None = Field(None, ge=0)
    negative_prompt: str | None = None
    quality: str | None = None
    style: str | None = None


class SpeechRequest(_Body):
    model: str
    input: str = Field(min_length=1)
    voice: str | dict[str, Any] = "default"
    response_format: Literal["wav", "flac", "pcm", "mp3", "opus", "aac"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    seed: int | None = None
    guidance_scale: float | None = Field(None, ge=0)


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]] | list[dict[str, Any]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


_UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "logprobs": "log-probabilities", "top_logprobs": "log-probabilities",
    "frequency_penalty": "penalties", "presence_penalty": "penalties", "logit_bias": "logit bias",
    "prediction": "predicted outputs", "web_search_options": "web search",
}  # fmt: skip
_DEFAULTS: dict[str, tuple] = {"logprobs": (False, None), "frequency_penalty": (0, 0.0, None),
                               "presence_penalty": (0, 0.0, None)}  # fmt: skip


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body; the first problem becomes a 400 that names its field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or None
        raise APIError(400, f"{where}: {error['msg']}" if where else error["msg"], param=where) from None
    for key, what in _UNSUPPORTED.items():
        value = body.get(key)
        if key in body and value not in _DEFAULTS.get(key, (None, [], {})):
            raise APIError(
                400, f"{key}: {what} is not supported by this server", param=key, code="unsupported_parameter"
            )
    return request
