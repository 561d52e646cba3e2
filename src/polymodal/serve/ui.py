"""A chat UI in the browser (Gradio), mounted beside the API: ``polymodal serve RUN --ui`` (at ``/ui``)
or ``polymodal ui RUN``.

The chat takes text, image / audio / video uploads and the microphone; it streams the model's text as it
is written, shows the images it draws and plays the speech it says, and exposes the settings users tune
(output modality, image detail, video frames per second, temperature, max tokens). Every turn goes
through the server's own engine — the same batching, limits and declared directions as the API — so
the UI is one more client of the model, not a second copy of it. Nothing is fetched from the internet:
the page uses system fonts, and analytics are off.

Gradio is the ``ui`` extra: ``pip install 'polymodal[ui]'``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from polymodal.content import Audio, Document, Image, Text, Video
from polymodal.errors import ConfigError, PolymodalError
from polymodal.generation import Finished, PartDone, SamplingConfig, TextDelta
from polymodal.tokenizers.recipes import AUDIO_SUFFIXES, IMAGE_SUFFIXES

OUTPUTS = {"text": "text", "image": "image", "speech": "audio", "text + speech": "text"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v")


def _gradio():  # noqa: ANN202
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError("the web UI needs Gradio: pip install 'polymodal[ui]'") from None
    return gr


def read_upload(path: str, server: Any, *, detail: str, fps: float) -> Image | Audio | Video:
    """An uploaded or recorded file as a content part, under the server's media limits. The microphone
    records WebM/Ogg/WAV; a ``.webm`` upload is read as video when it has frames, else as audio."""
    suffix = Path(path).suffix.lower()
    limits = server.limits
    if suffix in IMAGE_SUFFIXES:
        image = Image.open(path, limits=limits)
        return Image(image.pixels, source=image.source, detail=detail)
    if suffix in AUDIO_SUFFIXES:
        return Audio.open(path, limits=limits)
    if suffix in VIDEO_SUFFIXES:
        try:
            return Video.open(path, fps=fps, max_frames=server.config.max_video_frames, limits=limits)
        except PolymodalError:
            if suffix != ".webm":
                raise
            return Audio.open(path, limits=limits)  # a microphone recording in a WebM container
    raise ConfigError(f"{Path(path).name}: not an image, audio or video file this UI reads ({suffix or 'no suffix'})")


def _file_of(content: Any) -> str | None:
    """The path of a chat message's file (Gradio gives dicts, FileData objects or components)."""
    if isinstance(content, dict):
        if "path" in content:
            return content["path"]
        inner = content.get("file")
        return _file_of(inner) if inner is not None else None
    for name in ("path", "value"):
        value = getattr(content, name, None)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and "path" in value:
            return value["path"]
    return None


def conversation(history: list[dict], server: Any, *, detail: str, fps: float) -> Document:
    """The chat so far as a polymodal chat document. A message's content is a string, a file, or (as
    Gradio hands it back) a list of ``{"type": "text" | "file"}`` items."""
    messages: list[tuple[str, list]] = []
    for message in history:
        role, content = message["role"], message["content"]
        for item in content if isinstance(content, list) else [content]:
            text = item if isinstance(item, str) else item.get("text") if isinstance(item, dict) else None
            if text is not None:
                part: Any = Text(text) if text.strip() else None
            else:
                path = _file_of(item)
                if role != "user" or path is None:  # the model's own drawings and speech are not read back
                    continue
                part = read_upload(path, server, detail=detail, fps=fps)
            if part is None:
                continue
            if messages and messages[-1][0] == role:
                messages[-1][1].append(part)
            else:
                messages.append((role, [part]))
    if not messages or messages[-1][0] != "user":
        raise ConfigError("write a message or attach a file first")
    return Document.chat(*messages)


