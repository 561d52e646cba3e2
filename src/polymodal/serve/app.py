"""The OpenAI-compatible HTTP API of a run (FastAPI).

``create_app(run, config)`` builds the application; ``polymodal serve RUN`` runs it with uvicorn.
Endpoints, in the shapes of the OpenAI API (see ``docs/serving.md``): ``GET /v1/models``,
``POST /v1/chat/completions`` (text, images, audio and video in; text and speech out; streaming),
``POST /v1/images/generations``, ``POST /v1/audio/speech``, ``POST /v1/audio/transcriptions``,
``POST /v1/embeddings``, ``GET /health`` and ``GET /metrics`` (Prometheus).

Every request is checked before it costs anything: body size, JSON shape, the model name, media
counts, media limits (from headers), the run's declared directions, and the prompt's token count
against the context. Bad input is answered with 400/404/413/422 in OpenAI's error shape; overload
with 429 and ``Retry-After``; nothing a client sends yields a 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import secrets
import time
import uuid as uuid_lib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException

from polymodal import watermark
from polymodal.constrain import json_constraint
from polymodal.content import Audio, Document, Image
from polymodal.errors import PolymodalError
from polymodal.generation import AudioDelta, Finished, PartDone, SamplingConfig, TextDelta
from polymodal.model import Transformer
from polymodal.retrieval import embed_sequences
from polymodal.run import Run
from polymodal.serve import schemas as S
from polymodal.serve.batching import Engine, Job
from polymodal.serve.cache import MediaCache
from polymodal.serve.config import ServeConfig
from polymodal.serve.errors import APIError, from_polymodal
from polymodal.serve.media import decode_media
from polymodal.serve.requests import RequestReader, tokens_by_modality
from polymodal.serve.router import CascadePolicy, ReplayJob
from polymodal.tokenizers.document import part_modality

log = logging.getLogger("polymodal.serve")
_FINISH = {"stop": "stop", "complete": "stop", "length": "length"}
STREAM_AUDIO_CODES = 10  # streamed speech (pcm16): codes per chunk, 0.4 s at 25 codes/s
_AUDIO_FORMATS = ("wav", "flac", "pcm16", "pcm")


# -- metrics ----------------------------------------------------------------------------------------


class _CacheCollector:
    """The media cache's own hit and miss counts, read at scrape time."""

    def __init__(self, cache: MediaCache) -> None:
        self.cache = cache

    def collect(self):  # noqa: ANN201
        family = CounterMetricFamily("polymodal_media_cache", "Media cache lookups", labels=["table", "result"])
        for table in ("part", "span"):
            family.add_metric([table, "hit"], self.cache.hits[table])
            family.add_metric([table, "miss"], self.cache.misses[table])
        yield family


