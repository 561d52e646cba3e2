"""The ``polymodal`` command line. It parses arguments and calls the library; nothing else.

Commands: ``tokenize`` (show how files become tokens, and what comes back), ``generate`` (run a
model), ``train`` (a recipe), ``quickstart`` (the whole CPU recipe), ``vocab show|describe|build``,
``tokenizer train text|image|audio``, ``data make shapes`` (the built-in corpus), ``data pretokenize``
and ``sample`` (write the sample document).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from polymodal import __version__
from polymodal.errors import ConfigError, PolymodalError
from polymodal.eval.cli import eval_app

app = typer.Typer(
    help="Build, train, evaluate and serve native multimodal transformers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
vocab_app = typer.Typer(help="Inspect a unified vocabulary (vocab.json and its tokenizers).", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train modality tokenizers.", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")
app.add_typer(tokenizer_app, name="tokenizer")

VocabOption = Annotated[
    Path | None,
    typer.Option("--vocab", "-v", help="A folder with vocab.json and tokenizers/ (default: the built-in vocabulary)."),
]


def _fail(message: str | BaseException) -> None:
    # Exceptions may carry notes (e.g. which entry of a document JSON named a bad file).
    notes = "".join(f"\n  {note}" for note in getattr(message, "__notes__", ()))
    typer.secho(f"error: {message}{notes}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load_tokenizer(vocab_dir: Path | None):
    from polymodal.tokenizers.document import DocumentTokenizer
    from polymodal.tokenizers.presets import default_vocabulary_dir

    return DocumentTokenizer.load(vocab_dir or default_vocabulary_dir())


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"polymodal {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """polymodal: one transformer over text, image, audio and video tokens."""


@app.command()
def tokenize(
    files: Annotated[list[Path] | None, typer.Argument(help="Documents (.json) or media/text files.")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Tokenize the built-in sample document.")] = False,
    vocab: VocabOption = None,
    first: Annotated[int, typer.Option(help="How many ids to show per part.", min=0)] = 8,
    fps: Annotated[float, typer.Option(help="Frames per second sampled from videos.", min=0.01)] = 1.0,
    max_frames: Annotated[int | None, typer.Option(help="Refuse videos that would give more frames.", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file.")] = False,
    roundtrip: Annotated[
        Path | None, typer.Option(help="Also decode the tokens and write what comes back (JSON, PNG, WAV, MP4) here.")
    ] = None,
    request: Annotated[
        Path | None, typer.Option(help="An OpenAI chat completions request (JSON): print what it will cost to serve.")
    ] = None,
) -> None:
    """Show how documents become tokens: each part's modality, token count and first ids (or, with
    --request, what a request to `polymodal serve` will cost)."""
    if request is not None:
        _request_cost(request, vocab, as_json)
        return
    from polymodal.content import Document, load_part
    from polymodal.data.sample import sample_document
    from polymodal.tokenizers.report import tokenize_report, write_roundtrip

    if not files and not sample:
        _fail("give one or more FILES, or --sample")
    try:
        tokenizer = _load_tokenizer(vocab)
        documents: list[tuple[str, Document]] = [("sample", sample_document())] if sample else []
        for path in files or []:
            if path.suffix.lower() == ".json":
                documents.append((str(path), Document.load(path)))
            else:
                documents.append((str(path), Document.of(load_part(path, fps=fps, max_frames=max_frames))))
        reports = [tokenize_report(tokenizer, name, doc, first=first) for name, doc in documents]
        written = (
            [
                write_roundtrip(tokenizer, doc, roundtrip / f"{k}_{Path(name).name}")
                for k, (name, doc) in enumerate(documents)
            ]
            if roundtrip
            else []
        )
    except (PolymodalError, FileNotFoundError, IsADirectoryError) as exc:
        _fail(exc)
    for report in reports:
        typer.echo(json.dumps(report.to_dict()) if as_json else report.format())
    for paths in written:
        typer.echo(f"decoded back: {', '.join(map(str, paths))}", err=as_json)


@vocab_app.command("show")
def vocab_show(vocab: VocabOption = None) -> None:
    """Print the vocabulary's size, id ranges, special tokens and tokenizers."""
    try:
        tokenizer = _load_tokenizer(vocab)
    except PolymodalError as exc:
        _fail(exc)
    v = tokenizer.vocab
    typer.echo(f"size {v.size}, time units per second {v.time_units_per_second:g}")
    typer.echo(f"  {'special':<8} [0, {len(v.specials)})")
    for r in v.ranges:
        typer.echo(f"  {r.name:<8} [{r.start}, {r.stop})  {r.size} ids")
    typer.echo("specials: " + " ".join(v.specials))


@vocab_app.command("describe")
def vocab_describe(
    ids: Annotated[list[int], typer.Argument(help="Global token ids.")],
    vocab: VocabOption = None,
) -> None:
    """Say what each id is: a special token, or modality:local id (and its text for text ids)."""
    try:
        tokenizer = _load_tokenizer(vocab)
        v = tokenizer.vocab
        for token_id in ids:
            line = f"{token_id}\t{v.describe(token_id)}"
            if v.has_modality("text") and token_id in v.range("text"):
                text = tokenizer.tokenizer("text").decode_ids([token_id - v.range("text").start])
                line += f"\t{text!r}"
            typer.echo(line)
    except PolymodalError as exc:
        _fail(exc)


