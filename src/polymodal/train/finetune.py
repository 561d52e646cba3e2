"""``polymodal finetune RUN --data DATA --out OUT``: fine-tune a run on the user's own data, fully or
with low-rank adapters.

Every source is checked before any work (:func:`~polymodal.data.readers.check_source`: a missing
folder, a bad row, an unknown extension are errors that name the file and line), tokenized once with
the run's own vocabulary into ``OUT/data``, and trained from the run's weights by the ordinary trainer
(``OUT/train``: checkpoints, metrics, ``--resume``) through one stage. The new run (``OUT/run``)
declares the base run's directions plus every direction the data trains; with LoRA its weights are
the adapters merged into the base, and ``adapter.safetensors`` beside them holds the adapters alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from polymodal.content import Document
from polymodal.data.readers import check_source, read_documents
from polymodal.data.tokenized import META_FILENAME, TokenizedDataset, write_tokenized
from polymodal.errors import ConfigError
from polymodal.files import write_text_atomic
from polymodal.run import Run, architecture_of
from polymodal.train.loop import TRAIN_FILENAME, Trainer
from polymodal.train.stages import Recipe, StageConfig

REGRESSION_FILENAME = "regression.json"


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 512
    lr: float | None = None  # default: 1e-3 with LoRA, 1e-4 for every weight
    warmup_steps: int = 10
    lora_rank: int | None = None  # None: full fine-tuning
    lora_alpha: float | None = None  # default: twice the rank
    freeze: tuple[str, ...] = ()  # parameter-name prefixes left untouched (e.g. "embed", "layers.0")
    direction: str | None = None  # caption/transcript folders: e.g. text->image
    chat: bool = False  # caption/transcript folders: as user/assistant chats
    fps: float | None = None  # videos
    seed: int = 0
    # After training: the evaluation suite (a built-in name or a folder) on the directions the data did not
    # touch, base beside tuned, check_limit items per task; a drop over max_drop points is a loud warning.
    check_suite: str | None = None
    check_limit: int = 20
    check_media_size: int | None = None  # e.g. 32 for a quickstart run
    max_drop: float = 5.0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.lora_rank else 1e-4)


def _options(config: FinetuneConfig) -> dict:
    options = {"direction": config.direction, "as_chat": config.chat, "fps": config.fps}
    return {k: v for k, v in options.items() if v not in (None, False)}


def finetune(
    run_dir: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Run:
    """Fine-tune the run in ``run_dir`` on ``sources`` (caption/transcript folders, document JSONL files)
    into ``out``; returns the new run (also saved in ``out/run``)."""
    config = config or FinetuneConfig()
    out, run_dir = Path(out), Path(run_dir)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty: choose a new folder, or pass --resume to continue there")
    base = Run.load(run_dir)
    if architecture_of(base.model) != "early":
        raise ConfigError("fine-tuning reads native (early-fusion) runs; this one is late fusion")
    if not sources:
        raise ConfigError("give the data to fine-tune on: --data FOLDER_OR_JSONL (repeatable)")
    summaries = []
    for source in map(Path, sources):  # every source checked before anything is encoded
        if not source.exists():
            raise ConfigError(f"--data {source}: no such file or folder")
        summaries.append(check_source(source, **_options(config)))
        say(f"data: {summaries[-1]}")
    learned = sorted({d for s in summaries for d in s.directions})
    if not learned:
        raise ConfigError("the data trains no direction (nothing follows an input in any document)")
    data = out / "data"
    if not (data / META_FILENAME).is_file():
        write_tokenized(_documents(sources, config), base.tokenizer, data, max_length=config.seq_len,
                        progress=progress)  # fmt: skip
    if len(TokenizedDataset(data)) == 0:
        raise ConfigError(f"{data}: no document was left to learn from")
    lora = None
    if config.lora_rank:
        lora = {"rank": config.lora_rank, "alpha": config.lora_alpha or 2.0 * config.lora_rank}
    stage = StageConfig(name="finetune", data={str(data): 1.0}, steps=config.steps, batch_size=config.batch_size,
                        seq_len=config.seq_len, lr=config.learning_rate,
                        warmup_steps=min(config.warmup_steps, config.steps - 1),
                        freeze=tuple(config.freeze))  # fmt: skip
    model_config = {k: v for k, v in asdict(base.model.config).items() if k != "vocab_size"}
    recipe = Recipe(
        name="finetune", stages=(stage,), directions=tuple(sorted(set(base.directions) | set(learned))),
        model="debug", model_overrides=model_config, vocab=str(run_dir), init=str(run_dir), seed=config.seed,
        lora=lora, workers=1, checkpoint_every=max(1, config.steps // 4),
    )  # fmt: skip
    say(f"fine-tuning {'LoRA rank ' + str(config.lora_rank) if lora else 'every weight'}: {config.steps} steps "
        f"of {config.batch_size} rows; directions learned: {', '.join(learned)}")  # fmt: skip
    trainer = Trainer(recipe, out / "train", resume=resume and (out / "train" / TRAIN_FILENAME).is_file(),
                      progress=progress, run_dir=out / "run")  # fmt: skip
    tuned = trainer.fit()
    if config.check_suite is not None:
        from polymodal.eval.suites import resolve_suite

        suite = resolve_suite(config.check_suite, limit=config.check_limit, progress=progress)
        report = regression_check(base, tuned, suite, learned, limit=config.check_limit, max_drop=config.max_drop,
                                  say=say, media_size=config.check_media_size)  # fmt: skip
        write_text_atomic(out / REGRESSION_FILENAME, json.dumps(report, indent=2) + "\n")
    return tuned


def _documents(sources: Sequence[str | os.PathLike], config: FinetuneConfig) -> Iterator[Document]:
    for source in sources:
        yield from read_documents(source, **_options(config))


# -- did the fine-tune break what the data did not touch? ---------------------------------------------------


def task_direction(task) -> str:  # noqa: ANN001 (polymodal.eval.tasks.Task)
    """The direction a task asks for: its items' input modalities -> its output's modality."""
    from polymodal.eval.tasks import MediaRef

    inputs = {p.kind for item in task.items for p in item.input if isinstance(p, MediaRef)}
    if task.spec.output == "multiple_choice" or any(item.question for item in task.items):
        inputs.add("text")
    output = {"image": "image", "speech": "audio"}.get(task.spec.output, "text")
    return f"{'+'.join(sorted(inputs or {'text'}))}->{output}"


def headline(result) -> tuple[float, bool]:  # noqa: ANN001 (polymodal.eval.report.TaskResult)
    """A task's main figure in points and whether higher is better: single-pass accuracy with media
    (multiple choice), CIDEr-D x 100, WER, every named attribute right (pictures), recogniser WER (speech)."""
    s = result.scores
    if result.output == "multiple_choice":
        return 100 * s["conditions"]["with_media"]["single_pass"]["value"], True
    if result.output == "text":
        return 100 * s["cider_d"]["value"], True
    if result.output == "transcription":
        return 100 * s["wer"]["value"], False
    if result.output == "image":
        return 100 * s["all_named"]["generated"]["value"], True
    return 100 * s["asr_wer"]["generated"]["value"], False


def regression_check(
    base: Run,
    tuned: Run,
    suite,
    learned: Sequence[str],
    *,
    limit: int = 20,
    max_drop: float = 5.0,  # noqa: ANN001
    say: Callable[[str], None] = print,
    **evaluate_options,  # noqa: ANN003
) -> dict:
    """Score ``base`` and ``tuned`` on the tasks of ``suite`` whose direction the fine-tuning data did not
    train (``learned``), ``limit`` items each; a task that got worse by more than ``max_drop`` points is a
    loud warning. Returns the table (also what ``OUT/regression.json`` holds)."""
    from polymodal.eval.runner import evaluate
    from polymodal.eval.tasks import load_suite

    loaded = load_suite(suite)
    untouched = [t.name for t in loaded.tasks if not Run(base.model, base.tokenizer, tuple(learned)).supports(
        *_parse(task_direction(t)))]  # fmt: skip
    rows, warnings = [], []
    if untouched:
        before = evaluate(base, loaded, limit=limit, tasks=untouched, blind=False, **evaluate_options)
        after = evaluate(tuned, loaded, limit=limit, tasks=untouched, blind=False, **evaluate_options)
        for result in before.tasks:
            old, higher_better = headline(result)
            new, _ = headline(after.task(result.name))
            drop = (old - new) if higher_better else (new - old)
            rows.append({"task": result.name, "direction": task_direction(loaded_task(loaded, result.name)),
                         "base": round(old, 1), "tuned": round(new, 1), "higher_is_better": higher_better,
                         "drop": round(drop, 1)})  # fmt: skip
            if drop > max_drop:
                warnings.append(f"WARNING: {result.name} got worse by {drop:.1f} points ({old:.1f} -> {new:.1f}), "
                                f"more than --max-drop {max_drop}")  # fmt: skip
        skipped = sorted(set(before.skipped) | set(after.skipped))
    else:
        skipped = []
    say(f"regression check on the {len(rows)} tasks the data did not touch ({limit} items each):")
    for row in rows:
        say(f"  {row['task']:<22} {row['direction']:<22} base {row['base']:6.1f}  tuned {row['tuned']:6.1f}  "
            f"{'worse' if row['drop'] > 0 else 'change'} {abs(row['drop']):.1f}")  # fmt: skip
    for line in warnings:
        say(line)
    return {"learned": list(learned), "limit": limit, "max_drop": max_drop, "tasks": rows, "warnings": warnings,
            "skipped": skipped}  # fmt: skip


def _parse(direction: str) -> tuple[set[str], str]:
    inputs, output = direction.split("->")
    return set(inputs.split("+")), output


def loaded_task(suite, name: str):  # noqa: ANN001, ANN201
    return next(t for t in suite.tasks if t.name == name)
