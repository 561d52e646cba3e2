"""Built-in suites: the ``shapes`` suite, written as task folders from the shapes-world generator.

The items come from :func:`~polymodal.data.shapes.make_sample` with ``split="test"``: training
corpora use ``split="train"`` (``make_shapes`` and the quickstart's corpus), and the splits draw
from disjoint random streams (:mod:`polymodal.data.shapes.seeds`), so no item was a training sample.
Item ``id`` s are the samples' keys (``image_qa-test-0-0000012``): anyone can regenerate one.

Tasks, one ability each::

    perception-colour / -shape / -count / -position   image + question      multiple choice
    spoken-image-qa       image + the question spoken (eSpeak NG)           multiple choice
    sound-event           a shape's sound + "which shape makes this sound?" multiple choice
    audio-visual-timing   video with its audio track + "which object appeared when the sound played?"
    caption               image -> text, five references per image          CIDEr-D, exact match
    transcription         speech -> text                                    WER
    text-to-image         caption -> picture                                attribute probes (colour, shape,
                                                                            position, count) vs a true picture
    text-to-speech        sentence -> speech                                PocketSphinx WER vs eSpeak's speech

Perception items are the test-split ``image_qa`` samples whose first question tests that ability,
in index order. Caption references are the sample's caption and four more captions of the same
scene from a seeded generator (distinct sentences, all true of the picture by construction).

Size: :data:`ITEMS_PER_TASK` = 381 items per task, the fewest for which a 95% Wilson interval on an
accuracy is ±5 points or narrower whatever the accuracy (:func:`~polymodal.eval.scoring.items_for_margin`:
the half-width is widest at 50%, z / (2·sqrt(n + z²)) ≤ 0.05 gives n ≥ 380.3). ``items_per_task=N``
writes the first N items of each task (a prefix of the full suite: same ids, same content).

Generation is a pure function of (seed, task, index), run in spawned worker processes like
``make_shapes``; the parent writes the files in order, so the suite is the same for any worker count.

This module knows nothing about models or scoring beyond the task format.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from polymodal.data.shapes import GENERATOR_VERSION, Scene, make_sample, sample_rng
from polymodal.data.shapes.language import caption, listing_sentence, position_phrase, sentence
from polymodal.data.shapes.questions import image_question
from polymodal.data.shapes.render import render_scene
from polymodal.data.shapes.samples import ShapesConfig
from polymodal.data.shapes.shards import flac_bytes
from polymodal.data.shapes.speech import random_voice, speak
from polymodal.data.shapes.video import encode_mp4
from polymodal.data.shapes.world import random_scene
from polymodal.errors import ConfigError
from polymodal.eval.attributes import COUNT_WORDS, draw_scene
from polymodal.eval.scoring import items_for_margin
from polymodal.eval.tasks import (
    MULTIPLE_CHOICE_PROMPT,
    SUITE_FILENAME,
    TaskSpec,
    eval_home,
    item_record,
    load_suite,
    write_task_files,
)
from polymodal.files import staging_directory, swap_directory, write_text_atomic
from polymodal.progress import show_progress

ITEMS_PER_TASK = items_for_margin(0.05)
SPLIT = "test"
CAPTION_REFERENCES = 5
SPOKEN_PROMPT = (
    "Answer the question you hear.\nOptions:\n{options}\nAnswer with the option's letter from the given choices "
    "directly."
)


@dataclass(frozen=True)
class ShapesTask:
    """How one task of the shapes suite is made: the sample kind it reads, and its spec."""

    kind: str
    spec: TaskSpec
    ability: str
    category: str
    question_ability: str | None = None  # perception tasks: keep only samples whose question tests this


def _choice(name: str, description: str, prompt: str = MULTIPLE_CHOICE_PROMPT) -> TaskSpec:
    return TaskSpec(name=name, output="multiple_choice", metric="circular_accuracy", prompt=prompt,
                    max_new_tokens=16, description=description)  # fmt: skip


SHAPES_TASKS: dict[str, ShapesTask] = {
    **{
        f"perception-{what}": ShapesTask(
            "image_qa", _choice(f"perception-{what}", f"The {what} of an object in a picture."),
            f"perception/{what}", "perception", question_ability=f"perception/{what}",
        )
        for what in ("colour", "shape", "count", "position")
    },
    "spoken-image-qa": ShapesTask(
        "spoken_image_qa",
        _choice("spoken-image-qa", "A question about a picture, asked aloud.", SPOKEN_PROMPT),
        "crossmodal/spoken-question", "crossmodal",
    ),
    "sound-event": ShapesTask(
        "sound_qa", _choice("sound-event", "Which shape makes a sound (one timbre per shape)."),
        "audio/sound-event", "audio",
    ),
    "audio-visual-timing": ShapesTask(
        "video_qa", _choice("audio-visual-timing", "Which object appeared in the video when the sound played."),
        "crossmodal/audio-visual-timing", "crossmodal",
    ),
    "caption": ShapesTask(
        "image_caption",
        TaskSpec(name="caption", output="text", metric="cider_d", prompt="", chat=False, max_new_tokens=48,
                 description="Describe a picture (continues the image, as captioning is trained)."),
        "captioning/image", "captioning",
    ),
    "transcription": ShapesTask(
        "speech_transcript",
        TaskSpec(name="transcription", output="transcription", metric="wer", prompt="", chat=False,
                 max_new_tokens=64, description="Write down what a voice says."),
        "speech/recognition", "speech",
    ),
    "text-to-image": ShapesTask(
        "text_to_image",
        TaskSpec(name="text-to-image", output="image", metric="probe_accuracy", prompt="", chat=False,
                 description="Draw a picture from a caption (continues the caption, as drawing is trained); "
                             "judged by attribute probes against a true picture of the caption."),
        "generation/image", "generation",
    ),
    "text-to-speech": ShapesTask(
        "text_to_speech",
        TaskSpec(name="text-to-speech", output="speech", metric="asr_wer", prompt="", chat=False,
                 description="Say a sentence (continues the text, as speaking is trained); judged by PocketSphinx's "
                             "word error rate on it, beside the same on eSpeak NG's speech of the sentence."),
        "generation/speech", "generation",
    ),
}  # fmt: skip


def list_builtin_suites() -> tuple[str, ...]:
    return ("shapes",)


# -- one item ------------------------------------------------------------------------------------------


def _references(scene: dict, first: str, seed: int, index: int) -> list[str]:
    """The sample's caption and more distinct captions of the same scene, from a seeded generator."""
    rng = sample_rng(seed, SPLIT, "eval:caption-references", index)
    scene_obj, found = Scene.from_dict(scene), [first]
    for _ in range(20 * CAPTION_REFERENCES):
        if len(found) == CAPTION_REFERENCES:
            break
        text = caption(scene_obj, rng)
        if text not in found:
            found.append(text)
    return found