@vocab_app.command("build")
def vocab_build(
    tokenizers: Annotated[
        list[Path], typer.Argument(help="Saved tokenizer folders, one per modality, in range order.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write vocab.json and tokenizers/ to.")],
    grid: Annotated[
        list[str] | None,
        typer.Option(help="Image grid sizes that get a grid token, as HxW (default: those the image tokenizer emits)."),
    ] = None,
    time_units_per_second: Annotated[float, typer.Option(help="Temporal position units per second.", min=0.001)] = 25.0,
) -> None:
    """Lay out a unified vocabulary around trained tokenizers and save it with them."""
    from polymodal.tokenizers import load_tokenizer
    from polymodal.tokenizers.document import DocumentTokenizer

    try:
        grids = [tuple(int(n) for n in g.lower().split("x")) for g in grid] if grid else None
        if grids and any(len(g) != 2 or min(g) < 1 for g in grids):
            raise ValueError
    except ValueError:
        _fail(f"--grid takes sizes like 8x8, got {grid}")
    try:
        loaded = [load_tokenizer(d) for d in tokenizers]
        doc_tokenizer = DocumentTokenizer.from_tokenizers(
            loaded, grids=grids, time_units_per_second=time_units_per_second
        )
    except PolymodalError as exc:
        _fail(exc)
    doc_tokenizer.save(out)
    typer.echo(f"{doc_tokenizer.vocab} -> {out}")


train_app = typer.Typer(help="Train a text, image or audio tokenizer.", no_args_is_help=True)
tokenizer_app.add_typer(train_app, name="train")

StepsOption = Annotated[int, typer.Option(help="Optimizer steps.", min=1)]
BatchOption = Annotated[int, typer.Option(help="Examples per step.", min=1)]
LrOption = Annotated[float, typer.Option(help="Peak learning rate (warmup, then cosine).", min=1e-8)]
SeedOption = Annotated[int, typer.Option(help="Seed for data order and initialisation.")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the tokenizer to.")]
InitOption = Annotated[
    Path | None,
    typer.Option(
        help="Continue training this tokenizer on the new data (its config and vocabulary; --preset is ignored)."
    ),
]
AdaptOption = Annotated[
    str,
    typer.Option(
        help="With --init: 'encoder' (every code decodes as before: a model's embeddings keep their "
        "meaning) or 'all' (the decoder trains too)."
    ),
]


@train_app.command("text")
def train_text(
    files: Annotated[list[Path], typer.Argument(help="UTF-8 text files.")],
    out: OutOption,
    vocab_size: Annotated[int, typer.Option(help="Number of text ids (256 bytes + merges).", min=257)] = 4096,
    min_frequency: Annotated[int, typer.Option(help="Merge only pairs seen this often.", min=1)] = 2,
) -> None:
    """Train a byte-level BPE text tokenizer."""
    from polymodal.tokenizers.text import TextTokenizer

    try:
        trained = TextTokenizer.train_from_files(
            files, vocab_size=vocab_size, min_frequency=min_frequency, show_progress=sys.stderr.isatty()
        )
    except (PolymodalError, FileNotFoundError) as exc:
        _fail(exc)
    trained.save(out)
    typer.echo(f"trained a text BPE with {trained.vocab_size} ids on {len(files)} files -> {out}")


def _train_config(steps: int, batch_size: int, lr: float, seed: int):
    from polymodal.tokenizers.training import TrainConfig

    # four held-out evaluations per run; the bar only on a terminal (a log file gets the eval lines)
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        eval_every=max(1, steps // 4),
        progress=sys.stderr.isatty(),
    )


def _train_media(module, tokenizer_cls, sources: list[Path], out: Path, preset: str, train, data_fn,
                 init: Path | None = None, adapt: str = "all") -> None:  # fmt: skip
    """Shared by ``train image`` and ``train audio``: gather data, train (or continue training ``init``),
    save, report."""
    from polymodal.tokenizers.recipes import write_report

    kind = tokenizer_cls.modality
    start, before = None, None
    try:
        if init is not None:
            start = tokenizer_cls.load(init)
            if out.resolve() == init.resolve():
                raise ConfigError(f"--out {out} is the tokenizer being adapted: write the adapted one elsewhere")
        config = start.config if start is not None else module.preset(preset)
        training, held_out, *extra = data_fn(config)  # extra: keyword arguments of train (captions …)
        data = f"{len(sources)} paths" if sources else "shapes-world corpus (built in)"
        if extra and extra[0].get("semantic"):
            data += f", with their captions (semantic objective, weight {extra[0]['semantic']})"
        what = f"{adapt} of the {kind} tokenizer {init}" if start is not None else f"the {preset} {kind} tokenizer"
        typer.echo(f"training {what} on {data} for {train.steps} steps", err=True)
        if start is not None and held_out:
            before = {"path": str(init), "adapt": adapt, "held_out": start.held_out_figures(held_out)}
        tokenizer, result = tokenizer_cls.train(training, config=config, train=train, held_out=held_out,
                                                init=start, adapt=adapt, **(extra[0] if extra else {}))  # fmt: skip
    except (PolymodalError, FileNotFoundError, FloatingPointError) as exc:
        _fail(exc)
    tokenizer.save(out)
    report = write_report(out, kind=kind, preset="(from --init)" if start is not None else preset, data=data,
                          train=train, result=result, init=before)  # fmt: skip
    figures = ", ".join(f"{k} {v:.3g}" for k, v in report["held_out"].items() if k != "step")
    typer.echo(f"{out}: {tokenizer.vocab_size} codes, {report['seconds']} s; held-out {figures}")
    if before is not None:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in before["held_out"].items())
        typer.echo(f"  before (the tokenizer it continued from, same held-out data): {figures}")