class Metrics:
    def __init__(self, cache: MediaCache) -> None:
        self.registry = r = CollectorRegistry()
        r.register(_CacheCollector(cache))
        self.requests = Counter("polymodal_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("polymodal_request_seconds", "Time to answer a request", ["endpoint"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))  # fmt: skip
        self.tokens = Counter("polymodal_tokens", "Tokens read and written", ["kind", "modality"], registry=r)
        self.queue = Gauge("polymodal_queue_depth", "Requests waiting or running", registry=r)
        self.batch = Histogram("polymodal_batch_rows", "Rows decoded together", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip
        self.cascade = Counter("polymodal_cascade_requests", "Chat requests by the run that answered them, and why",
                               ["served_by", "reason"], registry=r)  # fmt: skip


# -- request state ----------------------------------------------------------------------------------


@dataclass
class _Usage:
    prompt: dict[str, int] = field(default_factory=dict)  # by modality
    cached: int = 0
    completion: dict[str, int] = field(default_factory=dict)

    def add_completion(self, modality: str, count: int) -> None:
        self.completion[modality] = self.completion.get(modality, 0) + count

    def body(self) -> dict:
        prompt, completion = sum(self.prompt.values()), sum(self.completion.values())
        return {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {
                "text_tokens": self.prompt.get("text", 0) + self.prompt.get("special", 0),
                "image_tokens": self.prompt.get("image", 0), "audio_tokens": self.prompt.get("audio", 0),
                "cached_tokens": self.cached,
            },
            "completion_tokens_details": {
                "text_tokens": self.completion.get("text", 0) + self.completion.get("special", 0),
                "audio_tokens": self.completion.get("audio", 0), "image_tokens": self.completion.get("image", 0),
            },
        }  # fmt: skip


class Server:
    """The state behind the routes: the run, its engine, the media cache and the metrics."""

    def __init__(self, run: Run, config: ServeConfig, large: Run | None = None) -> None:
        self.run, self.config = run, config
        self.cache = MediaCache(config.media_cache_items)
        self.metrics = Metrics(self.cache)
        run.tokenizer.span_cache = self.cache
        self.limits = config.media_limits()
        self.engine = Engine(run, config, on_batch=self.metrics.batch.observe)
        self.created = int(time.time())
        self.context = getattr(run.model.config, "max_seq_len", 4096)
        # Load every tokenizer now (the first request is then not slow); one that fails makes its
        # modality unavailable, and the requests that need it get an error naming it.
        self.unavailable: dict[str, str] = {}
        for modality in run.tokenizer.vocab.modalities[1:]:
            try:
                run.tokenizer.tokenizer(modality)
            except Exception as exc:  # noqa: BLE001 (whatever a broken tokenizer folder raises)
                if modality == "text":
                    raise
                self.unavailable[modality] = f"{type(exc).__name__}: {exc}"
                log.warning("the %s tokenizer failed to load; %s requests will be refused: %s", modality,
                            modality, exc)  # fmt: skip
        self.reader = RequestReader(config, self.cache, self.unavailable)
        self.document = self.reader.document
        self.check_available = self.reader.check_available
        # cascade routing: a large run answers what the small one (this run) should not
        self.large_run, self.large, self.policy = large, None, None
        if large is not None:
            self.large = Engine(large, config, on_batch=self.metrics.batch.observe)
            c = config
            self.policy = CascadePolicy(c.cascade_threshold, c.cascade_large_for, c.cascade_max_small_prompt_tokens,
                                        c.cascade_high_detail_to_large)  # fmt: skip

    # -- reading requests

    def check_declared_size(self, request: Request) -> None:
        """A body whose Content-Length is over the limit is refused before it is read."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.config.max_request_bytes:
            raise APIError(
                413, f"the request body exceeds {self.config.max_request_bytes} bytes", code="request_too_large"
            )

    async def body(self, request: Request) -> Any:
        self.check_declared_size(request)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.config.max_request_bytes:
                raise APIError(413, f"the request body exceeds {self.config.max_request_bytes} bytes",
                               code="request_too_large")  # fmt: skip
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.config.model_name:
            raise APIError(404, f"The model '{name}' does not exist (this server serves '{self.config.model_name}')",
                           param="model", code="model_not_found")  # fmt: skip

    def encode(self, document: Document, *, chat: bool) -> tuple[torch.Tensor, int]:
        """(modality code of every prompt token, tokens served from the media cache)."""
        with self.cache.tally() as cached:
            try:
                seq = self.run.tokenizer.encode(document, add_generation_prompt=chat, add_eos=False)
            except PolymodalError as exc:
                raise from_polymodal(exc) from None
        return seq.modality, cached[0]

    def prompt_usage(self, modality: torch.Tensor, cached: int, usage: _Usage) -> int:
        usage.prompt = tokens_by_modality(self.run.tokenizer.vocab, modality)
        usage.cached = cached
        return len(modality)

    def check_direction(self, inputs: set[str], output: str) -> None:
        self.check_available(inputs | {output})
        if not self.run.supports(inputs or {"text"}, output):
            raise APIError(400, f"this model was not trained for {'+'.join(sorted(inputs or {'text'}))}->{output} "
                                f"(it declares: {', '.join(self.run.directions) or 'nothing'})",
                           code="unsupported_direction")  # fmt: skip

    # -- running jobs

    async def collect(self, job: Job, request: Request) -> dict[int, Any]:
        """Every row's Finished generation (and media part), answering the job's errors; a client that
        goes away cancels the job."""
        try:
            events = await self._gather(job, request)
        finally:
            self.metrics.queue.set(self.engine.depth)
        return {row: event.generation for row, event in events if isinstance(event, Finished)}

    @staticmethod
    def inputs_of(document: Document) -> set[str]:
        """The modalities a chat reads (text always), as the run's declared directions name them."""
        return {m for m in map(part_modality, document.parts) if m != "text"} | {"text"}

    def speech_sampling(self, *, seed: int | None = None, guidance: float | None = None,
                        audio_chunk: int = 0) -> SamplingConfig:  # fmt: skip
        """How the server speaks a text (speech endpoint, chat audio, the UI)."""
        guidance = 3.0 if guidance is None else guidance
        seconds = min(30.0, self.config.max_audio_seconds)
        return SamplingConfig(temperature=1.0, top_k=50, seed=seed, guidance_scale=guidance,
                              max_audio_seconds=seconds, audio_chunk=audio_chunk)  # fmt: skip

    def watermarked(self, part: Any, *, offset: int = 0) -> Any:
        """A generated image or clip as it leaves the server: marked with the server's key (unless
        ``watermark`` is off). ``offset``: where a streamed piece of audio starts in its clip."""
        if not self.config.watermark:
            return part
        if isinstance(part, Image):
            return watermark.mark_image(part, self.config.watermark_key)
        return watermark.mark_audio(part, self.config.watermark_key, offset=offset)

    def release(self, job: Any) -> None:
        """The handler is done with ``job``: free its slot in the engine that ran it."""
        engine = getattr(job, "engine", None)
        if engine is not None:
            engine.release(job)

    async def route(self, document: Document, n: int, sampling: SamplingConfig, constraint: Any, prompt_tokens: int,
                    inputs: set[str], request: Request) -> tuple[Any, str]:  # fmt: skip
        """The job that answers a chat request, and which run it is (``small`` or ``large``; ``single``
        without a cascade). The small run's answer is decoded to the end before it is judged, so a
        streamed reply from it arrives at once; a large one streams as it is written."""
        if self.large is None:
            return self.submit([document] * n, "text", sampling, constraint), "single"
        large_can = self.large_run.supports(inputs, "text")
        reason = self.policy.by_inputs(document, prompt_tokens) if large_can else None
        if reason is None:
            events = await self._gather(self.submit([document] * n, "text", sampling, constraint), request)
            finished = [event.generation for _, event in events if isinstance(event, Finished)]
            kept = "cancelled" if len(finished) < n else "confident" if self.policy.confident(finished) else None
            if kept is None and not large_can:
                kept = "large not trained for these inputs"
            if kept is not None:
                self.metrics.cascade.labels("small", kept).inc()
                return ReplayJob(events), "small"
            reason = "low confidence"
        self.metrics.cascade.labels("large", reason).inc()
        return self.large.submit([document] * n, "text", sampling, constraint), "large"

    async def _gather(self, job: Job, request: Request) -> list:
        """Every event of ``job`` until it ends (the client leaving cancels it), raising its errors."""
        events: list = []
        try:
            while True:
                try:
                    item = await asyncio.wait_for(job.next_event(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return events
                    continue
                if item is None:
                    return events
                if isinstance(item, BaseException):
                    raise _generation_error(item)
                events.append(item)
        finally:
            self.release(job)

    def submit(self, prompts: list[Document], output: str, sampling: SamplingConfig, constraint: Any = None) -> Job:
        job = self.engine.submit(prompts, output, sampling, constraint)
        self.metrics.queue.set(self.engine.depth)
        return job

    def count_completion(self, generation: Any, usage: _Usage) -> None:
        vocab = self.run.tokenizer.vocab
        for name, count in tokens_by_modality(vocab, vocab.modality_of(generation.ids)).items():
            usage.add_completion(name, count)


def _constraint(run: Run, response_format: dict | None) -> Any:
    """The decoding constraint ``response_format`` asks for: None for text, JSON (any object, or one
    valid under the given schema) otherwise."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise APIError(400, f"response_format.type {kind!r}: text, json_object or json_schema",
                       param="response_format.type")  # fmt: skip
    schema = None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise APIError(400, "response_format.json_schema must be {name, schema, strict}",
                           param="response_format.json_schema")  # fmt: skip
        schema = spec.get("schema") or {"type": "object"}
    try:
        return json_constraint(run, schema)
    except PolymodalError as exc:
        raise APIError(400, f"response_format: {exc}", param="response_format") from None


def _generation_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PolymodalError):
        return from_polymodal(exc)
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", code="internal_error")


def _sampling(req: Any, *, max_new_tokens: int, config: ServeConfig, default_guidance: float = 1.0) -> SamplingConfig:
    stop = req.stop if hasattr(req, "stop") else None
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > 4:
        raise APIError(400, "stop: at most 4 stop strings", param="stop")
    temperature = getattr(req, "temperature", None)
    guidance = getattr(req, "guidance_scale", None)
    try:
        return SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=1.0 if temperature is None else temperature,
            top_p=getattr(req, "top_p", None), top_k=getattr(req, "top_k", None), seed=getattr(req, "seed", None),
            stop=stops, guidance_scale=default_guidance if guidance is None else guidance,
        )  # fmt: skip
    except PolymodalError as exc:
        raise from_polymodal(exc) from None


def _audio_bytes(audio: Audio, fmt: str) -> bytes:
    if fmt == "wav":
        return audio.to_mono().to_wav_bytes()
    samples = np.asarray(audio.to_mono().waveform[0], dtype=np.float32)
    if fmt in ("pcm", "pcm16"):
        return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    sf.write(out, samples, audio.sample_rate, format=fmt.upper(), subtype="PCM_16")
    return out.getvalue()


def _image_bytes(image: Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.pixels.save(out, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return out.getvalue()


# -- the application ------------------------------------------------------------------------------


def create_app(run: Run, config: ServeConfig | None = None, *, ui: bool = False, large: Run | None = None) -> FastAPI:
    """The API's FastAPI application; with ``ui``, the chat UI mounted at ``/ui`` (the ``ui`` extra); with
    ``large``, chat requests are routed between ``run`` (small) and ``large`` (:mod:`polymodal.serve.router`)."""
    config = config or ServeConfig()
    server = Server(run, config, large)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(server.engine.close)  # the batch in flight finishes; nothing new starts
        if server.large is not None:
            await asyncio.to_thread(server.large.close)

    app = FastAPI(title="polymodal", version="1", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # a bug of ours, said as one
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    @app.middleware("http")
    async def observe(request: Request, call_next):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        path = request.url.path
        if path.startswith("/v1/") and config.api_keys:
            given = request.headers.get("authorization", "")
            key = given[7:] if given.lower().startswith("bearer ") else ""
            if not any(secrets.compare_digest(key, k) for k in config.api_keys):
                response = JSONResponse(APIError(401, "a valid API key is required (Authorization: Bearer KEY)",
                                                 code="invalid_api_key").body(), status_code=401)  # fmt: skip
                server.metrics.requests.labels(path, "401").inc()
                return response
        try:
            response = await call_next(request)
        except APIError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())
        endpoint = path if path in _ENDPOINTS else "other"
        server.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        server.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": config.model_name, "queue_depth": server.engine.depth,
                "directions": list(run.directions), "unavailable": server.unavailable}  # fmt: skip

    @app.get("/metrics")
    async def metrics() -> Response:
        server.metrics.queue.set(server.engine.depth)
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict:
        return {"id": config.model_name, "object": "model", "created": server.created, "owned_by": "polymodal"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        server.check_model(name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req: S.ChatRequest = S.parse(S.ChatRequest, await server.body(request))
        server.check_model(req.model)
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")
        if req.n > config.max_n:
            raise APIError(400, f"n: at most {config.max_n}", param="n")
        modalities = req.modalities or ["text"]
        if "image" in modalities:
            raise APIError(400, "modalities: images are made by POST /v1/images/generations", param="modalities")
        speak = "audio" in modalities
        audio_format = req.audio.format if req.audio else "wav"
        if speak and audio_format not in _AUDIO_FORMATS:
            raise APIError(400, f"audio.format {audio_format!r}: this server writes wav, flac or pcm16",
                           param="audio.format")  # fmt: skip
        if speak and req.n != 1:
            raise APIError(400, "n: audio output is one choice (n = 1)", param="n")
        constraint = await asyncio.to_thread(_constraint, run, req.response_format)
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > config.max_completion_tokens:
            raise APIError(
                400, f"max_tokens: at most {config.max_completion_tokens} on this server", param="max_tokens"
            )
        document = await server.document(req.messages, req.media_io_kwargs or {})
        inputs = server.inputs_of(document)
        server.check_direction(inputs, "text")
        if speak:
            server.check_direction({"text"}, "audio")
        usage = _Usage()
        modality, cached = await asyncio.to_thread(server.encode, document, chat=True)
        prompt_tokens = server.prompt_usage(modality, cached, usage)
        limit = config.max_prompt_tokens or server.context
        # Unasked, an answer may take what the context leaves, up to the server's cap.
        max_new = asked or max(1, min(config.max_completion_tokens, server.context - prompt_tokens))
        if prompt_tokens + max_new > server.context or prompt_tokens > limit:
            raise APIError(400, f"the prompt holds {prompt_tokens} tokens and asks for up to {max_new} more; this "
                                f"model's context is {server.context} tokens (prompt limit {limit})",
                           param="messages", code="context_length_exceeded")  # fmt: skip
        sampling = _sampling(req, max_new_tokens=max_new, config=config)
        job, served_by = await server.route(document, req.n, sampling, constraint, prompt_tokens, inputs, request)
        routed = {} if served_by == "single" else {"served_by": served_by}
        ident, created = f"chatcmpl-{uuid_lib.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = _chat_chunks(server, job, request, ident, created, usage, speak, audio_format, include_usage,
                                  req.n)  # fmt: skip
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            if routed:
                headers["X-Polymodal-Served-By"] = served_by
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        results = await server.collect(job, request)
        choices = []
        for index in range(req.n):
            generation = results.get(index)
            if generation is None:  # the client left
                return Response(status_code=499)
            server.count_completion(generation, usage)
            message: dict[str, Any] = {"role": "assistant", "content": generation.part.text}
            if speak:
                message["audio"] = await _speak(server, request, generation.part.text, audio_format, usage)
            choices.append({"index": index, "message": message, "logprobs": None,
                            "finish_reason": _FINISH.get(generation.finish_reason, "stop")})  # fmt: skip
        _count_tokens(server, usage)
        return JSONResponse({"id": ident, "object": "chat.completion", "created": created, "model": config.model_name,
                             "choices": choices, "usage": usage.body(), **routed},
                            headers={"X-Polymodal-Served-By": served_by} if routed else None)  # fmt: skip

    @app.post("/v1/images/generations")
    async def images(request: Request) -> dict:
        req: S.ImageRequest = S.parse(S.ImageRequest, await server.body(request))
        server.check_model(req.model)
        if req.response_format == "url":
            raise APIError(400, "response_format: this server returns b64_json only", param="response_format")
        if req.n > config.max_n:
            raise APIError(400, f"n: at most {config.max_n}", param="n")
        server.check_direction({"text"}, "image")
        sizes = image_sizes(run)
        grid = None
        if req.size not in (None, "auto"):
            if req.size not in sizes:
                raise APIError(400, f"size {req.size!r}: this model draws {', '.join(sizes)} (or auto)", param="size")
            grid = sizes[req.size]
        document = Document.of(req.prompt)
        usage = _Usage()
        modality, cached = await asyncio.to_thread(server.encode, document, chat=False)
        server.prompt_usage(modality, cached, usage)
        sampling = _sampling(req, max_new_tokens=1, config=config, default_guidance=3.0)
        sampling = SamplingConfig(**{**sampling.__dict__, "grid": grid})
        results = await server.collect(server.submit([document] * req.n, "image", sampling), request)
        if len(results) < req.n:
            return Response(status_code=499)
        fmt = req.output_format or "png"
        data = []
        for k in range(req.n):
            server.count_completion(results[k], usage)
            picture = server.watermarked(results[k].part)
            data.append({"b64_json": base64.b64encode(_image_bytes(picture, fmt)).decode()})
        _count_tokens(server, usage)
        return {"created": int(time.time()), "data": data, "output_format": fmt, "usage": {
            "input_tokens": sum(usage.prompt.values()), "output_tokens": sum(usage.completion.values()),
            "total_tokens": sum(usage.prompt.values()) + sum(usage.completion.values())}}  # fmt: skip

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        req: S.SpeechRequest = S.parse(S.SpeechRequest, await server.body(request))
        server.check_model(req.model)
        if len(req.input) > config.max_speech_characters:
            raise APIError(400, f"input: at most {config.max_speech_characters} characters", param="input")
        if req.response_format not in ("wav", "flac", "pcm"):
            raise APIError(400, f"response_format {req.response_format!r}: this server writes wav, flac or pcm",
                           param="response_format")  # fmt: skip
        if req.speed != 1.0:
            raise APIError(400, "speed: this model speaks at one speed (1.0)", param="speed")
        server.check_direction({"text"}, "audio")
        usage = _Usage()
        audio = await _say(server, request, req.input, usage, seed=req.seed, guidance=req.guidance_scale)
        if audio is None:
            return Response(status_code=499)
        media = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm"}[req.response_format]
        return Response(_audio_bytes(audio, req.response_format), media_type=media)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        server.check_declared_size(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "send the audio as multipart/form-data with a 'file' field", param="file")
        try:
            form = await request.form(max_files=1, max_fields=32, max_part_size=config.max_request_bytes)
        except Exception as exc:  # noqa: BLE001 (a malformed multipart body)
            raise APIError(400, f"cannot read the multipart body ({exc})", param="file") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "file: an audio file is required", param="file")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        server.check_model(fields.get("model"))
        fmt = fields.get("response_format", "json")
        if fmt not in ("json", "text", "verbose_json", "srt", "vtt"):
            raise APIError(
                400, f"response_format {fmt!r}: json, text, verbose_json, srt or vtt", param="response_format"
            )
        data = await upload.read(config.max_request_bytes + 1)
        if len(data) > config.max_request_bytes:
            raise APIError(413, f"file: more than {config.max_request_bytes} bytes", param="file")
        server.check_direction({"audio"}, "text")
        audio = await asyncio.to_thread(decode_media, data, "audio", "file", server.limits)
        document = Document.of(audio)
        usage = _Usage()
        modality, cached = await asyncio.to_thread(server.encode, document, chat=False)
        server.prompt_usage(modality, cached, usage)
        temperature = float(fields.get("temperature", 0) or 0)
        sampling = SamplingConfig(max_new_tokens=config.max_completion_tokens, temperature=temperature)
        results = await server.collect(server.submit([document], "text", sampling), request)
        if 0 not in results:
            return Response(status_code=499)
        text = results[0].part.text.strip()
        duration = audio.duration
        if fmt == "text":
            return PlainTextResponse(text)
        if fmt in ("srt", "vtt"):
            return PlainTextResponse(_subtitles(text, duration, fmt))
        if fmt == "verbose_json":
            segment = {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text}
            return JSONResponse({"task": "transcribe", "language": fields.get("language", "english"),
                                 "duration": duration, "text": text, "segments": [segment]})  # fmt: skip
        return JSONResponse({"text": text, "usage": {"type": "tokens", "input_tokens": sum(usage.prompt.values()),
                             "output_tokens": len(results[0].ids), "total_tokens": sum(usage.prompt.values())
                             + len(results[0].ids)}})  # fmt: skip

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        req: S.EmbeddingRequest = S.parse(S.EmbeddingRequest, await server.body(request))
        server.check_model(req.model)
        if not isinstance(run.model, Transformer):
            raise APIError(400, "embeddings come from an early-fusion run's aligned states", param="model")
        documents = await _embedding_inputs(server, req)
        width = run.model.config.dim
        if req.dimensions is not None and req.dimensions != width:
            raise APIError(400, f"dimensions: this model's embeddings have {width} dimensions", param="dimensions")
        vectors, tokens = await asyncio.to_thread(_embed, server, documents)
        data = []
        for k, vector in enumerate(vectors):
            value: Any = vector.tolist()
            if req.encoding_format == "base64":
                value = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": k, "embedding": value})
        return {"object": "list", "data": data, "model": config.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip

    if ui:
        from polymodal.serve.ui import mount_ui

        app = mount_ui(app, server)
    return app


_ENDPOINTS = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/images/generations",
                        "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/embeddings"})  # fmt: skip


def image_sizes(run: Run) -> dict[str, tuple[int, int]]:
    """``"WxH"`` → grid for each grid the image tokenizer draws."""
    tokenizer = run.tokenizer.tokenizer("image")
    step = getattr(getattr(tokenizer, "config", None), "downsample", 1)
    return {f"{w * step}x{h * step}": (h, w) for h, w in tokenizer.grids}


def _count_tokens(server: Server, usage: _Usage) -> None:
    for kind, counts in (("prompt", usage.prompt), ("completion", usage.completion)):
        for modality, count in counts.items():
            server.metrics.tokens.labels(kind, modality).inc(count)


async def _say(server: Server, request: Request, text: str, usage: _Usage, *, seed: int | None = None,
               guidance: float | None = None) -> Audio | None:  # fmt: skip
    sampling = server.speech_sampling(seed=seed, guidance=guidance)
    results = await server.collect(server.submit([Document.of(text)], "audio", sampling), request)
    if 0 not in results:
        return None
    server.count_completion(results[0], usage)
    return server.watermarked(results[0].part)


async def _speak(server: Server, request: Request, text: str, fmt: str, usage: _Usage) -> dict:
    audio = await _say(server, request, text or " ", usage)
    if audio is None:
        raise APIError(499, "the client went away")
    return {"id": f"audio_{uuid_lib.uuid4().hex}", "data": base64.b64encode(_audio_bytes(audio, fmt)).decode(),
            "expires_at": int(time.time()) + 3600, "transcript": text}  # fmt: skip


async def _chat_chunks(server: Server, job: Job, request: Request, ident: str, created: int, usage: _Usage,
                       speak: bool, audio_format: str, include_usage: bool, n: int) -> AsyncIterator[str]:  # fmt: skip
    model = server.config.model_name

    def chunk(choices: list, **extra: Any) -> str:
        body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n"

    try:
        for index in range(n):
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        texts: dict[int, str] = {}
        finished: dict[int, Any] = {}
        try:
            while True:
                item = await job.next_event()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise _generation_error(item)
                row, event = item
                if isinstance(event, TextDelta):
                    yield chunk([{"index": row, "delta": {"content": event.text}, "finish_reason": None}])
                elif isinstance(event, Finished):
                    finished[row] = event.generation
                    texts[row] = event.generation.part.text
                    server.count_completion(event.generation, usage)
                    if not speak:
                        reason = _FINISH.get(event.generation.finish_reason, "stop")
                        yield chunk([{"index": row, "delta": {}, "finish_reason": reason}])
                elif isinstance(event, PartDone):
                    pass
        finally:
            server.release(job)
        if speak and 0 in finished and audio_format in ("pcm16", "pcm"):
            # Speech streamed as it is written: each chunk of codes is decoded and sent (time to first
            # audio: the first STREAM_AUDIO_CODES codes plus the decoder's context, not the whole clip).
            sampling = server.speech_sampling(audio_chunk=STREAM_AUDIO_CODES)
            speech = server.submit([Document.of(texts[0] or " ")], "audio", sampling)
            audio_id, first, offset = f"audio_{uuid_lib.uuid4().hex}", True, 0
            try:
                while (item := await speech.next_event()) is not None:
                    if isinstance(item, BaseException):
                        raise _generation_error(item)
                    _, event = item
                    if isinstance(event, AudioDelta):
                        piece = server.watermarked(Audio(event.samples[None], event.sample_rate), offset=offset)
                        offset += len(event.samples)
                        pcm = (np.clip(piece.waveform[0], -1, 1) * 32767).astype("<i2").tobytes()
                        delta = {"id": audio_id, "data": base64.b64encode(pcm).decode()}
                        if first:
                            delta.update(transcript=texts[0], expires_at=int(time.time()) + 3600)
                            first = False
                        yield chunk([{"index": 0, "delta": {"audio": delta}, "finish_reason": None}])
                    elif isinstance(event, Finished):
                        server.count_completion(event.generation, usage)
            finally:
                server.release(speech)
            reason = _FINISH.get(finished[0].finish_reason, "stop")
            yield chunk([{"index": 0, "delta": {}, "finish_reason": reason}])
        elif speak and 0 in finished:
            audio = await _say(server, request, texts[0] or " ", usage)
            if audio is not None:  # a file format cannot be cut as it is written: the whole file, in pieces
                pcm = _audio_bytes(audio, audio_format)
                audio_id = f"audio_{uuid_lib.uuid4().hex}"
                step = 48_000  # bytes of audio per chunk
                for k in range(0, max(len(pcm), 1), step):
                    delta = {"id": audio_id, "data": base64.b64encode(pcm[k : k + step]).decode()}
                    if k == 0:
                        delta.update(transcript=texts[0], expires_at=int(time.time()) + 3600)
                    yield chunk([{"index": 0, "delta": {"audio": delta}, "finish_reason": None}])
            reason = _FINISH.get(finished[0].finish_reason, "stop")
            yield chunk([{"index": 0, "delta": {}, "finish_reason": reason}])
        _count_tokens(server, usage)
        if include_usage:
            yield chunk([], usage=usage.body())
    except APIError as exc:
        yield f"data: {json.dumps(exc.body())}\n\n"
    yield "data: [DONE]\n\n"


def _subtitles(text: str, duration: float, fmt: str) -> str:
    def stamp(seconds: float) -> str:
        h, rest = divmod(seconds, 3600)
        m, s = divmod(rest, 60)
        sep = "," if fmt == "srt" else "."
        return f"{int(h):02d}:{int(m):02d}:{int(s):02d}{sep}{int(round((s % 1) * 1000)):03d}"

    cue = f"{stamp(0)} --> {stamp(duration)}\n{text}\n"
    return f"1\n{cue}" if fmt == "srt" else f"WEBVTT\n\n{cue}"


async def _embedding_inputs(server: Server, req: S.EmbeddingRequest) -> list[Document]:
    raw = req.input
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw:
        raise APIError(400, "input: at least one item", param="input")
    if len(raw) > 256:
        raise APIError(400, "input: at most 256 items per request", param="input")
    text_tokenizer = server.run.tokenizer.tokenizer("text")
    documents = []
    for k, item in enumerate(raw):
        where = f"input[{k}]"
        if isinstance(item, str):
            if not item:
                raise APIError(400, f"{where}: empty string", param=where)
            documents.append(Document.of(item))
        elif isinstance(item, list):
            size = text_tokenizer.vocab_size
            if not item or any(not isinstance(t, int) or not 0 <= t < size for t in item):
                raise APIError(400, f"{where}: token ids must be integers in [0, {size})", param=where)
            documents.append(Document.of(text_tokenizer.decode_ids(item)))
        else:  # a media part (extension): {"type": "image_url", "image_url": {...}} …
            message = S.ChatMessage(role="user", content=[item])
            document = await server.document([message], {})
            documents.append(Document.of(*document.parts))
    return documents


def _embed(server: Server, documents: list[Document]) -> tuple[list[np.ndarray], int]:
    """The run's unified embedding of each input (:func:`polymodal.retrieval.embed`) and the tokens read."""
    try:
        seqs = [server.run.tokenizer.encode(d, add_eos=False) for d in documents]
        vectors = embed_sequences(server.run, seqs)
    except PolymodalError as exc:
        code = "context_length_exceeded" if "context" in str(exc) else "invalid_value"
        raise APIError(400, f"input: {exc}", param="input", code=code) from None
    return list(vectors.numpy()), sum(len(s) for s in seqs)