def make_item(task_name: str, index: int, *, seed: int = 0) -> tuple[dict, dict[str, bytes]] | None:
    """Item ``index`` of a shapes task: its ``items.jsonl`` record and media files (relative path ->
    bytes), or None when the sample at ``index`` does not belong to the task (perception tasks)."""
    task = SHAPES_TASKS[task_name]
    if task.kind == "text_to_image":
        return _drawing_item(task, index, seed)
    if task.kind == "text_to_speech":
        return _speech_item(task, index, seed)
    config = ShapesConfig()
    sample = make_sample(task.kind, index, seed=seed, split=SPLIT, config=config)
    truth, key = sample.meta["truth"], sample.key
    question = truth["questions"][0] if "questions" in truth else None
    if task.question_ability is not None and question["ability"] != task.question_ability:
        return None
    media: dict[str, bytes] = {}
    parts: list[str | dict] = []
    for n, part in enumerate(sample.document.messages[0].parts):
        kind = type(part).__name__.lower()
        if kind == "image":
            name = f"media/{key}_{n}.png"
            media[name] = part.to_png_bytes()
            parts.append({"image": name})
        elif kind == "audio":
            name = f"media/{key}_{n}.flac"
            media[name] = flac_bytes(part)
            parts.append({"audio": name})
        elif kind == "video":
            name = f"media/{key}_{n}.mp4"
            media[name] = encode_mp4(part, fps=config.video_fps)
            parts.append({"video": name, "fps": config.video_fps})
    meta = {"source": key}
    if task.spec.output == "multiple_choice":
        if task.kind != "spoken_image_qa":  # the spoken question is the audio part
            parts.append(question["text"])
        meta.update(question=question["text"], question_ability=question["ability"])
        record = item_record(key, parts, options=list(question["options"]), answer=question["answer"],
                             ability=task.ability, category=task.category, meta=meta)  # fmt: skip
    elif task.spec.output == "text":
        answers = _references(truth["scene"], truth["caption"], seed, index)
        record = item_record(key, parts, answers=answers, ability=task.ability, category=task.category, meta=meta)
    else:
        record = item_record(key, parts, answer=truth["text"], ability=task.ability, category=task.category,
                             meta=meta)  # fmt: skip
    return record, media


