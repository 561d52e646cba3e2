"""The evaluation report: scores per task, ability and category, written as JSON and Markdown.

``EvalReport.write(folder)`` writes ``report.json`` (every figure with its 95% interval, the
settings, versions and the suite's provenance), ``report.md`` (the same as tables, with chance level
beside every accuracy and the blind baselines beside the scores with media), ``accuracy.png`` (circular
accuracy per ability, with media beside the blind conditions) and ``answers.jsonl``
(every raw answer, its rotation and the choice read from it), so that a figure can be traced back to
what the model said. Nothing in the report depends on the clock: the same run on the same suite
writes the same files.

This module knows nothing about models, prompts or generation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from polymodal.eval.scoring import MultipleChoiceOutcome, Proportion, score_multiple_choice
from polymodal.files import write_bytes_atomic, write_text_atomic

REPORT_JSON, REPORT_MARKDOWN, ANSWERS_JSONL = "report.json", "report.md", "answers.jsonl"
ACCURACY_PNG = "accuracy.png"
CONDITION_NAMES = {"with_media": "with media", "no_media": "no media", "swapped_media": "swapped media"}


def group_scores(outcomes: dict[str, Sequence[MultipleChoiceOutcome]], key: str) -> dict[str, dict]:
    """Per value of ``key`` (``"ability"`` or ``"category"``): each condition's scores and the gain."""
    groups: dict[str, dict] = {}
    for condition, items in outcomes.items():
        by_group: dict[str, list[MultipleChoiceOutcome]] = {}
        for outcome in items:
            by_group.setdefault(getattr(outcome, key), []).append(outcome)
        for name, members in sorted(by_group.items()):
            groups.setdefault(name, {})[condition] = score_multiple_choice(members).to_dict()
    for scores in groups.values():
        if "no_media" in scores:
            scores["gain_circular"] = (
                scores["with_media"]["circular"]["value"] - scores["no_media"]["circular"]["value"]
            )
    return groups


@dataclass
class TaskResult:
    """One task's scores. Multiple choice: ``scores["conditions"][condition]`` holds circular,
    single-pass and unreadable proportions and chance levels; text: exact match and CIDEr-D or WER."""

    name: str
    output: str
    metric: str
    items: int
    scores: dict
    abilities: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)
    leaking: list[str] = field(default_factory=list)  # answered right (every rotation) without their media

    def to_dict(self) -> dict:
        return {"name": self.name, "output": self.output, "metric": self.metric, "items": self.items,
                "scores": self.scores, "abilities": self.abilities, "categories": self.categories,
                "leaking": self.leaking}  # fmt: skip


