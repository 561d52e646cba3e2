"""Did a fine-tune break what its data did not touch? The base run beside the tuned one on the tasks of
a suite whose direction the data did not train.

:func:`check_finetune` reads ``OUT/finetune.json`` (written by :func:`polymodal.train.finetune.finetune`:
the base run and the directions the data trained), scores both runs on the untouched tasks the base
declares (``limit`` items each), prints the table with a ``WARNING:`` line for every task that got
worse by more than ``max_drop`` points, and writes ``OUT/regression.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from polymodal.errors import ConfigError
from polymodal.eval.report import TaskResult
from polymodal.eval.tasks import MediaRef, Suite, Task, load_suite
from polymodal.files import write_text_atomic
from polymodal.run import Run, covers, parse_direction

REGRESSION_FILENAME = "regression.json"


def task_direction(task: Task) -> str:
    """The direction a task asks for: its items' input modalities -> its output's modality."""
    inputs = {p.kind for item in task.items for p in item.input if isinstance(p, MediaRef)}
    if task.spec.output == "multiple_choice" or any(item.question for item in task.items):
        inputs.add("text")
    output = {"image": "image", "speech": "audio"}.get(task.spec.output, "text")
    return f"{'+'.join(sorted(inputs or {'text'}))}->{output}"


def headline(result: TaskResult) -> tuple[float, bool]:
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
    suite: Suite | str | os.PathLike,
    learned: Sequence[str],
    *,
    limit: int = 20,
    max_drop: float = 5.0,
    say: Callable[[str], None] = print,
    **evaluate_options,  # noqa: ANN003 (as polymodal.eval.runner.evaluate: media_size, video_fps, probes, judge)
) -> dict:
    """Score ``base`` and ``tuned`` on the tasks of ``suite`` whose direction ``learned`` does not cover;
    returns the table (what ``OUT/regression.json`` holds)."""
    from polymodal.eval.runner import evaluate

    loaded = suite if isinstance(suite, Suite) else load_suite(suite)
    directions = {t.name: task_direction(t) for t in loaded.tasks}
    untouched = [name for name, d in directions.items() if not covers(learned, *parse_direction(d))]
    rows, warnings, skipped = [], [], []
    if untouched:
        before = evaluate(base, loaded, limit=limit, tasks=untouched, blind=False, **evaluate_options)
        after = evaluate(tuned, loaded, limit=limit, tasks=untouched, blind=False, **evaluate_options)
        skipped = sorted(set(before.skipped) | set(after.skipped))
        for result in before.tasks:
            old, higher_better = headline(result)
            new, _ = headline(after.task(result.name))
            drop = (old - new) if higher_better else (new - old)
            rows.append({"task": result.name, "direction": directions[result.name], "base": round(old, 1),
                         "tuned": round(new, 1), "higher_is_better": higher_better,
                         "drop": round(drop, 1)})  # fmt: skip
            if drop > max_drop:
                warnings.append(f"WARNING: {result.name} got worse by {drop:.1f} points ({old:.1f} -> {new:.1f}), "
                                f"more than --max-drop {max_drop}")  # fmt: skip
    say(f"regression check on the {len(rows)} tasks the data did not touch ({limit} items each):")
    for row in rows:
        say(f"  {row['task']:<22} {row['direction']:<22} base {row['base']:6.1f}  tuned {row['tuned']:6.1f}  "
            f"{'worse' if row['drop'] > 0 else 'change'} {abs(row['drop']):.1f}")  # fmt: skip
    for line in warnings:
        say(line)
    return {"learned": list(learned), "limit": limit, "max_drop": max_drop, "tasks": rows, "warnings": warnings,
            "skipped": skipped}  # fmt: skip


def check_finetune(
    out: str | os.PathLike, suite: Suite | str | os.PathLike, *, say: Callable[[str], None] = print, **options
) -> dict:  # noqa: ANN003 (as regression_check)
    """:func:`regression_check` of the fine-tune in ``out`` (its ``finetune.json``); writes ``regression.json``."""
    from polymodal.train.finetune import FINETUNE_FILENAME

    out = Path(out)
    try:
        record = json.loads((out / FINETUNE_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{out}: not a finished fine-tune ({exc})") from None
    report = regression_check(Run.load(record["base"]), Run.load(record["run"]), suite, record["learned"], say=say,
                              **options)  # fmt: skip
    write_text_atomic(out / REGRESSION_FILENAME, json.dumps(report, indent=2) + "\n")
    return report
