"""``polymodal eval``: run a suite on a model, list installed tasks, write the built-in suite.

A typer sub-app (``eval_app``) that the main command line registers under ``eval``. It parses
arguments and calls the library; the library never imports it.

Commands::

    polymodal eval run RUN_DIR --suite shapes [--limit N] [--out DIR]
    polymodal eval run --endpoint URL --model NAME --suite shapes [--api-key KEY] [--out DIR]
    polymodal eval tasks
    polymodal eval make-suite shapes --out DIR [--items N]
    polymodal eval perception RUN_DIR [--examples N] [--probe linear|mlp|conv] [--attribute shape] [--json FILE]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from polymodal.errors import PolymodalError

eval_app = typer.Typer(
    help="Evaluate runs on task suites (circular multiple choice, blind baselines, CIDEr-D, WER).",
    no_args_is_help=True,
)


def _fail(error: BaseException) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@eval_app.command("run")
def run_cmd(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run folder (run.json, vocab.json, tokenizers/, weights); or --endpoint.")
    ] = None,
    suite: Annotated[str, typer.Option(help="A built-in suite name (shapes) or a suite/task folder.")] = "shapes",
    limit: Annotated[int | None, typer.Option(help="Ask only the first N items of each task.", min=1)] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for the report (default RUN_DIR/eval, or eval/MODEL for --endpoint)."),
    ] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Only this task (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.", min=1)] = 16,
    blind: Annotated[bool, typer.Option(help="Also ask multiple choice without media and with swapped media.")] = True,
    workers: Annotated[int, typer.Option(help="Processes that write a built-in suite if it is missing.", min=1)] = 2,
    choice: Annotated[
        str,
        typer.Option(
            help="Multiple choice: 'generate' (answer, then read the letter) or 'likelihood' "
            "(the option the model finds likeliest, as lm-evaluation-harness)."
        ),  # fmt: skip
    ] = "generate",
    video_fps: Annotated[
        float | None, typer.Option(help="Sample videos at this rate (default: as each item says).", min=0.01)
    ] = None,
    media_size: Annotated[
        int | None,
        typer.Option(help="Resize pictures and video frames to this many pixels (e.g. a quickstart run's 32).", min=8),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="Ask an OpenAI-compatible server instead of a run folder, e.g. http://127.0.0.1:8000/v1."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="With --endpoint: the model name the server serves.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="OPENAI_API_KEY", help="With --endpoint: its API key (or $OPENAI_API_KEY).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="With --endpoint: requests in flight at once.", min=1)] = 8,
    video_as: Annotated[
        str,
        typer.Option(help="With --endpoint: send videos as a 'url' part (MP4) or as their 'frames' and sound."),
    ] = "url",
) -> None:
    """Evaluate a run (or a model behind an OpenAI-compatible endpoint) on a suite and write report.json,
    report.md and answers.jsonl."""
    from polymodal.eval.suites import resolve_suite

    if (run_dir is None) == (endpoint is None):
        _fail(PolymodalError("give a run folder or --endpoint URL (with --model), not both or neither"))
    if endpoint is not None and not model:
        _fail(PolymodalError("--endpoint needs --model NAME (the name the server lists at /v1/models)"))
    progress = True  # a bar on a terminal, a line every tenth in a log (polymodal.progress)
    started = time.perf_counter()
    try:
        folder = resolve_suite(suite, limit=limit, workers=workers, progress=progress)
        if endpoint is not None:
            from polymodal.eval.endpoint import evaluate_endpoint

            report = evaluate_endpoint(endpoint, model, folder, api_key=api_key, concurrency=concurrency,
                                       video=video_as, limit=limit, tasks=task, blind=blind, progress=progress,
                                       video_fps=video_fps, media_size=media_size)  # fmt: skip
            default_out = Path("eval") / model.replace("/", "_")
        else:
            from polymodal.eval.runner import evaluate

            report = evaluate(run_dir, folder, limit=limit, tasks=task, batch_size=batch_size, blind=blind,
                              progress=progress, choice=choice,
                              video_fps=video_fps, media_size=media_size)  # fmt: skip
            default_out = Path(run_dir) / "eval"
        written = report.write(out or default_out)
    except (PolymodalError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(report.to_markdown())
    typer.echo(f"report -> {written}  ({time.perf_counter() - started:.0f} s)")


@eval_app.command("tasks")
def tasks_cmd(
    home: Annotated[
        Path | None, typer.Option(help="Where suites are installed (default $POLYMODAL_EVAL_HOME).")
    ] = None,
) -> None:
    """List the installed tasks, and the built-in suites that can be written."""
    from polymodal.eval.suites import list_builtin_suites
    from polymodal.eval.tasks import eval_home, list_tasks

    try:
        found = list_tasks(home)
    except PolymodalError as exc:
        _fail(exc)
    typer.echo(f"installed under {home or eval_home()}:")
    if not found:
        typer.echo("  none")
    for info in found:
        typer.echo(f"  {info.suite}/{info.name:<22} {info.output:<16} {info.metric:<18} {info.items:>5} items")
    typer.echo(f"built-in suites: {', '.join(list_builtin_suites())} (written on first use by `polymodal eval run`)")


@eval_app.command("make-suite")
def make_suite_cmd(
    name: Annotated[str, typer.Argument(help="The built-in suite to write: shapes.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the suite into.")],
    items: Annotated[int | None, typer.Option(help="Items per task (default: enough for ±5 points).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the test-split samples.", min=0)] = 0,
    workers: Annotated[int, typer.Option(help="Processes generating items.", min=1)] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace a suite already in --out.")] = False,
) -> None:
    """Write a built-in suite as task folders (task.json, items.jsonl, media/)."""
    from polymodal.eval.suites import ITEMS_PER_TASK, list_builtin_suites, write_shapes_suite

    if name not in list_builtin_suites():
        _fail(PolymodalError(f"unknown built-in suite {name!r}; available: {', '.join(list_builtin_suites())}"))
    try:
        folder = write_shapes_suite(out, items_per_task=items or ITEMS_PER_TASK, seed=seed, workers=workers,
                                    progress=True, overwrite=overwrite)  # fmt: skip
    except PolymodalError as exc:
        _fail(exc)
    typer.echo(f"{name} suite -> {folder}")


@eval_app.command("perception")
def perception_cmd(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run folder: its tokenizer's codes and its model's hidden states.")
    ] = None,
    vocab: Annotated[
        Path | None,
        typer.Option(
            help="Probe only this vocabulary's image tokenizer (no model); without RUN_DIR: the built-in one."
        ),
    ] = None,
    examples: Annotated[int, typer.Option(help="Training pictures per attribute.", min=20)] = 1000,
    held_out: Annotated[int, typer.Option(help="Scored pictures per attribute.", min=20)] = 500,
    size: Annotated[int, typer.Option(help="The pictures' side in pixels.", min=8)] = 32,
    probe: Annotated[
        str,
        typer.Option(
            help="linear (ridge regression), mlp (one hidden layer) or conv (a small convolutional reader over "
            "the code grid, which reads a shape wherever it is; give it --examples 4000)."
        ),
    ] = "linear",
    attribute: Annotated[
        list[str] | None,
        typer.Option(help="Probe only this attribute: colour, shape, position or count (repeatable; default all)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the pictures and the probes.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the table and settings here.")] = None,
) -> None:
    """Where perception is lost: how well a probe reads colour, shape, position and count from the pixels,
    the tokenizer's codes, the model's embeddings and each block's hidden states, and how much each block
    attends to the picture where it answers (docs/perception.md)."""
    from polymodal.eval.perception import PerceptionSettings, probe_perception
    from polymodal.files import write_text_atomic
    from polymodal.run import Run
    from polymodal.tokenizers.document import DocumentTokenizer
    from polymodal.tokenizers.presets import default_vocabulary_dir

    if run_dir is not None and vocab is not None:
        _fail(PolymodalError("give a run folder or --vocab DIR, not both (a run holds its own vocabulary)"))
    try:
        chosen = {"attributes": tuple(attribute)} if attribute else {}
        settings = PerceptionSettings(examples=examples, held_out=held_out, size=size, seed=seed, probe=probe,
                                      **chosen)  # fmt: skip
        if run_dir is not None:
            run = Run.load(run_dir)
            tokenizer, model = run.tokenizer, run.model.eval()
        else:
            tokenizer, model = DocumentTokenizer.load(vocab or default_vocabulary_dir()), None
        start = time.perf_counter()
        report = probe_perception(tokenizer, model, settings, say=lambda line: typer.echo(line, err=True))
    except PolymodalError as exc:
        _fail(exc)
    typer.echo(report.format())
    typer.echo(f"({settings.probe} probes, {examples} pictures each, {held_out} held out, {report.grid[0]}x"
               f"{report.grid[1]} codes per picture; {time.perf_counter() - start:.0f} s)")  # fmt: skip
    if json_out is not None:
        write_text_atomic(json_out, report.to_json())
