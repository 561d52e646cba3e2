"""Evaluation tasks as data: a folder with ``task.json`` (the spec) and ``items.jsonl`` (the items).

A task folder::

    TASK/
      task.json      {"name": "perception-colour", "output": "multiple_choice", "metric": "circular_accuracy",
                      "prompt": "Question: {question}\\nOptions:\\n{options}\\nAnswer with ...", "chat": true,
                      "max_new_tokens": 16, "description": "..."}
      items.jsonl    one item per line:
                     {"id": "q1", "input": [{"image": "media/q1.png"}, "What colour is the circle?"],
                      "options": ["red", "blue", "green", "yellow"], "answer": "red",
                      "ability": "perception/colour", "category": "perception", "meta": {...}}
      media/         the files the items name, by paths relative to TASK/

An item's ``input`` is a list of parts: text strings, ``{"image": PATH}``, ``{"audio": PATH}`` and
``{"video": PATH, "fps": 10}`` (``fps``: frames sampled per second, default 1). Multiple-choice items
have ``options`` and an ``answer`` that is one of them; text and transcription items have ``answer``
or ``answers`` (several references). ``ability`` defaults to the task's name and ``category`` to the
ability's first path component; ``meta`` is free-form (ground truth, source keys) and never scored.

The prompt template is rendered with ``{question}`` (the item's text parts, joined by spaces) and, for
multiple choice, ``{options}`` (``A. red`` lines); the prompt is the item's media parts in order, then
that text (left out when it is empty). ``chat`` sends it as a user turn (else a plain document that
the model continues, as captioning and transcription are trained).

A *suite* is a folder of task folders (optionally with a ``suite.json`` describing how it was made).
Loading is strict: an unknown key, a missing media file, a bad output type or a duplicate id is a
:class:`~polymodal.errors.ConfigError` naming the file, the line and the key. Installed suites live
under :func:`eval_home` (``$POLYMODAL_EVAL_HOME``, default ``~/.cache/polymodal/eval``).

This module knows nothing about models, generation or scoring.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polymodal.content import Audio, Image, Part, Text, Video, check_media_file
from polymodal.errors import ConfigError, MediaError

TASK_FILENAME = "task.json"
ITEMS_FILENAME = "items.jsonl"
SUITE_FILENAME = "suite.json"

#: Output kind -> the metrics a task of that kind may name (the first is the default).
METRICS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("circular_accuracy",),
    "text": ("cider_d", "exact_match"),
    "transcription": ("wer",),
    "image": ("probe_accuracy",),
    "speech": ("asr_wer",),
}
OUTPUTS: tuple[str, ...] = tuple(METRICS)

MULTIPLE_CHOICE_PROMPT = (
    "Question: {question}\nOptions:\n{options}\nAnswer with the option's letter from the given choices directly."
)
_DEFAULT_PROMPTS = {"multiple_choice": MULTIPLE_CHOICE_PROMPT}
_DEFAULT_MAX_NEW_TOKENS = {"multiple_choice": 16, "text": 48, "transcription": 64}
_SPEC_KEYS = {"name", "description", "output", "metric", "prompt", "chat", "max_new_tokens"}
_ITEM_KEYS = {"id", "input", "options", "answer", "answers", "ability", "category", "meta"}
_MEDIA_KEYS = {"image": {"image"}, "audio": {"audio"}, "video": {"video", "fps"}}


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What a task asks and how it is scored (``task.json``)."""

    name: str
    output: str
    metric: str
    prompt: str
    chat: bool = True
    max_new_tokens: int = 16
    description: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "output": self.output,
            "metric": self.metric,
            "prompt": self.prompt,
            "chat": self.chat,
            "max_new_tokens": self.max_new_tokens,
        }


@dataclass(frozen=True)
class MediaRef:
    """A media input by path (absolute once loaded); opened only when a prompt is built."""

    kind: str  # "image", "audio" or "video"
    path: Path
    fps: float = 1.0

    def open(self) -> Part:
        if self.kind == "image":
            return Image.open(self.path)
        if self.kind == "audio":
            return Audio.open(self.path)
        return Video.open(self.path, fps=self.fps)


InputPart = Text | MediaRef


@dataclass(frozen=True, kw_only=True)
class Item:
    """One question or prompt of a task, with its reference answer(s)."""

    id: str
    input: tuple[InputPart, ...]
    options: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()  # for multiple choice: exactly the right option's text
    ability: str
    category: str
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def answer_index(self) -> int:
        """The right option's position (multiple choice only)."""
        return self.options.index(self.answers[0])

    @property
    def question(self) -> str:
        """The item's text parts joined by spaces: the template's ``{question}``."""
        return " ".join(p.text for p in self.input if isinstance(p, Text))

    @property
    def media(self) -> tuple[MediaRef, ...]:
        return tuple(p for p in self.input if isinstance(p, MediaRef))


@dataclass(frozen=True)
class Task:
    """A loaded task: its spec, its items in file order and its folder."""

    spec: TaskSpec
    items: tuple[Item, ...]
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def limited(self, limit: int | None) -> Task:
        """The task with its first ``limit`` items only (all of them for None)."""
        return self if limit is None else Task(self.spec, self.items[:limit], self.path)