@train_app.command("image")
def train_image(
    sources: Annotated[
        list[Path] | None, typer.Argument(help="Image files or folders (default: shapes world).")
    ] = None,
    out: OutOption = Path("tokenizers/image"),
    preset: Annotated[str, typer.Option(help="debug, tiny (64 px -> 8x8) or base (256 px -> 16x16).")] = "tiny",
    steps: StepsOption = 2000,
    batch_size: BatchOption = 16,
    lr: LrOption = 2e-3,
    seed: SeedOption = 0,
    corpus_images: Annotated[
        int, typer.Option(help="Shapes-world scenes to train on (without SOURCES).", min=2)
    ] = 4000,
    init: InitOption = None,
    adapt: AdaptOption = "all",
    semantic: Annotated[
        float,
        typer.Option(
            help="Weight of the semantic objective beside reconstruction: the codes learn which words "
            "of their picture's caption they show (SOURCES: captions folders; else shapes world's "
            "captions). 0: reconstruction alone.",
            min=0.0,
        ),
    ] = 0.0,  # fmt: skip
) -> None:
    """Train the image tokenizer (autoencoder + FSQ) and report held-out PSNR; with --init, continue
    training a tokenizer on new images (same vocabulary)."""
    from polymodal.tokenizers import image
    from polymodal.tokenizers.recipes import captioned_image_data, image_data

    train = _train_config(steps, batch_size, lr, seed)

    def data(config):
        side = config.buckets[-1]
        if semantic > 0:
            images, captions, held = captioned_image_data(sources or [], side=side, seed=seed,
                                                          corpus_images=corpus_images)  # fmt: skip
            return images, held, {"captions": captions, "semantic": semantic}
        return image_data(sources or [], side=side, seed=seed, corpus_images=corpus_images)

    _train_media(image, image.ImageTokenizer, sources or [], out, preset, train, data, init, adapt)


@train_app.command("audio")
def train_audio(
    sources: Annotated[
        list[Path] | None, typer.Argument(help="Audio files or folders (default: shapes world).")
    ] = None,
    out: OutOption = Path("tokenizers/audio"),
    preset: Annotated[str, typer.Option(help="debug, tiny or base (all 25 tokens/s).")] = "tiny",
    steps: StepsOption = 2000,
    batch_size: BatchOption = 8,
    lr: LrOption = 1e-3,
    seed: SeedOption = 0,
    corpus_clips: Annotated[int, typer.Option(help="Shapes-world clips to train on (without SOURCES).", min=2)] = 2000,
    init: InitOption = None,
    adapt: AdaptOption = "all",
) -> None:
    """Train the audio tokenizer (mel encoder + FSQ + STFT decoder) and report held-out mel distance; with
    --init, continue training a tokenizer on new audio (same vocabulary)."""
    from polymodal.tokenizers import audio
    from polymodal.tokenizers.recipes import audio_data

    train = _train_config(steps, batch_size, lr, seed)
    _train_media(
        audio,
        audio.AudioTokenizer,
        sources or [],
        out,
        preset,
        train,
        lambda config: audio_data(sources or [], seed=seed, corpus_clips=corpus_clips),
        init,
        adapt,
    )


