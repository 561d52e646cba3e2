"""Evaluation: tasks as data, the built-in ``shapes`` suite, scoring, the local runner and reports.

- :mod:`~polymodal.eval.tasks`: a task is a folder (``task.json`` + ``items.jsonl`` + media), loaded
  strictly; :func:`list_tasks` lists installed suites.
- :mod:`~polymodal.eval.suites`: :func:`write_shapes_suite`, from the shapes world's test split.
- :mod:`~polymodal.eval.scoring`: choice extraction, circular evaluation, Wilson intervals, CIDEr-D, WER.
- :mod:`~polymodal.eval.prompts`: every rotation and blind condition of an item, as prompts.
- :mod:`~polymodal.eval.runner`: :func:`~polymodal.eval.runner.evaluate` a run (or any
  :class:`~polymodal.eval.runner.Responder`) on a suite. Import it from its module: it loads torch,
  which the suite writer's worker processes never need.
- :mod:`~polymodal.eval.report`: the report, written as JSON, Markdown and the raw answers.
- :mod:`~polymodal.eval.perception`: linear/MLP probes of what each step of the image path (pixels,
  codes, embeddings, blocks) holds about a picture (import it from its module: it loads torch).
- :mod:`~polymodal.eval.cli`: the ``polymodal eval`` commands (the library never imports it).
"""

from polymodal.eval.report import EvalReport, TaskResult
from polymodal.eval.scoring import (
    Proportion,
    cider_d,
    exact_match,
    extract_choice,
    items_for_margin,
    normalise,
    rotations,
    wilson_interval,
    word_errors,
)
from polymodal.eval.suites import ITEMS_PER_TASK, SHAPES_TASKS, list_builtin_suites, resolve_suite, write_shapes_suite
from polymodal.eval.tasks import OUTPUTS, Item, Suite, Task, TaskSpec, eval_home, list_tasks, load_suite, load_task

__all__ = [
    "ITEMS_PER_TASK",
    "OUTPUTS",
    "SHAPES_TASKS",
    "EvalReport",
    "Item",
    "Proportion",
    "Suite",
    "Task",
    "TaskResult",
    "TaskSpec",
    "cider_d",
    "eval_home",
    "exact_match",
    "extract_choice",
    "items_for_margin",
    "list_builtin_suites",
    "list_tasks",
    "load_suite",
    "load_task",
    "normalise",
    "resolve_suite",
    "rotations",
    "wilson_interval",
    "word_errors",
    "write_shapes_suite",
]