@dataclass
class EvalReport:
    """A suite's evaluation: settings, versions, per-task results, skipped tasks and raw answers."""

    suite: dict
    model: str
    settings: dict
    versions: dict
    tasks: list[TaskResult]
    skipped: dict[str, str]
    answers: list[dict]
    media: dict[str, bytes] = field(default_factory=dict, repr=False)  # generated samples: relative path -> bytes

    def task(self, name: str) -> TaskResult:
        return next(t for t in self.tasks if t.name == name)

    def to_dict(self) -> dict:
        """The JSON report (the raw answers are written separately, to ``answers.jsonl``)."""
        return {"suite": self.suite, "model": self.model, "settings": self.settings, "versions": self.versions,
                "tasks": [t.to_dict() for t in self.tasks], "skipped": self.skipped}  # fmt: skip

    def write(self, folder: str | os.PathLike) -> Path:
        """Write report.json, report.md and answers.jsonl into ``folder``; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / REPORT_JSON, json.dumps(self.to_dict(), indent=2) + "\n")
        write_text_atomic(folder / REPORT_MARKDOWN, self.to_markdown())
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.answers)
        write_text_atomic(folder / ANSWERS_JSONL, lines)
        for relative, data in self.media.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(folder / relative, data)
        plot = self.accuracy_plot()
        if plot is not None:
            write_bytes_atomic(folder / ACCURACY_PNG, plot)
        return folder

    def accuracy_plot(self) -> bytes | None:
        """PNG: circular accuracy per ability with 95% intervals, with media beside no media and swapped
        media, and each ability's chance level; None without multiple-choice tasks."""
        from polymodal.plots import grouped_bars

        merged: dict[str, dict[str, list[int]]] = {}  # ability -> condition -> [correct, total, chance·total]
        for task in self.tasks:
            for ability, conditions in task.abilities.items():
                for condition in CONDITION_NAMES:
                    if condition in conditions:
                        c = conditions[condition]["circular"]
                        row = merged.setdefault(ability, {}).setdefault(condition, [0, 0, 0.0])
                        row[0] += c["correct"]
                        row[1] += c["total"]
                        row[2] += conditions[condition]["chance_circular"] * c["total"]
        if not merged:
            return None
        abilities = sorted(merged)
        series = {}
        for condition, label in CONDITION_NAMES.items():
            if all(condition in merged[a] for a in abilities):
                cells = [Proportion(*merged[a][condition][:2]).to_dict() for a in abilities]
                series[label] = [(c["value"], c["low"], c["high"]) for c in cells]
        chance = [merged[a]["with_media"][2] / merged[a]["with_media"][1] for a in abilities]
        return grouped_bars(abilities, series, ylabel="circular accuracy", chance=chance,
                            title=f"{self.model or 'model'} on {self.suite.get('name', 'the suite')}")  # fmt: skip

    def to_markdown(self) -> str:
        lines = [f"# Evaluation on {self.suite.get('name', 'a suite')}", ""]
        if self.model:
            lines += [f"Model: `{self.model}`", ""]
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        lines += [f"Settings: {settings}. Versions: {versions}.", ""]
        choice = [t for t in self.tasks if t.output == "multiple_choice"]
        if choice:
            lines += _choice_section(choice)
            lines += [f"![circular accuracy per ability]({ACCURACY_PNG})", ""]

        def cider(t: TaskResult) -> str:
            c = t.scores["cider_d"]
            return f"{_pct(t.scores['exact_match'])} | {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"

        def wer(t: TaskResult) -> str:
            w = t.scores["wer"]
            return f"{w['value']:.1%} [{w['low']:.1%}, {w['high']:.1%}] | {_pct(t.scores['exact_match'])}"

        sections = (("text", "Text outputs", "exact match | CIDEr-D", cider),
                    ("transcription", "Transcription", "WER | exact match", wer))  # fmt: skip
        for output, title, columns, cells in sections:
            tasks = [t for t in self.tasks if t.output == output]
            if tasks:
                lines += [f"## {title}", "", f"| task | items | {columns} |", "|---|---:|---|---|"]
                lines += [f"| {t.name} | {t.items} | {cells(t)} |" for t in tasks] + [""]
        drawn = [t for t in self.tasks if t.output == "image"]
        if drawn:
            lines += [
                "## Generated images",
                "",
                "Each attribute a caption names, as the probes read it from the generated picture, beside "
                "what they read from a true picture of the caption (the ceiling).",
                "",
                "| task | items | attribute | generated | true picture (ceiling) |",
                "|---|---:|---|---|---|",
            ]
            for t in drawn:
                rows = {**t.scores["attributes"], "all named": t.scores["all_named"]}
                lines += [
                    f"| {t.name} | {s['generated']['total']} | {name} | {_pct(s['generated'])} | "
                    f"{_pct(s['reference'])} |"
                    for name, s in rows.items()
                ]
            lines += ["", "The pictures are in `samples/`.", ""]
        spoken = [t for t in self.tasks if t.output == "speech"]
        if spoken:
            lines += [
                "## Generated speech",
                "",
                "Word error rate of an independent recogniser (PocketSphinx, a language model of the shapes "
                "world's words) on the generated speech, beside the same on eSpeak NG's speech of the same "
                "sentences (the floor).",
                "",
                "| task | items | WER, generated | WER, eSpeak NG (floor) | mean length |",
                "|---|---:|---|---|---|",
            ]
            for t in spoken:
                wer, floor = t.scores["asr_wer"]["generated"], t.scores["asr_wer"]["reference"]
                lines.append(f"| {t.name} | {t.items} | {_pct(wer)} | {_pct(floor)} | {t.scores['seconds']:.1f} s |")
            lines += ["", "The clips are in `samples/`.", ""]
        if self.skipped:
            lines += ["## Skipped", ""] + [f"- {name}: {why}" for name, why in self.skipped.items()] + [""]
        lines += [
            "Intervals are 95% (Wilson for accuracies, bootstrap over items for CIDEr-D and WER). Texts are "
            "compared after lower-casing, removing punctuation and collapsing spaces.",
            "",
        ]
        return "\n".join(lines)