def _request_cost(path: Path, vocab: Path | None, as_json: bool) -> None:
    try:
        from polymodal.serve.errors import APIError
        from polymodal.serve.requests import request_cost
    except ImportError as exc:
        _fail(f"--request needs the serve extra: pip install 'polymodal[serve]' ({exc})")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        cost = request_cost(_load_tokenizer(vocab), body)
    except APIError as exc:
        _fail(f"{path}: the server would refuse this request (HTTP {exc.status}): {exc.message}")
    except (PolymodalError, OSError, json.JSONDecodeError) as exc:
        _fail(f"{path}: {exc}")
    if as_json:
        typer.echo(json.dumps(cost))
        return
    parts = ", ".join(f"{name} {count}" for name, count in cost["by_modality"].items())
    typer.echo(f"{path}: {cost['prompt_tokens']} prompt tokens ({parts}); up to {cost['max_completion_tokens']} "
               f"completion tokens x {cost['n']} choice(s): at most {cost['max_total_tokens']} tokens")  # fmt: skip


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (run.json, vocab.json, tokenizers/, weights).")],
    text: Annotated[list[str] | None, typer.Option("--text", help="Text input (repeatable, in order).")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", help="Image input (repeatable).")] = None,
    audio: Annotated[list[Path] | None, typer.Option("--audio", help="Audio input (repeatable).")] = None,
    video: Annotated[list[Path] | None, typer.Option("--video", help="Video input (repeatable).")] = None,
    output: Annotated[str, typer.Option(help="What to generate: text, image or audio.")] = "text",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the outputs (PNG, WAV, TXT).")] = Path("outputs"),
    chat: Annotated[bool, typer.Option(help="Send the inputs as a user turn and generate the reply.")] = True,
    max_new_tokens: Annotated[int, typer.Option(help="Text tokens to generate at most.", min=1)] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy.", min=0.0)] = 0.7,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.", min=0.0, max=1.0)] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k likeliest.", min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    guidance_scale: Annotated[
        float, typer.Option(help="Classifier-free guidance for image/audio (1 = off).", min=0.0)
    ] = 1.0,
    fps: Annotated[float, typer.Option(help="Frames per second sampled from videos.", min=0.01)] = 1.0,
    max_frames: Annotated[int | None, typer.Option(help="Refuse videos that would give more frames.", min=1)] = None,
    quantize: Annotated[
        str | None, typer.Option(help="int8: weight-only int8 linear layers (pip install 'polymodal[quantize]').")
    ] = None,
) -> None:
    """Generate text, an image or audio from any mix of inputs, in the order: text, images, audio, videos."""
    from polymodal.content import Audio, Document, Image, Video
    from polymodal.files import write_bytes_atomic, write_text_atomic
    from polymodal.generation import SamplingConfig
    from polymodal.generation import generate as run_generation
    from polymodal.run import Run

    try:
        loaded = Run.load(run_dir)
        if quantize:
            from polymodal.quantize import quantize_weights

            quantize_weights(loaded.model, quantize)
        parts = [*(text or []), *(Image.open(p) for p in image or []), *(Audio.open(p) for p in audio or [])]
        parts += [Video.open(p, fps=fps, max_frames=max_frames) for p in video or []]
        if not parts:
            _fail("give at least one input: --text, --image, --audio or --video")
        prompt = Document.chat(("user", parts)) if chat else Document.of(*parts)
        sampling = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            guidance_scale=guidance_scale,
        )  # fmt: skip
        result = run_generation(loaded, prompt, output=output, sampling=sampling)[0]
    except (PolymodalError, FileNotFoundError) as exc:
        _fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    if output == "text":
        path = out / "output.txt"
        write_text_atomic(path, result.part.text + "\n")
        typer.echo(result.part.text)
    elif output == "image":
        path = out / "output.png"
        write_bytes_atomic(path, result.part.to_png_bytes())
    else:
        path = out / "output.wav"
        write_bytes_atomic(path, result.part.to_wav_bytes())
    typer.echo(f"{output} -> {path} ({len(result.ids)} tokens, {result.finish_reason})", err=True)


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a training folder: its latest run).")],
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients name (default: the run folder's name).")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' (repeatable).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="A JSON file of ServeConfig fields: limits, batching, allowed domains ...")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Weights: float32, bfloat16 or float16 (bfloat16 on a GPU).")] = "float32",
    compile: Annotated[bool, typer.Option(help="torch.compile the decode step (worth it on a GPU).")] = False,
    quantize: Annotated[
        str | None, typer.Option(help="int8: weight-only int8 linear layers (pip install 'polymodal[quantize]').")
    ] = None,
    ui: Annotated[bool, typer.Option(help="Also serve the chat UI at /ui (pip install 'polymodal[ui]').")] = False,
    large: Annotated[
        Path | None,
        typer.Option(help="Cascade: a larger run that answers chat requests the small one (RUN_DIR) is unsure of."),
    ] = None,
    cascade_threshold: Annotated[
        float | None,
        typer.Option(help="Cascade: the small run's mean token log-probability below which LARGE answers (-0.5)."),
    ] = None,
    watermark: Annotated[
        bool, typer.Option(help="Mark every generated image and clip (polymodal watermark detect).")
    ] = True,
    watermark_key: Annotated[
        str | None, typer.Option(envvar="POLYMODAL_WATERMARK_KEY", help="The marks' secret key (set your own).")
    ] = None,
) -> None:
    """Serve a run behind an OpenAI-compatible API (needs the serve extra: pip install 'polymodal\\[serve]')."""
    _serve(run_dir, host, port, model_name, api_key, config, device, dtype, compile, quantize, ui, large,
           cascade_threshold, watermark, watermark_key)  # fmt: skip