@dataclass(frozen=True)
class Suite:
    """Task folders under one folder, and ``suite.json`` when the folder has one."""

    name: str
    path: Path
    tasks: tuple[Task, ...]
    info: dict = field(default_factory=dict, compare=False)


# -- loading -------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


def _template_fields(template: str, where: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: prompt: not a valid template ({exc})") from exc


def parse_spec(obj: Any, where: str) -> TaskSpec:
    """A :class:`TaskSpec` from ``task.json``'s object; ``where`` names the file in errors."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_SPEC_KEYS))})")
    for key in ("name", "output"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise ConfigError(f"{where}: {key}: a non-empty string is required")
    output = obj["output"]
    if output not in METRICS:
        raise ConfigError(f"{where}: output: {output!r} is not one of {', '.join(OUTPUTS)}")
    metric = obj.get("metric", METRICS[output][0])
    if metric not in METRICS[output]:
        raise ConfigError(
            f"{where}: metric: {metric!r} does not score {output} outputs (use {', '.join(METRICS[output])})"
        )
    prompt = obj.get("prompt", _DEFAULT_PROMPTS.get(output, "{question}"))
    if not isinstance(prompt, str):
        raise ConfigError(f"{where}: prompt: expected a string, got {prompt!r}")
    fields = _template_fields(prompt, where)
    allowed = {"question", "options"} if output == "multiple_choice" else {"question"}
    if fields - allowed:
        raise ConfigError(
            f"{where}: prompt: unknown placeholder {{{sorted(fields - allowed)[0]}}} (allowed: {allowed})"
        )
    if output == "multiple_choice" and "options" not in fields:
        raise ConfigError(f"{where}: prompt: a multiple-choice prompt must show the {{options}}")
    chat = obj.get("chat", True)
    if not isinstance(chat, bool):
        raise ConfigError(f"{where}: chat: expected true or false, got {chat!r}")
    max_new = obj.get("max_new_tokens", _DEFAULT_MAX_NEW_TOKENS.get(output, 16))
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
        raise ConfigError(f"{where}: max_new_tokens: expected an int >= 1, got {max_new!r}")
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description: expected a string")
    return TaskSpec(name=obj["name"], output=output, metric=metric, prompt=prompt, chat=chat,
                    max_new_tokens=max_new, description=description)  # fmt: skip


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key}: expected a non-empty list of strings, got {value!r}")
    return tuple(value)


def _input_part(obj: Any, folder: Path, where: str) -> InputPart:
    if isinstance(obj, str):
        return Text(obj)
    kinds = [k for k in _MEDIA_KEYS if isinstance(obj, dict) and k in obj]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: expected a string or an object with one of 'image', 'audio', 'video'")
    kind = kinds[0]
    unknown = sorted(set(obj) - _MEDIA_KEYS[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} in a {kind} part")
    relative = obj[kind]
    if not isinstance(relative, str) or not relative:
        raise ConfigError(f"{where}.{kind}: expected a path relative to the task folder, got {relative!r}")
    try:
        path = check_media_file(folder / relative, kind)
    except (ConfigError, MediaError) as exc:
        raise ConfigError(f"{where}.{kind}: {exc}") from None
    fps = obj.get("fps", 1.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ConfigError(f"{where}.fps: expected a number > 0, got {fps!r}")
    return MediaRef(kind, path.absolute(), float(fps))


def parse_item(obj: Any, spec: TaskSpec, folder: Path, where: str) -> Item:
    """One :class:`Item` from a line of ``items.jsonl``; ``where`` is ``"items.jsonl:LINE"``."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _ITEM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_ITEM_KEYS))})")
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        raise ConfigError(f"{where}: id: a non-empty string is required")
    raw_input = obj.get("input")
    if not isinstance(raw_input, list) or not raw_input:
        raise ConfigError(f"{where}: input: expected a non-empty list of parts")
    parts = tuple(_input_part(p, folder, f"{where}: input[{i}]") for i, p in enumerate(raw_input))
    if "answer" in obj and "answers" in obj:
        raise ConfigError(f"{where}: give either 'answer' or 'answers', not both")
    if "answer" in obj:
        answers = _strings([obj["answer"]], where, "answer")
    elif "answers" in obj:
        answers = _strings(obj["answers"], where, "answers")
    else:
        answers = ()
    options: tuple[str, ...] = ()
    if spec.output == "multiple_choice":
        if "options" not in obj:
            raise ConfigError(f"{where}: options: required by a multiple_choice task")
        options = _strings(obj["options"], where, "options")
        if len(options) < 2 or len(set(options)) != len(options):
            raise ConfigError(f"{where}: options: at least two distinct options are required, got {list(options)}")
        if len(answers) != 1 or answers[0] not in options:
            raise ConfigError(f"{where}: answer: must be exactly one of the options, got {list(answers)}")
    elif "options" in obj:
        raise ConfigError(f"{where}: options: only multiple_choice tasks have options (this task's output is "
                          f"{spec.output})")  # fmt: skip
    elif spec.output in ("text", "transcription") and not answers:
        raise ConfigError(f"{where}: answer: a {spec.output} item needs 'answer' or 'answers'")
    ability = obj.get("ability", spec.name)
    category = obj.get("category", ability.split("/")[0] if isinstance(ability, str) else None)
    for key, value in (("ability", ability), ("category", category)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: meta: expected an object")
    return Item(id=obj["id"], input=parts, options=options, answers=answers, ability=ability, category=category,
                meta=meta)  # fmt: skip


def load_task(folder: str | os.PathLike) -> Task:
    """Read and check a task folder (``task.json`` and ``items.jsonl``; every media file must exist)."""
    folder = Path(folder)
    spec = parse_spec(_read_json(folder / TASK_FILENAME), str(folder / TASK_FILENAME))
    items_path = folder / ITEMS_FILENAME
    try:
        lines = items_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{items_path}: no such file") from None
    items, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{items_path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc})") from exc
        item = parse_item(obj, spec, folder, where)
        if item.id in seen:
            raise ConfigError(f"{where}: id: {item.id!r} is used by an earlier item")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise ConfigError(f"{items_path}: holds no items")
    return Task(spec, tuple(items), folder)


