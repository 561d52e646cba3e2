"""The OpenAI-compatible server, driven by the official ``openai`` client against a tiny run."""

from __future__ import annotations

import base64
import dataclasses
import functools
import http.client
import http.server
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from typer.testing import CliRunner

import toys
from needs import require

openai = require("openai")
uvicorn = require("uvicorn", "serve")
require("fastapi", "serve")

from media_factory import pick_codec, write_video  # noqa: E402
from polymodal.content import Audio, Document, Image  # noqa: E402
from polymodal.eval.cli import eval_app  # noqa: E402
from polymodal.eval.endpoint import EndpointError, evaluate_endpoint  # noqa: E402
from polymodal.eval.runner import evaluate  # noqa: E402
from polymodal.eval.suites import write_task  # noqa: E402
from polymodal.generation import SamplingConfig, generate  # noqa: E402
from polymodal.model import Transformer, preset  # noqa: E402
from polymodal.run import Run  # noqa: E402
from polymodal.serve import ServeConfig, create_app  # noqa: E402
from polymodal.tokenizers.document import DocumentTokenizer  # noqa: E402
from polymodal.tokenizers.text import TextTokenizer  # noqa: E402

DIRECTIONS = ("text->text", "text->image", "text->audio", "image+text->text", "audio+text->text", "audio->text")


class FourGridImages(toys.ToyImageTokenizer):
    grids = ((2, 2), (3, 3))


def tiny_run(directions: tuple[str, ...] = DIRECTIONS) -> Run:
    text = TextTokenizer.train(["draw a red circle and say hello, what is this? a square."] * 40, vocab_size=300)
    codec = DocumentTokenizer.from_tokenizers([text, FourGridImages(), toys.ToyAudioTokenizer()])
    torch.manual_seed(0)
    return Run(Transformer(preset("debug", codec.vocab.size)).eval(), codec, directions)


class Served:
    """A uvicorn server on a free local port, in a thread, for the length of a test module."""

    def __init__(self, run: Run, config: ServeConfig, *, ui: bool = False, large: Run | None = None) -> None:
        self.app = create_app(run, config, ui=ui, large=large)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    @property
    def engine(self):  # noqa: ANN201
        return self.app.state.server.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def run() -> Run:
    return tiny_run()


@pytest.fixture(scope="module")
def served(run):  # noqa: ANN201
    s = Served(run, ServeConfig(model_name="tiny", max_completion_tokens=48, max_images=2, max_queue=128))
    yield s
    s.stop()