@app.command("ui")
def ui_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a training folder: its latest run).")],
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 7860,
    model_name: Annotated[str | None, typer.Option(help="The name shown (default: the run folder's name).")] = None,
    config: Annotated[Path | None, typer.Option(help="A JSON file of ServeConfig fields (limits ...).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
) -> None:
    """Chat with a run in the browser (text, pictures, audio, video, the microphone; drawings and speech
    back), at http://HOST:PORT/ui, with the OpenAI-compatible API beside it at /v1."""
    _serve(run_dir, host, port, model_name, None, config, device, "float32", False, None, True)


def _serve(run_dir: Path, host: str, port: int, model_name: str | None, api_key: list[str] | None,
           config: Path | None, device: str, dtype: str, compile: bool, quantize: str | None,
           ui: bool, large: Path | None = None, cascade_threshold: float | None = None, watermark: bool = True,
           watermark_key: str | None = None) -> None:  # fmt: skip
    try:
        import uvicorn

        from polymodal.serve import ServeConfig, create_app
    except ImportError as exc:
        _fail(f"serving needs the serve extra: pip install 'polymodal[serve]' ({exc})")
    from polymodal.run import Run

    try:
        fields = json.loads(config.read_text(encoding="utf-8")) if config else {}
        fields.update(host=host, port=port, compile=compile or fields.get("compile", False))
        fields["model_name"] = model_name or fields.get("model_name") or run_dir.resolve().name
        if api_key:
            fields["api_keys"] = list(api_key)
        if cascade_threshold is not None:
            fields["cascade_threshold"] = cascade_threshold
        if not watermark:
            fields["watermark"] = False
        watermark_key = watermark_key or os.environ.get("POLYMODAL_WATERMARK_KEY")
        if watermark_key:
            fields["watermark_key"] = watermark_key
        settings = ServeConfig.from_dict(fields)
        if dtype not in ("float32", "bfloat16", "float16"):
            raise PolymodalError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
        loaded = Run.load(run_dir, device=device)
        import torch

        loaded.model.to(getattr(torch, dtype))
        larger = Run.load(large, device=device) if large is not None else None
        if larger is not None:
            larger.model.to(getattr(torch, dtype))
        if quantize:
            from polymodal.quantize import quantize_weights

            for each in (loaded, larger):
                if each is not None:
                    quantize_weights(each.model, quantize)
    except (PolymodalError, OSError, json.JSONDecodeError, RuntimeError) as exc:
        _fail(exc)
    try:
        application = create_app(loaded, settings, ui=ui, large=larger)
    except PolymodalError as exc:
        _fail(exc)
    typer.echo(f"serving {run_dir} as {settings.model_name!r} on http://{settings.host}:{settings.port}/v1 "
               f"({', '.join(loaded.directions)})", err=True)  # fmt: skip
    if ui:
        typer.echo(f"chat UI: http://{settings.host}:{settings.port}/ui", err=True)
    if larger is not None:
        typer.echo(f"cascade: {large} answers when {run_dir} is less sure than a mean token log-probability of "
                   f"{settings.cascade_threshold}", err=True)  # fmt: skip
    uvicorn.run(application, host=settings.host, port=settings.port, log_level="info")


watermark_app = typer.Typer(help="The invisible marks on generated images and audio.", no_args_is_help=True)
app.add_typer(watermark_app, name="watermark")


@watermark_app.command("detect")
def watermark_detect(
    files: Annotated[list[Path], typer.Argument(help="Images (PNG, JPEG, WebP) or audio (WAV, FLAC, Ogg, MP3).")],
    key: Annotated[str, typer.Option(help="The key the server marked with (its watermark_key).")] = "polymodal",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Say whether each file carries the mark of KEY, with its score (a z-score: marked above 5)."""
    from polymodal import watermark
    from polymodal.content import Audio, Image
    from polymodal.tokenizers.recipes import AUDIO_SUFFIXES, IMAGE_SUFFIXES

    for path in files:
        try:
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                part = Image.open(path)
            elif suffix in AUDIO_SUFFIXES:
                part = Audio.open(path)
            else:
                raise PolymodalError(f"not an image or audio file ({suffix or 'no suffix'})")
            score = watermark.score(part, key)
        except (PolymodalError, OSError) as exc:
            _fail(f"{path}: {exc}")
        present = score > watermark.THRESHOLD
        if as_json:
            typer.echo(json.dumps({"file": str(path), "present": present, "score": round(score, 2)}))
        else:
            typer.echo(
                f"{path}: {'present' if present else 'absent'} (score {score:.1f}, threshold {watermark.THRESHOLD})"
            )


index_app = typer.Typer(help="Cross-modal retrieval: embed a folder, search it by text or media.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    run_dir: Annotated[Path, typer.Argument(help="A run folder: its unified embedding indexes the files.")],
    folder: Annotated[Path, typer.Argument(help="Text (.txt, .md), images, audio and videos, searched recursively.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The index folder to write.")],
    fps: Annotated[float, typer.Option(help="Frames per second sampled from videos.", min=0.01)] = 1.0,
) -> None:
    """Embed every file of FOLDER into an index (vectors.safetensors + items.json)."""
    from polymodal.retrieval import build_index
    from polymodal.run import Run

    try:
        index = build_index(Run.load(run_dir), folder, fps=fps, progress=True)
        index.save(out)
    except (PolymodalError, OSError) as exc:
        _fail(exc)
    counts = {}
    for item in index.items:
        counts[item["modality"]] = counts.get(item["modality"], 0) + 1
    typer.echo(f"{len(index.items)} items ({', '.join(f'{n} {m}' for m, n in counts.items())}) -> {out}")


@index_app.command("search")
def index_search(
    index_dir: Annotated[Path, typer.Argument(help="An index written by `polymodal index build`.")],
    run_dir: Annotated[Path, typer.Option("--run", help="The run that built the index.")],
    text: Annotated[str | None, typer.Option(help="Search by this text.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Search by this image, audio, video or text file.")
    ] = None,
    k: Annotated[int, typer.Option(help="How many results.", min=1)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Rank the index's items, of any modality, by similarity to a text or a file."""
    from polymodal.content import Document, load_part
    from polymodal.retrieval import Index, embed
    from polymodal.run import Run

    if (text is None) == (file is None):
        _fail("give one query: --text or --file")
    try:
        index = Index.load(index_dir)
        query = Document.of(text) if text is not None else Document.of(load_part(file))
        results = index.search(embed(Run.load(run_dir), [query])[0], k)
    except (PolymodalError, OSError) as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps([{"score": s, **item} for s, item in results]))
        return
    for score, item in results:
        typer.echo(f"{score:7.4f}  {item['modality']:<5}  {item['path']}")


data_app = typer.Typer(help="Make and inspect training data.", no_args_is_help=True)
make_app = typer.Typer(help="Generate a built-in corpus.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
data_app.add_typer(make_app, name="make")


@make_app.command("shapes")
def make_shapes_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the shards and manifest.json.")],
    n: Annotated[int, typer.Option("--n", help="Number of samples.", min=1)] = 10_000,
    seed: Annotated[int, typer.Option(help="Corpus seed: the same seed and split give the same samples.")] = 0,
    split: Annotated[str, typer.Option(help="train, valid or test (disjoint random streams).")] = "train",
    kinds: Annotated[
        list[str] | None, typer.Option("--kind", help="Only these kinds (repeatable; default all).")
    ] = None,
    image_size: Annotated[int, typer.Option(help="Side of scene images in pixels.", min=16)] = 64,
    video_size: Annotated[int, typer.Option(help="Side of video frames in pixels.", min=16)] = 64,
    max_objects: Annotated[int, typer.Option(help="Objects per picture: 1 to this (at most 4).", min=1, max=4)] = 4,
    easy_scenes: Annotated[
        bool, typer.Option(help="Pictures with large objects on light, untextured backgrounds (the quickstart's).")
    ] = False,
    samples_per_shard: Annotated[int, typer.Option(help="Samples per .tar shard.", min=1)] = 1000,
    workers: Annotated[int, typer.Option(help="Processes generating samples.", min=1)] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace a corpus already in --out.")] = False,
) -> None:
    """Generate the shapes-world corpus (scenes, speech, sounds, videos, QA, digits) as WebDataset shards."""
    from polymodal.data.shapes import ALL_KINDS, list_kinds, make_shapes

    unknown = sorted(set(kinds or ()) - set(list_kinds()))
    if unknown:
        _fail(f"unknown kinds {unknown}; available: {', '.join(list_kinds())}")
    try:
        shards = make_shapes(
            out, n=n, seed=seed, kinds=tuple(kinds) if kinds else ALL_KINDS, split=split, image_size=image_size,
            video_size=video_size, max_objects=max_objects, easy_scenes=easy_scenes,
            samples_per_shard=samples_per_shard, workers=workers, progress=True, overwrite=overwrite,
        )  # fmt: skip
    except (PolymodalError, FileExistsError) as exc:
        _fail(exc)
    typer.echo(f"{n} samples in {len(shards)} shards -> {out}")


@data_app.command("pretokenize")
def pretokenize_cmd(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Shapes-world corpus folders or .tar shards, document .json files, documents .jsonl files, or "
            "folders of images/audio/videos with captions.jsonl|csv or transcripts.jsonl|csv."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the tokenized arrays.")],
    vocab: VocabOption = None,
    max_length: Annotated[int, typer.Option(help="Longer documents are cut at a media-safe point.", min=8)] = 2048,
    direction: Annotated[
        str | None, typer.Option(help="For caption/transcript folders: e.g. text->image or text->audio.")
    ] = None,
    chat: Annotated[bool, typer.Option(help="For caption/transcript folders: write user/assistant chats.")] = False,
    fps: Annotated[
        float | None,
        typer.Option(
            help="Video frames sampled per second (default: 1, or as a corpus wrote them).", min=0.01
        ),  # fmt: skip
    ] = None,
) -> None:
    """Encode documents once into memory-mapped arrays that training reads (media never re-encoded)."""
    from polymodal.content import Document
    from polymodal.data.readers import check_source, read_documents
    from polymodal.data.shapes import read_shards
    from polymodal.data.tokenized import TokenizedDataset, write_tokenized

    def is_corpus(source: Path) -> bool:
        return source.suffix == ".tar" or (source / "manifest.json").is_file()

    options = {"direction": direction, "as_chat": chat, "fps": fps}
    options = {k: v for k, v in options.items() if v not in (None, False)}

    def documents():
        for source in sources:
            if is_corpus(source):
                shards = [source] if source.is_file() else source
                yield from (sample.document for sample in read_shards(shards, video_fps=fps))
            elif source.suffix.lower() == ".json":
                yield Document.load(source)
            else:
                yield from read_documents(source, **options)

    try:
        tokenizer = _load_tokenizer(vocab)
        for source in sources:  # every source is checked before anything is encoded
            if not source.exists():
                raise FileNotFoundError(f"{source} does not exist")
            if not is_corpus(source) and source.suffix.lower() != ".json":
                typer.echo(str(check_source(source, **options)), err=True)
        write_tokenized(documents(), tokenizer, out, max_length=max_length, progress=sys.stderr.isatty())
    except (PolymodalError, FileNotFoundError, FileExistsError) as exc:
        _fail(exc)
    data = TokenizedDataset(out)
    typer.echo(f"{len(data)} documents, {int(data.lengths().sum())} tokens -> {out}")
    if data.meta.get("cut") or data.meta.get("skipped"):
        typer.echo(f"warning: {data.meta['cut']} of {data.meta['read']} documents were cut to --max-length "
                   f"{max_length}, and {data.meta['skipped']} skipped (nothing to learn left after the cut)",
                   err=True)  # fmt: skip


@app.command("train")
def train_cmd(
    recipe: Annotated[str, typer.Argument(help="A recipe file (.json/.toml) or a built-in recipe name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training folder (checkpoints, metrics, run/).")],
    data: Annotated[
        Path | None, typer.Option(help="For a built-in recipe: the folder of tokenized corpus folders it reads.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: a GPU if there is one).")] = None,
    strategy: Annotated[str, typer.Option(help="Data parallelism under torchrun: ddp or fsdp.")] = "ddp",
    scale: Annotated[float, typer.Option(help="For a built-in recipe: multiply every stage's steps.", min=0.0)] = 1.0,
    vocab: Annotated[
        Path | None, typer.Option(help="For a built-in recipe: the vocabulary its data was tokenized with.")
    ] = None,
) -> None:
    """Train a model through a recipe's stages (launch with torchrun for several processes or GPUs)."""
    from polymodal.train.loop import Trainer
    from polymodal.train.stages import get_recipe, list_recipes, load_recipe

    try:
        if recipe in list_recipes():
            if data is None:
                _fail(f"the built-in recipe {recipe!r} reads tokenized corpus folders: give --data DIR")
            loaded = get_recipe(recipe, data, scale=scale, vocab=str(vocab) if vocab else None)
        else:
            loaded = load_recipe(recipe)
        trainer = Trainer(loaded, out, resume=resume, device=device, strategy=strategy)
        trainer.fit()
    except (PolymodalError, FileNotFoundError) as exc:
        _fail(exc)
    if trainer.distributed.main:
        typer.echo(f"trained {loaded.name} -> {out / 'run'}")


@app.command("quickstart")
def quickstart_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the corpus, training, run and samples.")] = Path(
        "quickstart"
    ),
    resume: Annotated[bool, typer.Option(help="Continue an interrupted quickstart in --out.")] = False,
    scale: Annotated[float, typer.Option(help="Multiply the training steps (0.1 for a smoke test).", min=0.0)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the corpus, the initial weights and the data order.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes for corpus generation and data loading.", min=0)] = 2,
    media_tokenizer_steps: Annotated[
        int, typer.Option(help="Train the image and audio tokenizers here, N steps each (0: the built-in ones).", min=0)
    ] = 0,
    image_size: Annotated[
        int | None, typer.Option(help="Side of the corpus pictures in pixels (default: the recipe's).", min=16)
    ] = None,
) -> None:
    """The whole CPU recipe: corpus -> tokenizers -> align -> pretrain -> instruct -> held-out questions -> samples."""
    from polymodal.train.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(scale=scale, seed=seed, workers=workers, media_tokenizer_steps=media_tokenizer_steps)
    if image_size is not None:
        config = replace(config, image_size=image_size)
    try:
        report = run_quickstart(out, config, resume=resume, progress=sys.stderr.isatty(), say=typer.echo)
    except (PolymodalError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(report.format())
    typer.echo(f"run -> {out / 'run'}   samples -> {out / 'samples'}   report -> {out / 'report.json'}")


@app.command("finetune")
def finetune_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run to start from (a run folder).")],
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="Folders of images/audio/videos with captions or transcripts, or document .jsonl files (repeatable).",
        ),  # fmt: skip
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the data, training and the new run.")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.", min=1)] = 200,
    batch_size: Annotated[int, typer.Option(help="Rows per step.", min=1)] = 8,
    seq_len: Annotated[int, typer.Option(help="Row length; longer documents are cut.", min=16)] = 512,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 1e-3 LoRA, 1e-4 full).")] = None,
    lora_rank: Annotated[
        int | None, typer.Option(help="Train low-rank adapters of this rank (else every weight).", min=1)
    ] = None,  # fmt: skip
    lora_alpha: Annotated[float | None, typer.Option(help="Adapter scale numerator (default 2 x rank).")] = None,
    lora_base: Annotated[
        str, typer.Option(help="The frozen weights under the adapters: full, or int8 (a quarter of the memory).")
    ] = "full",
    freeze: Annotated[
        list[str] | None, typer.Option(help="Parameter-name prefix to leave untouched (repeatable).")
    ] = None,
    direction: Annotated[str | None, typer.Option(help="Caption/transcript folders: e.g. text->image.")] = None,
    chat: Annotated[bool, typer.Option(help="Caption/transcript folders: as user/assistant chats.")] = False,
    learn: Annotated[
        str,
        typer.Option(
            help="Caption/transcript folders: 'target' trains the output alone (the caption of an "
            "image->text folder), 'all' the media too."
        ),
    ] = "target",  # fmt: skip
    fps: Annotated[float | None, typer.Option(help="Video frames sampled per second.", min=0.01)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the adapters and the data order.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted fine-tune in --out.")] = False,
    check: Annotated[
        str | None,
        typer.Option(
            help="After training, score base and tuned runs on this suite's tasks the data did not "
            "touch (shapes, or a folder); 'none' to skip."
        ),  # fmt: skip
    ] = "shapes",
    check_limit: Annotated[int, typer.Option(help="Items per task of the check.", min=1)] = 20,
    check_media_size: Annotated[
        int | None, typer.Option(help="Resize the check's pictures (32 for a quickstart run).", min=8)
    ] = None,
    max_drop: Annotated[float, typer.Option(help="Warn when a task gets worse by more points than this.")] = 5.0,
) -> None:
    """Fine-tune a run on your own data, every weight or LoRA; the new run declares what the data adds, and
    the tasks the data did not touch are scored before and after."""
    from polymodal.train.finetune import FinetuneConfig, finetune

    progress = sys.stderr.isatty()
    try:
        config = FinetuneConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, lora_rank=lora_rank,
                                lora_alpha=lora_alpha, lora_base=lora_base, freeze=tuple(freeze or ()),
                                direction=direction, chat=chat, learn=learn, fps=fps, seed=seed)  # fmt: skip
        run = finetune(run_dir, data, out, config, resume=resume, progress=progress, say=typer.echo)
        if check not in (None, "none"):
            from polymodal.eval.regression import check_finetune
            from polymodal.eval.suites import resolve_suite

            suite = resolve_suite(check, limit=check_limit, progress=True)
            check_finetune(out, suite, limit=check_limit, max_drop=max_drop, media_size=check_media_size,
                           say=typer.echo)  # fmt: skip
    except (PolymodalError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"fine-tuned run -> {out / 'run'} ({', '.join(run.directions)})")