def is_task(folder: Path) -> bool:
    return (folder / TASK_FILENAME).is_file()


def load_suite(folder: str | os.PathLike, *, tasks: list[str] | None = None) -> Suite:
    """Every task folder directly under ``folder`` (sorted by name), or ``folder`` itself if it is a task.

    ``tasks`` keeps only the named ones (an unknown name is an error).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such suite folder")
    info = _read_json(folder / SUITE_FILENAME) if (folder / SUITE_FILENAME).is_file() else {}
    folders = [folder] if is_task(folder) else sorted(p for p in folder.iterdir() if p.is_dir() and is_task(p))
    if not folders:
        raise ConfigError(f"{folder}: holds no task folders (a task folder has {TASK_FILENAME} and {ITEMS_FILENAME})")
    loaded = [load_task(p) for p in folders]
    if tasks is not None:
        known = {t.name for t in loaded}
        missing = [name for name in tasks if name not in known]
        if missing:
            raise ConfigError(f"{folder}: no task named {missing[0]!r} (has: {', '.join(sorted(known))})")
        loaded = [t for t in loaded if t.name in tasks]
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise ConfigError(f"{folder}: two task folders declare the same name ({names})")
    return Suite(info.get("name", folder.name), folder, tuple(loaded), info)


def eval_home() -> Path:
    """Where installed suites live: ``$POLYMODAL_EVAL_HOME``, else ``~/.cache/polymodal/eval``."""
    configured = os.environ.get("POLYMODAL_EVAL_HOME")
    return Path(configured) if configured else Path.home() / ".cache" / "polymodal" / "eval"


@dataclass(frozen=True)
class TaskInfo:
    """One installed task, as :func:`list_tasks` reports it."""

    suite: str
    name: str
    output: str
    metric: str
    items: int
    path: Path


def list_tasks(home: str | os.PathLike | None = None) -> list[TaskInfo]:
    """Every task of every suite installed under ``home`` (default :func:`eval_home`), by suite and name.

    Task files are read (and checked) but media files are only checked to exist.
    """
    home = Path(home) if home is not None else eval_home()
    if not home.is_dir():
        return []
    found = []
    for folder in sorted(p for p in home.iterdir() if p.is_dir() and not p.name.startswith(".")):
        candidates = [folder] if is_task(folder) else sorted(p for p in folder.iterdir() if p.is_dir() and is_task(p))
        for task_dir in candidates:
            task = load_task(task_dir)
            found.append(
                TaskInfo(folder.name, task.name, task.spec.output, task.spec.metric, len(task.items), task_dir)
            )
    return found


# -- writing --------------------------------------------------------------------------------------------


def item_record(
    item_id: str,
    input_parts: list[str | dict],
    *,
    options: list[str] | None = None,
    answer: str | None = None,
    answers: list[str] | None = None,
    ability: str,
    category: str,
    meta: dict | None = None,
) -> dict:
    """An item as one line of ``items.jsonl`` holds it (keys in a fixed order, absent ones left out)."""
    record: dict[str, Any] = {"id": item_id, "input": input_parts}
    if options is not None:
        record["options"] = options
    if answer is not None:
        record["answer"] = answer
    if answers is not None:
        record["answers"] = answers
    record.update(ability=ability, category=category)
    if meta:
        record["meta"] = meta
    return record


def write_task_files(folder: Path, spec: TaskSpec, records: list[dict]) -> None:
    """Write ``task.json`` and ``items.jsonl`` into ``folder`` (media are the caller's), then check them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TASK_FILENAME).write_text(json.dumps(spec.to_dict(), indent=2) + "\n", encoding="utf-8")
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]
    (folder / ITEMS_FILENAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    load_task(folder)
