"""The local runner: ask a suite's questions to a model, score the answers, return the report.

Answers come from a :class:`Responder`: anything that turns a list of prompt documents into a list
of answer strings under given generation settings. :class:`LocalResponder` drives
:func:`~polymodal.generation.generate` over a loaded :class:`~polymodal.run.Run` in batches, greedy
(temperature 0); a responder for an OpenAI-compatible endpoint only has to implement the same call
and hand itself to :func:`evaluate_responder`.

For every task the runner builds all prompts (:mod:`~polymodal.eval.prompts`: every rotation, and for
multiple choice the blind conditions), asks them in batches, extracts choices and scores
(:mod:`~polymodal.eval.scoring`), and collects the raw answers so that they are saved beside the
report. Pictures drawn for ``image`` tasks are judged by attribute probes
(:mod:`~polymodal.eval.probes`), speech for ``speech`` tasks by an independent recogniser
(:mod:`~polymodal.eval.speech_judge`); both are saved beside the report. Tasks the run declares no
direction for are skipped, with the reason in the report.

This module knows nothing about the command line.
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image as PILImage

import polymodal
from polymodal.content import Audio, Document, Image, Part, Video
from polymodal.errors import ConfigError
from polymodal.eval.probes import ImageProbes, load_probes
from polymodal.eval.prompts import CONDITIONS, Prompt, task_prompts
from polymodal.eval.report import EvalReport, TaskResult, group_scores
from polymodal.eval.scoring import (
    LETTERS,
    MultipleChoiceOutcome,
    Proportion,
    bootstrap_interval,
    cider_d,
    exact_match,
    extract_choice,
    score_multiple_choice,
    word_errors,
)
from polymodal.eval.speech_judge import SpeechJudge, load_speech_judge
from polymodal.eval.tasks import MediaRef, Suite, Task, load_suite
from polymodal.generation import DirectionNotSupportedError, SamplingConfig, generate, option_scores
from polymodal.progress import show_progress
from polymodal.run import Run
from polymodal.tokenizers.document import part_modality

SCORED_OUTPUTS = ("multiple_choice", "text", "transcription", "image", "speech")
DRAW_SAMPLING = {"temperature": 1.0, "guidance_scale": 3.0}  # as polymodal serve's /v1/images/generations
SAY_SAMPLING = {"temperature": 1.0, "top_k": 50, "guidance_scale": 3.0, "max_audio_seconds": 30.0}  # /v1/audio/speech


def item_seed(item_id: str) -> int:
    """The sampling seed of an item's generated media: fixed by its id alone."""
    return zlib.crc32(item_id.encode("utf-8"))


@dataclass(frozen=True)
class GenerationSettings:
    """What a responder is asked to do for one task: greedy text of at most ``max_new_tokens`` tokens."""

    max_new_tokens: int
    temperature: float = 0.0


class Responder(Protocol):
    """Answers prompts: one string per document, in order. Raise
    :class:`~polymodal.generation.DirectionNotSupportedError` for inputs the model cannot read."""

    def __call__(self, prompts: Sequence[Document], settings: GenerationSettings) -> list[str]: ...


class LocalResponder:
    """A :class:`Responder` over a loaded run: :func:`~polymodal.generation.generate` in batches.

    With ``check_direction`` a prompt is refused unless the run declares a direction from its media
    to text, with or without text beside them: the harness's instruction text does not make a
    ``image+audio->text`` run unfit for a spoken question about a picture.
    """

    def __init__(self, run: Run, *, batch_size: int = 16, check_direction: bool = True) -> None:
        self.run, self.batch_size, self.check_direction = run, batch_size, check_direction

    def check(self, prompt: Document) -> None:
        media = {part_modality(p) for p in prompt.parts} - {"text"}
        if not self.run.supports(media | {"text"}, "text"):
            raise DirectionNotSupportedError(
                f"this run was not trained to answer {'+'.join(sorted(media)) or 'text'} in text "
                f"(it declares: {', '.join(self.run.directions) or 'nothing'})"
            )

    def __call__(self, prompts: Sequence[Document], settings: GenerationSettings) -> list[str]:
        if self.check_direction:
            for prompt in prompts:
                self.check(prompt)
        sampling = SamplingConfig(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens)
        answers = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            answers += [g.part.text for g in generate(self.run, batch, sampling=sampling, check_direction=False)]
        return answers

    def draw(self, prompts: Sequence[Document], seeds: Sequence[int]) -> list[Image]:
        """One picture per prompt, sampled as the server's ``/v1/images/generations`` samples
        (:data:`DRAW_SAMPLING`), each under its own seed so that it does not depend on the batch."""
        if self.check_direction and not self.run.supports({"text"}, "image"):
            raise DirectionNotSupportedError(
                f"this run was not trained to draw (it declares: {', '.join(self.run.directions) or 'nothing'})"
            )
        return [
            generate(self.run, prompt, output="image", check_direction=False,
                     sampling=SamplingConfig(max_new_tokens=1, seed=seed, **DRAW_SAMPLING))[0].part
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]  # fmt: skip

    def say(self, prompts: Sequence[Document], seeds: Sequence[int]) -> list[Audio]:
        """One clip per prompt, sampled as the server's ``/v1/audio/speech`` samples (:data:`SAY_SAMPLING`)."""
        if self.check_direction and not self.run.supports({"text"}, "audio"):
            raise DirectionNotSupportedError(
                f"this run was not trained to speak (it declares: {', '.join(self.run.directions) or 'nothing'})"
            )
        return [
            generate(self.run, prompt, output="audio", check_direction=False,
                     sampling=SamplingConfig(seed=seed, **SAY_SAMPLING))[0].part
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]  # fmt: skip