experiment_app = typer.Typer(help="Train several designs on the same data and compare them.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("fusion")
def experiment_fusion_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the data, the arms and the report.")] = Path(
        "fusion"
    ),
    preset: Annotated[str, typer.Option(help="The backbone preset of every arm.")] = "tiny",
    arms: Annotated[str, typer.Option(help="Comma-separated arms: early, late, pipeline.")] = "early,late,pipeline",
    scale: Annotated[float, typer.Option(help="Multiply every arm's steps (0.1 for a smoke test).", min=0.0)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the corpus, the initial weights and the data order.")] = 0,
    questions: Annotated[int, typer.Option(help="Held-out questions per input kind.", min=1)] = 100,
    workers: Annotated[int, typer.Option(help="Processes for corpus generation.", min=1)] = 2,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted experiment in --out.")] = False,
) -> None:
    """Native (early) fusion vs late fusion vs a pipeline: same corpus, same backbone, same steps; one report."""
    from polymodal.experiments.fusion import FusionConfig, report_markdown, run_fusion

    try:
        config = FusionConfig(arms=tuple(a.strip() for a in arms.split(",") if a.strip()), preset=preset, scale=scale,
                              seed=seed, test_questions=questions, workers=workers)  # fmt: skip
        results = run_fusion(out, config, resume=resume, progress=sys.stderr.isatty(), say=typer.echo)
    except (PolymodalError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(report_markdown(results, config))
    typer.echo(f"report -> {out / 'report.md'}")


@app.command("sample")
def sample_cmd(directory: Annotated[Path, typer.Argument(help="Folder to write the sample into.")]) -> None:
    """Write the built-in sample document (sample.json, a PNG and a WAV) to a folder."""
    from polymodal.data.sample import write_sample

    typer.echo(str(write_sample(directory)))


if __name__ == "__main__":  # pragma: no cover
    app()