def _pct(p: dict) -> str:
    return f"{p['value']:.1%} [{p['low']:.1%}, {p['high']:.1%}]"


def _choice_rows(name: str, n: int, scores: dict) -> str:
    """One table row: accuracy with media (circular, single pass), chance, blind conditions, gain."""
    with_media = scores["with_media"]
    blind = scores.get("no_media")
    swapped = scores.get("swapped_media")
    cells = [
        name, str(n), _pct(with_media["circular"]), _pct(with_media["single_pass"]),
        f"{with_media['chance_circular']:.1%} / {with_media['chance_single']:.0%}",
        _pct(blind["circular"]) if blind else "–", _pct(swapped["circular"]) if swapped else "–",
        f"{with_media['circular']['value'] - blind['circular']['value']:+.1%}" if blind else "–",
        f"{with_media['unreadable']['value']:.1%}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _choice_section(tasks: list[TaskResult]) -> list[str]:
    header = ("| {} | items | circular | single pass | chance (circular / single) | no media (circular) | "
              "swapped media (circular) | gain | unreadable |")  # fmt: skip
    rule = "|---|---:|---|---|---|---|---|---|---|"
    lines = ["## Multiple choice", "", "Circular: right under every rotation of the options. Gain: with media "
             "minus no media (circular).", "", header.format("task"), rule]  # fmt: skip
    lines += [_choice_rows(t.name, t.items, t.scores["conditions"]) for t in tasks]
    for key, title in (("abilities", "ability"), ("categories", "category")):
        merged: dict[str, list] = {}
        for t in tasks:
            for name, scores in getattr(t, key).items():
                merged.setdefault(name, []).append(scores)
        lines += ["", f"### Per {title}", "", header.format(title), rule]
        for name, entries in sorted(merged.items()):
            if len(entries) == 1:  # the usual case: one task per ability
                scores = entries[0]
                lines.append(_choice_rows(name, scores["with_media"]["circular"]["total"], scores))
            else:
                lines.append(_merged_row(name, entries))
    leaking = [(t.name, t.leaking) for t in tasks if t.leaking]
    lines += ["", "### Answered right without their media", ""]
    if not leaking:
        lines.append("None.")
    for name, ids in leaking:
        shown = ", ".join(ids[:20]) + (f" … ({len(ids)} in all)" if len(ids) > 20 else "")
        lines.append(f"- {name} ({len(ids)}): {shown}")
    return [*lines, ""]


def _merged_row(name: str, entries: list[dict]) -> str:
    """An ability spread over several tasks: counts added, intervals recomputed."""
    combined = {}
    for condition in ("with_media", "no_media", "swapped_media"):
        parts = [e[condition] for e in entries if condition in e]
        if not parts:
            continue
        total = sum(p["circular"]["total"] for p in parts)
        merged = {
            kind: Proportion(sum(p[kind]["correct"] for p in parts), sum(p[kind]["total"] for p in parts)).to_dict()
            for kind in ("circular", "single_pass", "unreadable")
        }
        for chance in ("chance_single", "chance_circular"):
            merged[chance] = sum(p[chance] * p["circular"]["total"] for p in parts) / total
        combined[condition] = merged
    return _choice_rows(name, combined["with_media"]["circular"]["total"], combined)