class LikelihoodResponder(LocalResponder):
    """A :class:`LocalResponder` that answers multiple choice by likelihood, as lm-evaluation-harness
    does: of the options shown, the one the run finds likeliest as its whole answer
    (:func:`~polymodal.generation.option_scores`). For a model trained to answer in words, not
    letters; the prompt (options listed, rotated) is the same, and the pick is recorded as its letter.
    Text and transcription tasks are generated as usual."""

    def choose(self, prompts: Sequence[Document], options: Sequence[Sequence[str]]) -> list[int]:
        if self.check_direction:
            for prompt in prompts:
                self.check(prompt)
        picks = []
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            picks += [int(s.argmax()) for s in option_scores(self.run, prompts[start:end], options[start:end])]
        return picks


class _MediaCache:
    """Opened media parts, most recent first: an item's rotations and conditions reuse them.
    ``video_fps`` samples every video at that rate instead of the item's own; ``media_size`` resizes
    every picture and video frame to that many pixels on its longer side (a run trained on small
    pictures reads the suite's at the size it knows)."""

    def __init__(self, size: int = 64, video_fps: float | None = None, media_size: int | None = None) -> None:
        self.size, self.parts, self.video_fps, self.media_size = size, OrderedDict(), video_fps, media_size

    def __call__(self, ref: MediaRef) -> Part:
        if self.video_fps is not None and ref.kind == "video":
            ref = replace(ref, fps=self.video_fps)
        if ref in self.parts:
            self.parts.move_to_end(ref)
            return self.parts[ref]
        part = self.parts[ref] = _resized(ref.open(), self.media_size)
        if len(self.parts) > self.size:
            self.parts.popitem(last=False)
        return part


def _resized(part: Part, side: int | None) -> Part:
    def image(im: Image) -> Image:
        w, h = im.size
        if side is None or max(w, h) == side:
            return im
        scale = side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return replace(im, pixels=im.pixels.resize(size, PILImage.BICUBIC))

    if isinstance(part, Image):
        return image(part)
    if isinstance(part, Video):
        return replace(part, frames=tuple(replace(f, image=image(f.image)) for f in part.frames))
    return part


def ask(
    responder: Responder,
    task: Task,
    prompts: list[Prompt],
    *,
    chunk: int = 64,
    progress: bool = False,
    video_fps: float | None = None,
    media_size: int | None = None,
) -> list[str]:
    """The responder's answers to ``prompts``, asked ``chunk`` at a time (media opened per chunk)."""
    settings = GenerationSettings(max_new_tokens=task.spec.max_new_tokens)
    cache = _MediaCache(video_fps=video_fps, media_size=media_size)
    answers: list[str] = []
    with show_progress(len(prompts), f"eval {task.name}", "prompt", enabled=progress) as bar:
        for start in range(0, len(prompts), chunk):
            asked = prompts[start : start + chunk]
            documents = [p.document(cache) for p in asked]
            choose = getattr(responder, "choose", None)  # multiple choice by likelihood
            if choose is not None and task.spec.output == "multiple_choice":
                answers += [LETTERS[i] for i in choose(documents, [p.rotation.options for p in asked])]
            else:
                answers += responder(documents, settings)
            bar.update(len(documents))
    if len(answers) != len(prompts):
        raise RuntimeError(f"the responder gave {len(answers)} answers to {len(prompts)} prompts")
    return answers


