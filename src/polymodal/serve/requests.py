"""Chat requests read into documents: content parts checked, counted and decoded under a server's
limits (shared by the server and ``polymodal tokenize --request``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import torch

from polymodal.content import Document, Message, Text
from polymodal.serve import schemas as S
from polymodal.serve.cache import MediaCache
from polymodal.serve.config import ServeConfig
from polymodal.serve.errors import APIError
from polymodal.serve.media import MediaReader, decode_base64, decode_media

PART_KINDS = {"image_url": "image", "input_audio": "audio", "audio_url": "audio", "video_url": "video"}
_KNOWN_PARTS = "text, image_url, input_audio, audio_url and video_url"


class RequestReader:
    def __init__(self, config: ServeConfig, cache: MediaCache | None = None,
                 unavailable: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.config = config
        self.cache = cache if cache is not None else MediaCache(0)
        self.unavailable = unavailable if unavailable is not None else {}
        self.media = MediaReader(config)
        self.limits = config.media_limits()

    def check_available(self, modalities: set[str]) -> None:
        needs = set(modalities) | ({"image"} if "video" in modalities else set())
        for modality in sorted(needs & set(self.unavailable)):
            raise APIError(400, f"this server cannot handle {modality} right now: its {modality} tokenizer failed to "
                                f"load ({self.unavailable[modality]})", code="modality_unavailable")  # fmt: skip

    async def document(self, messages: list[S.ChatMessage], options: dict) -> Document:
        """The chat as a document: parts in order, media counted before any is read, then read and
        decoded off the event loop."""
        plan: list[tuple[str, list]] = []
        counts: dict[str, int] = {}
        for i, message in enumerate(messages):
            role = "system" if message.role == "developer" else message.role
            where = f"messages[{i}].content"
            content = message.content
            if content is None or content == "" or content == []:
                raise APIError(400, f"{where}: a message needs content", param=where)
            items: list = []
            for j, part in enumerate([{"type": "text", "text": content}] if isinstance(content, str) else content):
                items.append(self._part_spec(part, f"{where}[{j}]", role, counts))
            plan.append((role, items))
        self.check_available(set(counts))
        for kind, count in counts.items():
            if count > self.config.max_items(kind):
                raise APIError(400, f"the request holds {count} {kind} inputs; this server allows at most "
                                    f"{self.config.max_items(kind)} per request (max_{kind}s)",
                               param="messages", code="too_many_media_items")  # fmt: skip
        return await asyncio.to_thread(self._read_parts, plan, options)

    def _part_spec(self, part: Any, where: str, role: str, counts: dict[str, int]) -> tuple:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise APIError(400, f"{where}: a content part is an object with a 'type'", param=where)
        kind = part["type"]
        if kind in ("text", "refusal", "input_text", "output_text"):
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise APIError(400, f"{where}.text must be a string", param=f"{where}.text")
            return ("text", text)
        if kind not in PART_KINDS:
            raise APIError(400, f"{where}: unknown content part type {kind!r} (this server reads {_KNOWN_PARTS})",
                           param=f"{where}.type", code="unknown_part_type")  # fmt: skip
        if role != "user":
            raise APIError(400, f"{where}: only user messages may hold {kind} parts", param=where)
        media = PART_KINDS[kind]
        counts[media] = counts.get(media, 0) + 1
        body = part.get(kind)
        uuid = part.get("uuid")
        if uuid is not None and not isinstance(uuid, str):
            raise APIError(400, f"{where}.uuid must be a string", param=f"{where}.uuid")
        if kind == "input_audio":
            if not isinstance(body, dict) or not isinstance(body.get("data"), str):
                if body is None and uuid is not None:
                    return (media, None, "auto", uuid, f"{where}.input_audio")
                raise APIError(
                    400, f"{where}.input_audio must be {{data: <base64>, format}}", param=f"{where}.input_audio"
                )
            fmt = body.get("format")
            if fmt is not None and fmt not in ("wav", "mp3", "flac", "ogg"):
                raise APIError(400, f"{where}.input_audio.format {fmt!r} is not one of wav, mp3, flac, ogg",
                               param=f"{where}.input_audio.format")  # fmt: skip
            return (media, ("base64", body["data"]), "auto", uuid, f"{where}.input_audio.data")
        if isinstance(body, str):  # some clients send the URL itself
            body = {"url": body}
        if body is None and uuid is not None:
            return (media, None, "auto", uuid, f"{where}.{kind}")
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise APIError(400, f"{where}.{kind} must be {{url: <data URL or URL>}}", param=f"{where}.{kind}")
        detail = body.get("detail", "auto") if media == "image" else "auto"
        if detail not in ("auto", "low", "high"):
            raise APIError(
                400, f"{where}.image_url.detail must be auto, low or high", param=f"{where}.image_url.detail"
            )
        return (media, ("url", body["url"]), detail, uuid, f"{where}.{kind}.url")

    def _read_parts(self, plan: list[tuple[str, list]], options: dict) -> Document:
        video = options.get("video", {})
        fps = float(video.get("fps", self.config.video_fps))
        frames = int(video.get("num_frames", self.config.max_video_frames))
        if not 0 < fps <= self.config.video_fps * 4 or not 0 < frames <= self.config.max_video_frames:
            raise APIError(400, f"media_io_kwargs.video: fps must be in (0, {self.config.video_fps * 4}] and "
                           f"num_frames in [1, {self.config.max_video_frames}]", param="media_io_kwargs")  # fmt: skip
        messages = []
        for role, items in plan:
            parts = []
            for item in items:
                if item[0] == "text":
                    parts.append(Text(item[1]))
                    continue
                kind, source, detail, uuid, param = item
                settings = (kind, detail, fps, frames) if kind == "video" else (kind, detail)
                if source is None:  # a uuid alone: the media must be cached
                    cached = self.cache.part(self.cache.key(None, uuid, settings))
                    if cached is None:
                        raise APIError(400, f"{param}: no media was sent and uuid {uuid!r} is not cached", param=param)
                    parts.append(cached)
                    continue
                how, value = source
                data = (decode_base64(value, param, self.config.max_request_bytes) if how == "base64"
                        else self.media.read(value, param, kind)[0])  # fmt: skip
                key = self.cache.key(data, uuid, settings)
                part = self.cache.part(key)
                if part is None:
                    part = decode_media(data, kind, param, self.limits, detail=detail, fps=fps, max_frames=frames)
                    self.cache.put_part(key, part)
                parts.append(part)
            messages.append(Message(role, tuple(parts)))
        return Document(messages)


def request_cost(tokenizer: Any, body: Any, config: ServeConfig | None = None) -> dict:
    """What a chat completions request will cost before it runs: its prompt tokens by modality and the
    most tokens it may generate (its ``max_completion_tokens`` / ``max_tokens``, else the server's cap),
    read and checked exactly as the server reads it (``tokenizer``: a DocumentTokenizer)."""
    config = config or ServeConfig()
    request = S.parse(S.ChatRequest, body)
    document = asyncio.run(RequestReader(config).document(request.messages, request.media_io_kwargs or {}))
    seq = tokenizer.encode(document, add_generation_prompt=True, add_eos=False)
    by_modality = tokens_by_modality(tokenizer.vocab, seq.modality)
    asked = request.max_completion_tokens or request.max_tokens or config.max_completion_tokens
    return {"prompt_tokens": len(seq), "by_modality": by_modality, "max_completion_tokens": asked,
            "n": request.n, "max_total_tokens": request.n * (len(seq) + asked)}  # fmt: skip


def tokens_by_modality(vocab: Any, modality: Any) -> dict[str, int]:
    """How many tokens of each modality (by name) a tensor of modality codes holds."""
    names = vocab.modalities
    counts = torch.bincount(torch.as_tensor(modality, dtype=torch.long), minlength=len(names)).tolist()
    return {names[i]: c for i, c in enumerate(counts) if c}