def raw(served: Served, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict, bytes]:
    """A raw request (status, headers, body), for what the official client never sends."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    connection.request(method, path, body=data, headers={"content-type": "application/json"} if data else {})
    reply = connection.getresponse()
    result = reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    connection.close()
    return result


def png_url(colour=(255, 0, 0), size: int = 8) -> str:
    out = io.BytesIO()
    PILImage.new("RGB", (size, size), colour).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    sf.write(out, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return out.getvalue()


def ask(served: Served, content, **kwargs):  # noqa: ANN001, ANN201
    return served.client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], **kwargs
    )


def image_question(colour=(255, 0, 0)) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": png_url(colour), "detail": "low"}},
            {"type": "text", "text": "what is this?"}]  # fmt: skip


def test_models_lists_and_retrieves_the_served_model(served):
    models = served.client.models.list()
    assert [m.id for m in models.data] == ["tiny"] and models.data[0].object == "model"
    assert served.client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve("gpt-4o")


def test_chat_answers_as_generate_does_with_usage_by_modality(served, run):
    reply = ask(served, image_question(), temperature=0, max_tokens=12)
    document = Document.chat(("user", [Image(PILImage.new("RGB", (8, 8), (255, 0, 0)), detail="low"), "what is this?"]))
    expected = generate(run, document, sampling=SamplingConfig(temperature=0, max_new_tokens=12))[0]
    assert reply.choices[0].message.content == expected.part.text
    assert reply.choices[0].finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    prompt = run.tokenizer.encode(document, add_generation_prompt=True, add_eos=False)
    images = int((prompt.modality == run.tokenizer.vocab.modalities.index("image")).sum())
    usage = reply.usage
    assert usage.prompt_tokens == len(prompt) and usage.prompt_tokens_details.image_tokens == images > 0
    assert usage.completion_tokens == len(expected.ids) and usage.total_tokens == len(prompt) + len(expected.ids)
    assert reply.object == "chat.completion" and reply.model == "tiny" and reply.id.startswith("chatcmpl-")


def test_streamed_deltas_add_up_to_the_answer_with_a_final_usage_chunk(served):
    whole = ask(served, "what is this?", temperature=0, max_tokens=16).choices[0].message.content
    chunks = list(ask(served, "what is this?", temperature=0, max_tokens=16, stream=True,
                      stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_n_choices_and_seeds_reproduce(served):
    a = ask(served, "say", n=3, temperature=1.0, seed=7, max_tokens=10)
    b = ask(served, "say", n=3, temperature=1.0, seed=7, max_tokens=10)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_audio_out_carries_speech_and_its_transcript(served):
    reply = ask(served, "say hello", modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
                temperature=0, max_tokens=8)  # fmt: skip
    message = reply.choices[0].message
    samples, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)))
    assert rate > 0 and len(samples) > 0 and message.audio.transcript == message.content
    assert reply.usage.completion_tokens_details.audio_tokens > 0
    chunks = list(ask(served, "say hello", modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
                      temperature=0, max_tokens=8, stream=True))  # fmt: skip
    pcm = b"".join(base64.b64decode(_field(c.choices[0].delta.audio, "data")) for c in chunks
                   if c.choices and getattr(c.choices[0].delta, "audio", None))  # fmt: skip
    assert len(pcm) > 0 and len(pcm) % 2 == 0


def test_structured_output_always_parses_and_validates(served):
    properties = {"colour": {"type": "string", "enum": ["red", "blue"]}, "big": {"type": "boolean"}}
    schema = {"type": "object", "additionalProperties": False, "required": ["colour", "big"], "properties": properties}
    format_ = {"type": "json_schema", "json_schema": {"name": "shape", "schema": schema, "strict": True}}
    for seed in range(4):  # an untrained model: everything it writes comes from the constraint
        reply = ask(served, "what is this?", response_format=format_, temperature=1.0, seed=seed, max_tokens=48)
        assert reply.choices[0].finish_reason == "stop"
        answer = json.loads(reply.choices[0].message.content)
        assert set(answer) == {"colour", "big"} and answer["colour"] in ("red", "blue")
        assert isinstance(answer["big"], bool)
    anything = ask(served, "say", response_format={"type": "json_object"}, temperature=0, max_tokens=48)
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    else:  # cut by the budget: a prefix of an object
        assert anything.choices[0].message.content.lstrip().startswith("{")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        ask(served, "say", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}})


def test_images_speech_and_transcriptions(served):
    images = served.client.images.generate(
        model="tiny", prompt="draw a red circle", n=2, size="3x3", extra_body={"seed": 1}
    )
    pictures = [PILImage.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in images.data]
    assert len(pictures) == 2 and all(p.size == (3, 3) for p in pictures)
    with pytest.raises(openai.BadRequestError, match="size"):
        served.client.images.generate(model="tiny", prompt="draw", size="1024x1024")
    speech = served.client.audio.speech.create(model="tiny", voice="alloy", input="say hello", response_format="wav")
    samples, rate = sf.read(io.BytesIO(speech.content))
    assert len(samples) > 0 and rate > 0
    text = served.client.audio.transcriptions.create(model="tiny", file=("a.wav", wav_bytes()))
    expected = generate(served.app.state.server.run, Document.of(Audio.from_bytes(wav_bytes())),
                        sampling=SamplingConfig(temperature=0, max_new_tokens=48))[0].part.text  # fmt: skip
    assert text.text == expected.strip()
    verbose = served.client.audio.transcriptions.create(model="tiny", file=("a.wav", wav_bytes()),
                                                        response_format="verbose_json")  # fmt: skip
    assert verbose.duration == pytest.approx(0.5) and verbose.text == text.text


def test_embeddings_decode_from_base64_and_match_floats(served, run):
    base = served.client.embeddings.create(model="tiny", input=["a red circle", "say hello"])  # base64 by default
    floats = served.client.embeddings.create(model="tiny", input=["a red circle", "say hello"], encoding_format="float")
    a = np.array([d.embedding for d in base.data])
    assert a.shape == (2, run.model.config.dim) and np.allclose(a, [d.embedding for d in floats.data], atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5) and not np.allclose(a[0], a[1])
    image = served.client.embeddings.create(
        model="tiny", input=[{"type": "image_url", "image_url": {"url": png_url()}}]
    )
    assert len(image.data[0].embedding) == run.model.config.dim
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        served.client.embeddings.create(model="tiny", input="x", dimensions=3)


def _endpoint_suite(root) -> None:
    """Colour questions about pictures, speech to transcribe, captions to draw, sentences to say, and a
    video question (the served run reads no video, so both runners skip it)."""

    def task(name: str, spec: dict, items: list[dict]) -> None:
        (root / name).mkdir(parents=True)
        (root / name / "task.json").write_text(json.dumps({"name": name, **spec}))
        (root / name / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
    task("colours", {"output": "multiple_choice", "max_new_tokens": 6}, [
        {"id": c, "input": [{"image": f"{c}.png"}, "what is this?"], "options": list(colours), "answer": c}
        for c in colours
    ])  # fmt: skip
    for c, rgb in colours.items():
        PILImage.new("RGB", (8, 8), rgb).save(root / "colours" / f"{c}.png")
    task("heard", {"output": "transcription", "max_new_tokens": 6},
         [{"id": str(k), "input": [{"audio": f"{k}.wav"}], "answer": "a red circle"} for k in range(2)])  # fmt: skip
    for k in range(2):
        (root / "heard" / f"{k}.wav").write_bytes(wav_bytes(0.3 + 0.2 * k))
    task(
        "clips",
        {"output": "multiple_choice"},
        [{"id": "0", "input": [{"video": "clip.mp4", "fps": 2}, "which?"], "options": ["a", "b"], "answer": "a"}],
    )
    write_video(root / "clips" / "clip.mp4", container="mp4", video_codec=pick_codec("mpeg4", "libx264"), seconds=2)
    write_task(root / "draw", "text-to-image", 3)
    write_task(root / "say", "text-to-speech", 2)


def test_eval_through_the_endpoint_gives_the_answers_of_the_local_run(served, run, tmp_path, probes, judge):
    _endpoint_suite(tmp_path / "suite")
    local = evaluate(run, tmp_path / "suite", batch_size=8, probes=probes, judge=judge)
    # unmarked media, so that the server's pictures and clips can be compared byte for byte
    server = served.app.state.server
    marking, server.config = server.config, dataclasses.replace(server.config, watermark=False)
    remote = evaluate_endpoint(served.url + "/v1", "tiny", tmp_path / "suite", concurrency=4, probes=probes,
                               judge=judge)  # fmt: skip
    assert [t.name for t in remote.tasks] == ["colours", "text-to-image", "heard", "text-to-speech"]
    assert len(remote.answers) == 4 * 4 * 3 + 3 + 2 + 2
    assert remote.answers == local.answers  # same greedy answers, rotations, conditions and extracted choices
    assert remote.media == local.media and len(remote.media) == 3 + 2  # the same seeded pictures and clips
    assert [t.to_dict() for t in remote.tasks] == [t.to_dict() for t in local.tasks]
    assert "refused" in remote.skipped["clips"] and "video" in remote.skipped["clips"]
    server.config = marking
    usage = remote.settings["usage"]
    assert usage["requests"] >= len(remote.answers) and usage["completion_tokens"] > 0  # + the clip's text-only asks
    assert remote.settings["endpoint"] == served.url + "/v1" and remote.model == "tiny"
    # frames mode sends the clip as pictures and its sound: this run takes no picture+audio question either
    frames = evaluate_endpoint(served.url + "/v1", "tiny", tmp_path / "suite", tasks=["clips"], video="frames")
    assert not frames.tasks and "refused" in frames.skipped["clips"]
    # the command line, and a server that is not there
    result = CliRunner().invoke(eval_app, ["run", "--endpoint", served.url + "/v1", "--model", "tiny", "--suite",
                                           str(tmp_path / "suite"), "--task", "colours", "--limit", "2",
                                           "--out", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["tasks"][0]["items"] == 2 and written["settings"]["usage"]["requests"] == 2 * 4 * 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(EndpointError, match="cannot reach"):
        evaluate_endpoint(f"http://127.0.0.1:{closed}/v1", "tiny", tmp_path / "suite", tasks=["colours"], max_retries=0)
    result = CliRunner().invoke(eval_app, ["run", "--endpoint", served.url + "/v1", "--suite", "x"])
    assert result.exit_code == 2 and "--model" in result.output


def test_bad_requests_get_the_right_status_and_name_the_problem(served):
    bad_png = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()
    cases = [
        (openai.NotFoundError, lambda: served.client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]), "nope"),
        (openai.BadRequestError, lambda: ask(served, [{"type": "hologram", "hologram": {}}]), "hologram"),
        (openai.BadRequestError, lambda: ask(served, [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64,@@@"}}]), "base64"),
        (openai.UnprocessableEntityError, lambda: ask(served, [{"type": "image_url", "image_url": {
            "url": bad_png}}]), "image_url"),
        (openai.BadRequestError, lambda: ask(served, image_question() * 3), "max_images"),
        (openai.BadRequestError, lambda: ask(served, [{"type": "image_url", "image_url": {
            "url": "https://example.com/a.png"}}]), "not allowed"),
        (openai.BadRequestError, lambda: ask(served, "hi", tools=[{"type": "function", "function": {"name": "f"}}]),
         "tool"),
        (openai.BadRequestError, lambda: ask(served, "hi", max_tokens=10_000), "max_tokens"),
        (openai.BadRequestError, lambda: ask(served, "hi", temperature=7), "temperature"),
    ]  # fmt: skip
    for error, call, named in cases:
        with pytest.raises(error, match=named) as caught:
            call()
        assert caught.value.body["message"]  # OpenAI's error shape: {"error": {"message", "type", ...}}
    status, _, body = raw(served, "POST", "/v1/chat/completions", b"x" * (33 * 2**20))
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert json.loads(raw(served, "GET", "/health")[2])["status"] == "ok"


def test_directions_the_run_never_learned_are_refused(tmp_path):
    s = Served(tiny_run(("text->text",)), ServeConfig(model_name="tiny"))
    try:
        with pytest.raises(openai.BadRequestError, match="text->audio"):
            s.client.audio.speech.create(model="tiny", voice="alloy", input="hello")
        with pytest.raises(openai.BadRequestError, match="image"):
            ask(s, image_question())
        assert ask(s, "hi", max_tokens=3).choices[0].message.content is not None  # what it learned still works
    finally:
        s.stop()


def test_repeated_media_comes_from_the_cache(served):
    first = ask(served, image_question((1, 2, 3)), max_tokens=2)
    second = ask(served, image_question((1, 2, 3)), max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens_details.image_tokens > 0
    tagged = [{"type": "image_url", "image_url": {"url": png_url((9, 9, 9))}, "uuid": "pic-1"}, "what?"]
    tagged[1] = {"type": "text", "text": "what?"}
    ask(served, tagged, max_tokens=2)
    again = ask(served, [{"type": "image_url", "image_url": None, "uuid": "pic-1"}, {"type": "text", "text": "what?"}],
                max_tokens=2)  # no data: the uuid names what the server has seen  # fmt: skip
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    metrics = raw(served, "GET", "/metrics")[2].decode()
    assert 'polymodal_media_cache_total{result="hit",table="span"}' in metrics


def test_concurrent_requests_are_all_answered_in_shared_batches(served):
    before = _batch_rows(served)
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda k: ask(served, "what is this?", temperature=0, max_tokens=6), range(64)))
    assert len({r.choices[0].message.content for r in replies}) == 1  # greedy: batched equals alone
    rows, batches = (a - b for a, b in zip(_batch_rows(served), before, strict=True))
    assert rows == 64 and batches < 64  # some requests shared a forward pass
    assert served.engine.depth == 0


def _field(obj, name: str):  # noqa: ANN001, ANN202 (the client types audio deltas in newer versions)
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _batch_rows(served: Served) -> tuple[float, float]:
    text = raw(served, "GET", "/metrics")[2].decode()
    values = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("polymodal_batch")
    }
    return values["polymodal_batch_rows_sum"], values["polymodal_batch_rows_count"]


def test_a_full_queue_answers_429_and_a_client_that_leaves_frees_its_slot(run):
    s = Served(run, ServeConfig(model_name="tiny", max_queue=1, max_completion_tokens=512, retry_after_s=2))
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "say"}], "stream": True, "max_tokens": 500,
                "temperature": 1.0}  # fmt: skip
        streaming = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        streaming.request(
            "POST", "/v1/chat/completions", body=json.dumps(body), headers={"content-type": "application/json"}
        )
        reply = streaming.getresponse()
        assert json.loads(reply.readline()[6:])["choices"][0]["delta"]["role"] == "assistant"
        status, headers, _ = raw(s, "POST", "/v1/chat/completions", {**body, "stream": False})
        assert status == 429 and headers["retry-after"] == "2"
        streaming.close()  # the streaming client goes away: its slot frees without waiting for 500 tokens
        deadline = time.monotonic() + 10
        while s.engine.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.engine.depth == 0
        assert raw(s, "POST", "/v1/chat/completions", {**body, "stream": False, "max_tokens": 2})[0] == 200
    finally:
        s.stop()


# -- malformed requests: only 4xx, and the server answers normally afterwards ------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _real_media() -> list[bytes]:
    png = io.BytesIO()
    PILImage.new("RGB", (8, 8), (255, 0, 0)).save(png, format="PNG")
    return [png.getvalue(), wav_bytes(0.2)]


_truncated = st.sampled_from(_real_media()).flatmap(lambda data: st.integers(0, len(data) - 1).map(lambda k: data[:k]))
_b64_junk = (st.binary(max_size=64) | _truncated).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=24)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "video_url", "audio_url"]),
                           "image_url": st.fixed_dictionaries({"url": st.sampled_from(["data:image/png;base64,",
                               "data:audio/wav;base64,", "data:text/plain;base64,", "data:;base64,", "ftp://x",
                               "file:///etc/passwd", "http://127.0.0.1/a.png"]).flatmap(
                               lambda p: _b64_junk.map(lambda d: p + d))})}),  # noqa: E131
    st.fixed_dictionaries({"type": st.just("input_audio"),
                           "input_audio": st.fixed_dictionaries({"data": _b64_junk, "format": _json})}),
    st.fixed_dictionaries({"type": st.text(max_size=10), "text": _json}),
    _json,
)  # fmt: skip
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]), "content": st.lists(_part, min_size=1, max_size=3)}
)
_chat = st.one_of(
    st.fixed_dictionaries({"model": st.just("tiny"), "messages": st.lists(_message, min_size=1, max_size=2)},
                          optional={"max_tokens": st.integers(-2, 3), "n": st.integers(-1, 3)}),  # parts are the junk
    st.fixed_dictionaries({"model": st.sampled_from(["tiny", "other"]) | _json, "messages": _json},
                          optional={"max_tokens": _json, "temperature": _json, "n": _json, "stream": _json,
                                    "stop": _json, "modalities": _json, "audio": _json, "response_format": _json}),
)  # fmt: skip
_bodies = st.one_of(
    _chat.map(lambda b: ("/v1/chat/completions", json.dumps(b).encode())),
    st.fixed_dictionaries({"input": _json, "model": st.just("tiny") | _json}, optional={"encoding_format": _json,
                          "dimensions": _json}).map(lambda b: ("/v1/embeddings", json.dumps(b).encode())),
    st.fixed_dictionaries({"prompt": _json, "n": _json, "size": _json}).map(
        lambda b: ("/v1/images/generations", json.dumps(b).encode())),
    st.fixed_dictionaries({"model": st.just("tiny"), "input": _json, "response_format": _json, "speed": _json}).map(
        lambda b: ("/v1/audio/speech", json.dumps(b).encode())),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/audio/transcriptions"]),
              st.binary(max_size=200)),  # not JSON at all
)  # fmt: skip


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=_bodies)
def test_fuzzed_malformed_requests_get_only_4xx(fuzz_server, case):
    path, body = case
    status, _, reply = raw(fuzz_server, "POST", path, body)
    assert status < 500, (path, body[:300], reply[:300])
    if status >= 400:
        error = json.loads(reply)["error"]
        assert error["message"] and error["type"]


@pytest.fixture(scope="module")
def fuzz_server(run):  # noqa: ANN201
    s = Served(run, ServeConfig(model_name="tiny", max_completion_tokens=4, max_n=2, max_request_bytes=2**20))
    yield s
    assert ask(s, "what is this?", max_tokens=2).choices[0].message.content is not None  # still answering
    assert s.engine.depth == 0
    s.stop()


def test_api_keys_are_required_when_configured(run):
    s = Served(run, ServeConfig(model_name="tiny", api_keys=("k1", "k2")))
    try:
        with pytest.raises(openai.AuthenticationError, match="API key"):
            s.client.models.list()  # the fixture client sends "unused"
        keyed = openai.OpenAI(base_url=s.url + "/v1", api_key="k2", max_retries=0)
        assert [m.id for m in keyed.models.list().data] == ["tiny"]
        assert raw(s, "GET", "/health")[0] == 200  # health checks need no key
    finally:
        s.stop()


class _Files(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "http://example.com/a.png")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_remote_and_file_media_follow_the_servers_rules(run, tmp_path):
    PILImage.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "blue.png")
    handler = functools.partial(_Files, directory=str(tmp_path))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{files.server_address[1]}"

    def part(url: str) -> list[dict]:
        return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is this?"}]

    strict = Served(run, ServeConfig(model_name="tiny", allowed_domains=("127.0.0.1",), file_root=str(tmp_path)))
    lenient = Served(run, ServeConfig(model_name="tiny", allowed_domains=("127.0.0.1",), allow_private_addresses=True))
    try:
        with pytest.raises(openai.BadRequestError, match="private or local"):
            ask(strict, part(base + "/blue.png"), max_tokens=2)  # loopback, though allow-listed
        assert ask(lenient, part(base + "/blue.png"), max_tokens=2).usage.prompt_tokens_details.image_tokens > 0
        with pytest.raises(openai.BadRequestError, match="302"):
            ask(lenient, part(base + "/moved.png"), max_tokens=2)  # redirects are not followed
        with pytest.raises(openai.BadRequestError, match="not allowed"):
            ask(lenient, part(f"http://localhost:{files.server_address[1]}/blue.png"), max_tokens=2)
        assert ask(strict, part((tmp_path / "blue.png").as_uri()), max_tokens=2).usage.prompt_tokens > 0
        with pytest.raises(openai.BadRequestError, match="media folder"):
            ask(strict, part("file:///etc/hostname"), max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="file://"):
            ask(lenient, part((tmp_path / "blue.png").as_uri()), max_tokens=2)  # no file_root: no file://
    finally:
        strict.stop()
        lenient.stop()
        files.shutdown()


def test_video_parts_are_read_at_the_requested_frame_rate(tmp_path):
    from media_factory import write_video

    video = write_video(tmp_path / "clip.mp4", container="mp4", video_codec="mpeg4", seconds=3, fps=10, size=16)
    url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
    s = Served(tiny_run((*DIRECTIONS, "video+text->text")), ServeConfig(model_name="tiny", max_video_frames=8))
    try:
        content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "what is this?"}]
        one = ask(s, content, max_tokens=2, extra_body={"media_io_kwargs": {"video": {"fps": 1}}})
        two = ask(s, content, max_tokens=2, extra_body={"media_io_kwargs": {"video": {"fps": 2}}})
        assert two.usage.prompt_tokens_details.image_tokens > one.usage.prompt_tokens_details.image_tokens > 0
        with pytest.raises(openai.BadRequestError, match="num_frames"):
            ask(s, content, max_tokens=2, extra_body={"media_io_kwargs": {"video": {"num_frames": 99}}})
    finally:
        s.stop()


def test_a_broken_tokenizer_takes_down_its_modality_only(run, tmp_path):
    folder = run.save(tmp_path / "run")
    for f in (folder / "tokenizers" / "audio").iterdir():
        f.write_bytes(b"broken")
    s = Served(Run.load(folder), ServeConfig(model_name="tiny"))
    try:
        assert "audio" in json.loads(raw(s, "GET", "/health")[2])["unavailable"]
        with pytest.raises(openai.BadRequestError, match="audio tokenizer failed to load"):
            s.client.audio.speech.create(model="tiny", voice="alloy", input="hello")
        with pytest.raises(openai.BadRequestError, match="audio"):
            s.client.audio.transcriptions.create(model="tiny", file=("a.wav", wav_bytes()))
        assert ask(s, image_question(), max_tokens=3).usage.prompt_tokens_details.image_tokens > 0  # the rest works
    finally:
        s.stop()


def test_the_cost_of_a_request_is_known_before_it_runs(served, run, tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app
    from polymodal.serve.requests import request_cost

    body = {"model": "tiny", "max_tokens": 7, "n": 2, "messages": [{"role": "user", "content": image_question()}]}
    cost = request_cost(run.tokenizer, body)
    served_usage = ask(served, image_question(), max_tokens=1).usage
    assert cost["prompt_tokens"] == served_usage.prompt_tokens and cost["max_total_tokens"] == 2 * (
        cost["prompt_tokens"] + 7
    )
    assert cost["by_modality"]["image"] == served_usage.prompt_tokens_details.image_tokens
    (tmp_path / "request.json").write_text(json.dumps(body))
    result = CliRunner().invoke(app, ["tokenize", "--request", str(tmp_path / "request.json")])
    assert result.exit_code == 0 and "prompt tokens" in result.output  # the built-in vocabulary's count
    (tmp_path / "bad.json").write_text(json.dumps({**body, "messages": [{"role": "user", "content": [{"type": "x"}]}]}))
    result = CliRunner().invoke(app, ["tokenize", "--request", str(tmp_path / "bad.json")])
    assert result.exit_code != 0 and "unknown content part type 'x'" in result.output


def test_cascade_routes_by_inputs_and_by_the_small_runs_confidence(run):
    from polymodal.errors import ConfigError
    from polymodal.serve.router import CascadePolicy, cascade_curve

    large = tiny_run()
    torch.manual_seed(1)
    large.model.load_state_dict(Transformer(preset("debug", large.tokenizer.vocab.size)).state_dict())
    greedy = SamplingConfig(temperature=0, max_new_tokens=8)

    def said(r: Run) -> tuple[str, float]:
        [g] = generate(r, [Document.chat(("user", ["say hello"]))], sampling=greedy)
        return g.part.text, g.mean_logprob

    (small_text, small_logprob), (large_text, _) = said(run), said(large)
    assert small_text != large_text and small_logprob < 0
    cases = ((small_logprob - 0.01, small_text, "small"), (small_logprob + 0.01, large_text, "large"))
    for threshold, expected, who in cases:
        config = ServeConfig(model_name="tiny", cascade_threshold=threshold, cascade_large_for=("audio",))
        s = Served(run, config, large=large)
        try:
            reply = ask(s, "say hello", temperature=0, max_tokens=8)
            assert reply.choices[0].message.content == expected and reply.model_extra["served_by"] == who
            streamed = s.client.chat.completions.with_raw_response.create(
                model="tiny", messages=[{"role": "user", "content": "say hello"}], temperature=0, max_tokens=8,
                stream=True,
            )  # fmt: skip
            assert streamed.headers["x-polymodal-served-by"] == who
            text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
            assert text == expected
            # a modality the policy sends straight to the large run, however sure the small one is
            wav = base64.b64encode(wav_bytes(0.4)).decode()
            heard = ask(s, [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
                            {"type": "text", "text": "what is this?"}], temperature=0, max_tokens=8)  # fmt: skip
            assert heard.model_extra["served_by"] == "large"
            metrics = raw(s, "GET", "/metrics")[2].decode()
            reason = "confident" if who == "small" else "low confidence"
            assert f'polymodal_cascade_requests_total{{reason="{reason}",served_by="{who}"}} 2.0' in metrics
            assert 'polymodal_cascade_requests_total{reason="audio input",served_by="large"} 1.0' in metrics
        finally:
            s.stop()
    # the offline rule: cheap questions stay small, unsure ones pay for the large run too
    rows = [
        {"small_correct": 1, "small_logprob": -0.1, "small_tokens": 10, "large_correct": 1, "large_tokens": 10},
        {"small_correct": 0, "small_logprob": -2.0, "small_tokens": 10, "large_correct": 1, "large_tokens": 10},
    ]
    curve = cascade_curve(rows, small_parameters=1, large_parameters=10, thresholds=[-1.0])
    assert curve["always_small"] == {"accuracy": 0.5, "compute": 20}
    assert curve["always_large"] == {"accuracy": 1.0, "compute": 200}
    assert curve["cascade"][0] | {} == {
        "threshold": -1.0,
        "accuracy": 1.0,
        "escalated": 0.5,
        "compute": 120,
        "compute_vs_large": 0.6,
    }
    with pytest.raises(ConfigError, match="large_for"):
        CascadePolicy(large_for=("smell",))


def test_generated_pictures_and_speech_carry_the_servers_watermark():
    from polymodal import watermark
    from polymodal.tokenizers.presets import default_vocabulary_dir

    codec = DocumentTokenizer.load(default_vocabulary_dir())  # real tokenizers: 64 px pictures, real speech
    torch.manual_seed(0)
    real = Run(
        Transformer(preset("debug", codec.vocab.size)).eval(), codec, ("text->text", "text->image", "text->audio")
    )
    got = {}
    for marked in (True, False):
        s = Served(real, ServeConfig(model_name="tiny", watermark=marked, watermark_key="our key"))
        try:
            drawn = s.client.images.generate(model="tiny", prompt="draw a red circle", extra_body={"seed": 1})
            picture = Image(PILImage.open(io.BytesIO(base64.b64decode(drawn.data[0].b64_json))).convert("RGB"))
            said = s.client.audio.speech.create(model="tiny", voice="alloy", input="say hello", response_format="wav",
                                                extra_body={"seed": 1})  # fmt: skip
            got[marked] = picture, Audio.from_bytes(said.content)
        finally:
            s.stop()
    (picture, clip), (plain_picture, plain_clip) = got[True], got[False]
    # the same seeded drawing, marked with the server's key on its way out
    assert np.array_equal(np.asarray(picture.pixels), np.asarray(watermark.mark_image(plain_picture, "our key").pixels))
    assert watermark.image_score(picture, "our key") > watermark.image_score(plain_picture, "our key")
    assert watermark.audio_score(clip, "our key") > watermark.THRESHOLD > watermark.audio_score(plain_clip, "our key")
    assert watermark.audio_score(clip, "another key") < watermark.THRESHOLD