def _answer_rows(prompts: list[Prompt], answers: list[str]) -> list[dict]:
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        row = {"task": prompt.task, "id": prompt.item_id, "condition": prompt.condition, "answer": answer}
        if prompt.rotation is not None:
            choice = extract_choice(answer, prompt.rotation.options)
            row.update(shift=prompt.rotation.shift, options=list(prompt.rotation.options),
                       expected=prompt.rotation.answer_index, choice=choice)  # fmt: skip
        rows.append(row)
    return rows


def score_multiple_choice_task(task: Task, rows: list[dict]) -> TaskResult:
    """Circular and single-pass accuracy per condition, overall and per ability and category, the
    multimodal gain and the items answered right without their media."""
    items = {item.id: item for item in task.items}
    outcomes: dict[str, list[MultipleChoiceOutcome]] = {c: [] for c in CONDITIONS}
    by_key: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_key.setdefault((row["condition"], row["id"]), []).append(row)
    for (condition, item_id), passes in by_key.items():
        item = items[item_id]
        outcomes[condition].append(MultipleChoiceOutcome(
            item_id, item.ability, item.category, len(item.options),
            tuple(r["expected"] for r in passes), tuple(r["choice"] for r in passes),
        ))  # fmt: skip
    conditions = {c: score_multiple_choice(o).to_dict() for c, o in outcomes.items() if o}
    scores = {"conditions": conditions}
    if "no_media" in conditions:
        for kind in ("circular", "single_pass"):
            with_media, blind = conditions["with_media"][kind]["value"], conditions["no_media"][kind]["value"]
            scores[f"gain_{kind}"] = with_media - blind
    leaking = sorted(o.item_id for o in outcomes["no_media"] if o.circular_correct)
    return TaskResult(
        name=task.name, output=task.spec.output, metric=task.spec.metric, items=len(task.items), scores=scores,
        abilities=group_scores(outcomes, "ability"), categories=group_scores(outcomes, "category"), leaking=leaking,
    )  # fmt: skip