def build_ui(server: Any) -> Any:
    """The Gradio Blocks of the chat, driving ``server`` (a :class:`polymodal.serve.app.Server`)."""
    gr = _gradio()
    config = server.config
    outbox = Path(tempfile.mkdtemp(prefix="polymodal-ui-"))  # generated media the page shows

    def add_turn(history: list[dict], box: dict | None) -> tuple[list[dict], Any]:
        history = list(history or [])
        for path in (box or {}).get("files") or []:
            history.append({"role": "user", "content": {"path": path if isinstance(path, str) else path["path"]}})
        text = (box or {}).get("text") or ""
        if text.strip():
            history.append({"role": "user", "content": text})
        return history, gr.MultimodalTextbox(value=None, interactive=False)

    async def reply(history: list[dict], output: str, detail: str, fps: float, temperature: float,
                    max_tokens: int) -> AsyncIterator[list[dict]]:  # fmt: skip
        history = list(history or [])
        try:
            document = conversation(history, server, detail=detail, fps=fps)
            kind = OUTPUTS[output]
            server.check_direction(server.inputs_of(document), kind)
            sampling = SamplingConfig(temperature=temperature, max_new_tokens=int(max_tokens),
                                      guidance_scale=1.0 if kind == "text" else 3.0)  # fmt: skip
            text = ""
            async for event in _events(server, document, kind, sampling):
                if isinstance(event, TextDelta):
                    text += event.text
                    if history and history[-1]["role"] == "assistant" and isinstance(history[-1]["content"], str):
                        history[-1] = {"role": "assistant", "content": text}
                    else:
                        history.append({"role": "assistant", "content": text})
                    yield history
                elif isinstance(event, PartDone):
                    part = server.watermarked(event.part)
                    history.append({"role": "assistant", "content": {"path": _save(part, outbox)}})
                    yield history
            if output == "text + speech" and text.strip():
                server.check_direction({"text"}, "audio")
                async for event in _events(server, Document.of(text), "audio", server.speech_sampling()):
                    if isinstance(event, PartDone):
                        part = server.watermarked(event.part)
                        history.append({"role": "assistant", "content": {"path": _save(part, outbox)}})
                        yield history
        except Exception as exc:  # noqa: BLE001 (said in the chat, as the API would answer it)
            message = getattr(exc, "message", None) or str(exc)
            history.append({"role": "assistant", "content": f"⚠️ {message}"})
            yield history

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # fmt: skip
    with gr.Blocks(title=f"polymodal — {config.model_name}", analytics_enabled=False) as blocks:
        gr.Markdown(f"### polymodal · `{config.model_name}`  \nDirections: {', '.join(server.run.directions)}")
        # Models here write plain text: shown as written (no Markdown), so what you read is what it said.
        chat = gr.Chatbot(elem_id="chat", height=520, buttons=["copy"], render_markdown=False)
        box = gr.MultimodalTextbox(
            elem_id="prompt", file_types=["image", "audio", "video"], file_count="multiple",
            sources=["upload", "microphone"], placeholder="Ask, attach a picture, a clip or a recording…",
            show_label=False,
        )  # fmt: skip
        with gr.Accordion("Settings", open=False):
            output = gr.Radio(list(OUTPUTS), value="text", label="Output", elem_id="output")
            detail = gr.Radio(["auto", "low", "high"], value="auto", label="Image detail")
            fps = gr.Slider(0.25, 8.0, value=config.video_fps, step=0.25, label="Video frames per second")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)")
            max_tokens = gr.Slider(1, config.max_completion_tokens, value=min(128, config.max_completion_tokens),
                                   step=1, label="Max tokens")  # fmt: skip
        turn = box.submit(add_turn, [chat, box], [chat, box])
        turn = turn.then(reply, [chat, output, detail, fps, temperature, max_tokens], chat)
        turn.then(lambda: gr.MultimodalTextbox(interactive=True), None, box)
    blocks.polymodal_outbox = outbox
    blocks.polymodal_theme = theme
    return blocks


async def _events(server: Any, document: Document, kind: str, sampling: SamplingConfig) -> AsyncIterator[Any]:
    job = server.submit([document], kind, sampling)
    try:
        while (item := await job.next_event()) is not None:
            if isinstance(item, BaseException):
                raise item
            _, event = item
            yield event
            if isinstance(event, Finished):
                break
    finally:
        server.release(job)


def _save(part: Any, folder: Path) -> str:
    """A generated image (PNG) or clip (WAV) as a file the page can show."""
    if isinstance(part, Image):
        path = folder / f"{uuid.uuid4().hex}.png"
        part.pixels.save(path, format="PNG")
    else:
        path = folder / f"{uuid.uuid4().hex}.wav"
        path.write_bytes(part.to_mono().to_wav_bytes())
    return str(path)


def mount_ui(app: Any, server: Any, path: str = "/ui") -> Any:
    """Mount the chat UI on the API's FastAPI ``app`` at ``path``."""
    gr = _gradio()
    blocks = build_ui(server)
    keys = server.config.api_keys
    # With API keys the page asks for one (any user name, the key as password), as the API would.
    auth = (lambda _user, password: password in keys) if keys else None
    outbox = [str(blocks.polymodal_outbox)]
    return gr.mount_gradio_app(app, blocks, path=path, theme=blocks.polymodal_theme, auth=auth,
                               allowed_paths=outbox, footer_links=[], ssr_mode=False)  # fmt: skip