def _drawing_item(task: ShapesTask, index: int, seed: int) -> tuple[dict, dict[str, bytes]]:
    """A caption in the corpus's words naming a lone object (colour, shape, and half the time its place)
    or 2-4 objects (the count), with a true picture of it (``meta.reference``) and what it names."""
    rng = sample_rng(seed, SPLIT, "eval:text-to-image", index)
    if rng.random() < 0.75:
        scene = draw_scene(rng)
        obj = scene.objects[0]
        text = listing_sentence(scene, rng)
        attributes = {"colour": obj.colour, "shape": obj.shape}
        if obj.position is not None and rng.random() < 0.5:
            text += " " + sentence(f"the {obj.name} is {position_phrase(obj.position)}")
            attributes["position"] = obj.position
    else:
        count = COUNT_WORDS[int(rng.integers(1, len(COUNT_WORDS)))]
        scene = draw_scene(rng, count=count)
        text = listing_sentence(scene, rng)
        attributes = {"count": count}
    key = f"text_to_image-{SPLIT}-{seed}-{index:07d}"
    reference = f"reference/{key}.png"
    meta = {"attributes": attributes, "reference": reference, "scene": scene.to_dict()}
    record = item_record(key, [text], ability=task.ability, category=task.category, meta=meta)
    return record, {reference: render_scene(scene, size=64).to_png_bytes()}


def _speech_item(task: ShapesTask, index: int, seed: int) -> tuple[dict, dict[str, bytes]]:
    """A sentence of the corpus's (a caption or a question) to say, with eSpeak NG's speech of it
    (``meta.reference``: the floor of the recogniser that judges)."""
    rng = sample_rng(seed, SPLIT, "eval:text-to-speech", index)
    scene = random_scene(rng)
    text = caption(scene, rng) if rng.random() < 0.6 else image_question(scene, rng).text
    key = f"text_to_speech-{SPLIT}-{seed}-{index:07d}"
    reference = f"reference/{key}.flac"
    audio = speak(text, random_voice(rng))
    record = item_record(key, [text], answer=text, ability=task.ability, category=task.category,
                         meta={"reference": reference})  # fmt: skip
    return record, {reference: flac_bytes(audio)}


def write_task(out: str | os.PathLike, task_name: str, items: int, *, seed: int = 0) -> Path:
    """One task of the shapes suite alone: its first ``items`` items (the suite's, same ids and media)
    written as a task folder into ``out``; returns the folder."""
    if task_name not in SHAPES_TASKS:
        raise ConfigError(f"unknown shapes task {task_name!r}; tasks: {', '.join(SHAPES_TASKS)}")
    out = Path(out)
    made, index = [], 0
    while len(made) < items:
        item = make_item(task_name, index, seed=seed)
        index += 1
        if item is not None:
            made.append(item)
    _write_items(out, SHAPES_TASKS[task_name], made)
    return out


def _write_items(folder: Path, task: ShapesTask, items: list[tuple[dict, dict[str, bytes]]]) -> None:
    """Items' media files, then ``task.json`` and ``items.jsonl`` (checked by loading them)."""
    for _, media in items:
        for relative, data in media.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(data)
    write_task_files(folder, task.spec, [record for record, _ in items])


def _make_chunk(job: tuple[str, int, int, int]) -> list[tuple[dict, dict[str, bytes]] | None]:
    """Worker: items ``start`` ... ``stop - 1`` of one task."""
    task_name, start, stop, seed = job
    return [make_item(task_name, i, seed=seed) for i in range(start, stop)]