def corpus_wer_interval(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Word error rate over all items (errors / reference words) with a bootstrap 95% interval over items."""
    pairs = np.array([word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)], dtype=float)
    words = pairs[:, 1].sum()
    low, high = bootstrap_interval(pairs, lambda rows: rows[:, 0].sum() / max(1.0, rows[:, 1].sum()))
    value = pairs[:, 0].sum() / words if words else 0.0
    return {"value": float(value), "low": low, "high": high, "total": len(references), "reference_words": int(words)}


def score_text_task(task: Task, rows: list[dict]) -> TaskResult:
    """Exact match and CIDEr-D (text), or WER (transcription), with 95% intervals."""
    answers = {row["id"]: row["answer"] for row in rows}
    candidates = [answers[item.id] for item in task.items]
    references = [item.answers for item in task.items]
    matches = [exact_match(c, r) for c, r in zip(candidates, references, strict=True)]
    scores: dict = {"exact_match": Proportion(sum(matches), len(matches)).to_dict()}
    if task.spec.output == "text":
        per_item = cider_d(candidates, references)
        low, high = bootstrap_interval(per_item)
        scores["cider_d"] = {"value": float(np.mean(per_item)), "low": low, "high": high, "total": len(per_item)}
    else:
        scores["wer"] = corpus_wer_interval([r[0] for r in references], candidates)
    return TaskResult(name=task.name, output=task.spec.output, metric=task.spec.metric, items=len(task.items),
                      scores=scores)  # fmt: skip


class _Lazy:
    """A judge built on first use: a task whose responder cannot draw or speak never trains one."""

    def __init__(self, build) -> None:  # noqa: ANN001
        self.build, self.value = build, None

    def get(self):  # noqa: ANN201
        if self.value is None:
            self.value = self.build()
        return self.value


def draw_task(
    responder: Responder, task: Task, probes: ImageProbes | _Lazy, *, chunk: int = 16, progress: bool = False
) -> tuple[TaskResult, list[dict], dict[str, bytes]]:
    """Ask the responder to draw every item's caption; the probes read each picture and the item's true
    picture (``meta.reference``, the ceiling); returns the result, the answer rows and the pictures."""
    images = _generate_all(responder, "draw", task, chunk, progress)
    probes = probes.get() if isinstance(probes, _Lazy) else probes
    references = [Image.open(task.path / item.meta["reference"]) for item in task.items]
    read, truth = probes.read(images), probes.read(references)
    counts: dict[str, list[int]] = {}  # attribute -> [generated right, reference right, items]
    rows, media, every = [], {}, [0, 0]
    for item, image, seen, ceiling in zip(task.items, images, read, truth, strict=True):
        named = item.meta.get("attributes", {})
        for attribute, value in named.items():
            tally = counts.setdefault(attribute, [0, 0, 0])
            tally[0] += seen[attribute] == value
            tally[1] += ceiling[attribute] == value
            tally[2] += 1
        every[0] += all(seen[a] == v for a, v in named.items())
        every[1] += all(ceiling[a] == v for a, v in named.items())
        path = f"samples/{task.name}/{item.id}.png"
        media[path] = image.to_png_bytes()
        read_named, reference_named = {a: seen[a] for a in named}, {a: ceiling[a] for a in named}
        rows.append({"task": task.name, "id": item.id, "answer": path, "named": named, "read": read_named,
                     "read_reference": reference_named})  # fmt: skip
    attributes = {a: {"generated": Proportion(g, n).to_dict(), "reference": Proportion(r, n).to_dict()}
                  for a, (g, r, n) in sorted(counts.items())}  # fmt: skip
    n = len(task.items)
    scores = {"attributes": attributes, "all_named": {"generated": Proportion(every[0], n).to_dict(),
                                                      "reference": Proportion(every[1], n).to_dict()},
              "probes_held_out": dict(probes.held_out)}  # fmt: skip
    result = TaskResult(name=task.name, output=task.spec.output, metric=task.spec.metric, items=n, scores=scores)
    return result, rows, media


def _generate_all(responder: Responder, method: str, task: Task, chunk: int, progress: bool) -> list:
    """``responder.draw`` or ``responder.say`` over every item's prompt, ``chunk`` at a time, each item
    under its own seed (:func:`item_seed`)."""
    generate_media = getattr(responder, method, None)
    if generate_media is None:
        raise DirectionNotSupportedError(f"this responder cannot {method}")
    cache, out = _MediaCache(), []
    with show_progress(len(task.items), f"eval {task.name}", "item", enabled=progress) as bar:
        for start in range(0, len(task.items), chunk):
            items = task.items[start : start + chunk]
            prompts = []
            for item in items:
                parts = [cache(p) if isinstance(p, MediaRef) else p for p in item.input]
                prompts.append(Document.chat(("user", parts)) if task.spec.chat else Document.of(*parts))
            out += generate_media(prompts, [item_seed(item.id) for item in items])
            bar.update(len(items))
    return out


def speak_task(
    responder: Responder, task: Task, judge: SpeechJudge | _Lazy, *, chunk: int = 16, progress: bool = False
) -> tuple[TaskResult, list[dict], dict[str, bytes]]:
    """Ask the responder to say every item's sentence; the judge transcribes each clip and the item's
    eSpeak NG clip (``meta.reference``, the floor); WER against the sentence, for both."""
    clips = _generate_all(responder, "say", task, chunk, progress)
    judge = judge.get() if isinstance(judge, _Lazy) else judge
    sentences = [item.answers[0] if item.answers else item.question for item in task.items]
    heard = judge.transcribe_all(clips)
    heard_reference = judge.transcribe_all([Audio.open(task.path / item.meta["reference"]) for item in task.items])
    rows, media = [], {}
    for item, clip, text, said, floor in zip(task.items, clips, sentences, heard, heard_reference, strict=True):
        path = f"samples/{task.name}/{item.id}.wav"
        media[path] = clip.to_wav_bytes()
        rows.append({"task": task.name, "id": item.id, "answer": path, "sentence": text, "heard": said,
                     "heard_reference": floor, "seconds": round(clip.duration, 3)})  # fmt: skip
    scores = {"asr_wer": {"generated": corpus_wer_interval(sentences, heard),
                          "reference": corpus_wer_interval(sentences, heard_reference)},
              "seconds": float(np.mean([c.duration for c in clips]))}  # fmt: skip
    result = TaskResult(name=task.name, output=task.spec.output, metric=task.spec.metric, items=len(task.items),
                        scores=scores)  # fmt: skip
    return result, rows, media


def evaluate_responder(
    responder: Responder,
    suite: Suite | str | os.PathLike,
    *,
    limit: int | None = None,
    tasks: list[str] | None = None,
    blind: bool = True,
    model_name: str = "",
    progress: bool = False,
    settings: dict | None = None,
    video_fps: float | None = None,
    media_size: int | None = None,
    probes: ImageProbes | None = None,
    judge: SpeechJudge | None = None,
) -> EvalReport:
    """Ask every task of ``suite`` (its first ``limit`` items each) to ``responder`` and score it.

        ``blind=False`` skips the no-media and swapped-media conditions of multiple-choice tasks. Pictures
        are judged by ``probes`` (default: :func:`~polymodal.eval.probes.load_probes`, trained once), speech
    by ``judge`` (default: :func:`~polymodal.eval.speech_judge.load_speech_judge`).
    """
    suite = suite if isinstance(suite, Suite) else load_suite(suite, tasks=tasks)
    results, skipped, answers, media = [], {}, [], {}
    for task in suite.tasks:
        if tasks is not None and task.name not in tasks:
            continue
        task = task.limited(limit)
        if task.spec.output not in SCORED_OUTPUTS:
            skipped[task.name] = f"{task.spec.output} outputs are not scored by this runner yet"
            continue
        if task.spec.output in ("image", "speech"):
            try:
                # the judges are loaded (trained on first use) only once the responder has drawn or spoken
                if task.spec.output == "image":
                    probes = probes or _Lazy(lambda: load_probes(progress=progress))
                    result, rows, pictures = draw_task(responder, task, probes, progress=progress)
                else:
                    judge = judge or _Lazy(load_speech_judge)
                    result, rows, pictures = speak_task(responder, task, judge, progress=progress)
            except DirectionNotSupportedError as exc:
                skipped[task.name] = str(exc)
                continue
            except ConfigError as exc:  # a judge that cannot run here (PocketSphinx not installed)
                skipped[task.name] = f"not judged: {exc}"
                continue
            results.append(result)
            answers += rows
            media.update(pictures)
            continue
        prompts = task_prompts(task, blind=blind)
        try:
            said = ask(responder, task, prompts, progress=progress, video_fps=video_fps, media_size=media_size)
        except DirectionNotSupportedError as exc:
            skipped[task.name] = str(exc)
            continue
        rows = _answer_rows(prompts, said)
        answers += rows
        score = score_multiple_choice_task if task.spec.output == "multiple_choice" else score_text_task
        results.append(score(task, rows))
    info = {"name": suite.name, "path": str(suite.path), **{k: v for k, v in suite.info.items() if k != "name"}}
    settings = {"temperature": 0.0, "limit": limit, "blind": blind, "video_fps": video_fps, "media_size": media_size,
                **(settings or {})}  # fmt: skip
    versions = {"polymodal": polymodal.__version__, "jiwer": _version("jiwer")}
    return EvalReport(suite=info, model=model_name, settings=settings, versions=versions, tasks=results,
                      skipped=skipped, answers=answers, media=media)  # fmt: skip


def evaluate(
    run: Run | str | os.PathLike,
    suite: Suite | str | os.PathLike,
    *,
    limit: int | None = None,
    tasks: list[str] | None = None,
    batch_size: int = 16,
    blind: bool = True,
    check_direction: bool = True,
    progress: bool = False,
    choice: str = "generate",
    video_fps: float | None = None,
    media_size: int | None = None,
    probes: ImageProbes | None = None,
    judge: SpeechJudge | None = None,
) -> EvalReport:
    """Evaluate a run (loaded, or its folder) on a suite folder with :class:`LocalResponder`, or with
    :class:`LikelihoodResponder` when ``choice="likelihood"``."""
    if choice not in ("generate", "likelihood"):
        raise ConfigError(f"choice must be 'generate' or 'likelihood', got {choice!r}")
    name = str(run) if not isinstance(run, Run) else ""
    loaded = run if isinstance(run, Run) else Run.load(Path(run))
    kind = LikelihoodResponder if choice == "likelihood" else LocalResponder
    responder = kind(loaded, batch_size=batch_size, check_direction=check_direction)
    return evaluate_responder(responder, suite, limit=limit, tasks=tasks, blind=blind, model_name=name,
                              progress=progress, settings={"batch_size": batch_size, "choice": choice},
                              video_fps=video_fps, media_size=media_size, probes=probes,
                              judge=judge)  # fmt: skip


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