# -- the suite -----------------------------------------------------------------------------------------


def write_shapes_suite(
    out: str | os.PathLike,
    *,
    items_per_task: int = ITEMS_PER_TASK,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the ``shapes`` suite into ``out`` (see the module docstring); returns the folder.

    Refuses a folder that holds anything unless ``overwrite`` (and then only a suite folder).
    """
    if isinstance(items_per_task, bool) or not isinstance(items_per_task, int) or items_per_task < 1:
        raise ConfigError(f"items_per_task must be an int >= 1, got {items_per_task!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty: choose a new folder, or pass overwrite=True (--overwrite)")
    staging = staging_directory(out)
    try:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
        try:
            with show_progress(items_per_task * len(SHAPES_TASKS), "shapes suite", "item", enabled=progress) as bar:
                for name, task in SHAPES_TASKS.items():
                    _write_items(staging / name, task, _collect(name, items_per_task, seed, pool, workers, bar))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        info = {
            "name": "shapes",
            "generator": "polymodal.data.shapes",
            "generator_version": GENERATOR_VERSION,
            "split": SPLIT,
            "seed": seed,
            "items_per_task": items_per_task,
            "items_for_95_margin_5_points": ITEMS_PER_TASK,
            "tasks": list(SHAPES_TASKS),
        }
        write_text_atomic(staging / SUITE_FILENAME, json.dumps(info, indent=2) + "\n")
        swap_directory(staging, out, marker=SUITE_FILENAME)
    except FileExistsError as exc:  # swap_directory refuses a folder that is not a suite
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(str(exc)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _collect(name: str, n: int, seed: int, pool, workers: int, bar) -> list[tuple[dict, dict[str, bytes]]]:
    """The first ``n`` items of a task, scanning sample indices in rounds (perception tasks keep
    about one sample in five, so they scan about five times as many)."""
    oversample = 6 if SHAPES_TASKS[name].question_ability else 1
    items, start = [], 0
    while len(items) < n:
        want = (n - len(items)) * oversample
        size = max(1, -(-want // (4 * workers)))
        jobs = [(name, s, min(s + size, start + want), seed) for s in range(start, start + want, size)]
        chunks = pool.map(_make_chunk, jobs) if pool is not None else map(_make_chunk, jobs)
        for chunk in chunks:
            found = [item for item in chunk if item is not None][: n - len(items)]
            items += found
            bar.update(len(found))
        start += want
    return items


def shapes_suite_is_current(folder: Path, items_per_task: int, seed: int) -> bool:
    """Whether ``folder`` holds a shapes suite of this generator version and seed with enough items."""
    try:
        info = json.loads((folder / SUITE_FILENAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return (
        info.get("name") == "shapes"
        and info.get("generator_version") == GENERATOR_VERSION
        and info.get("seed") == seed
        and info.get("items_per_task", 0) >= items_per_task
        and info.get("tasks") == list(SHAPES_TASKS)
    )


def resolve_suite(
    suite: str | os.PathLike, *, limit: int | None = None, seed: int = 0, workers: int = 2, progress: bool = True
) -> Path:
    """The folder of ``suite``: a suite or task folder as given, or a built-in suite's installed
    folder under :func:`~polymodal.eval.tasks.eval_home`, written first if missing or too small
    (``limit`` items per task if given, else the full size)."""
    path = Path(suite)
    if path.is_dir():
        return path
    name = str(suite)
    if name not in list_builtin_suites():
        home = eval_home()
        installed = sorted(p.name for p in home.iterdir() if p.is_dir()) if home.is_dir() else []
        raise ConfigError(
            f"no suite folder {name!r}, and it is not a built-in suite ({', '.join(list_builtin_suites())}); "
            f"installed under {home}: {', '.join(installed) or 'none'}"
        )
    folder = eval_home() / name
    needed = min(limit, ITEMS_PER_TASK) if limit is not None else ITEMS_PER_TASK
    if not shapes_suite_is_current(folder, needed, seed):
        write_shapes_suite(folder, items_per_task=needed, seed=seed, workers=workers, progress=progress,
                           overwrite=True)  # fmt: skip
    load_suite(folder)  # fail here, with the file and line, if it was edited into something invalid
    return folder
