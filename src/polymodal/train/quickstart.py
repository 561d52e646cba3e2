"""``polymodal quickstart``: the whole CPU recipe in one call, minutes from a fresh install.

corpus → tokenizers → pretokenize → align → pretrain → instruct → held-out questions → samples::

    OUT/data/corpus/<kind>/      shapes-world shards (train split), OUT/data/test/<kind>/ (test split)
    OUT/data/vocab/              the vocabulary: a BPE trained on the corpus text + the image/audio tokenizers
    OUT/data/tok/<kind>/         the corpus, tokenized once
    OUT/train/                   the trainer's folder (checkpoints, metrics.jsonl)
    OUT/run/                     the trained run: `polymodal generate OUT …`
    OUT/samples/                 drawings (PNG), speech (WAV) and answers (TXT) of the trained run
    OUT/report.json              held-out accuracy per input kind, with and without the media

Every step is skipped when its output is already complete, so an interrupted quickstart started
again with ``resume=True`` continues where it stopped (training from its newest checkpoint).

The image and audio tokenizers are the built-in ``tiny`` ones, trained on shapes world by the
commands in ``assets/README.md`` (far longer than this budget allows). ``media_tokenizer_steps=N``
(``--media-tokenizer-steps N``) trains both here instead, N steps each, on the same corpus
(``OUT/data/tokenizers/{image,audio}/`` with their ``report.json``).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from polymodal.content import Document, Message
from polymodal.data.shapes import make_shapes, read_shards, read_texts
from polymodal.data.tokenized import META_FILENAME, write_tokenized
from polymodal.errors import ConfigError
from polymodal.files import write_bytes_atomic, write_text_atomic
from polymodal.generation import SamplingConfig, generate, option_scores
from polymodal.run import Run
from polymodal.tokenizers import load_tokenizer
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir
from polymodal.tokenizers.text import TextTokenizer
from polymodal.train.loop import TRAIN_FILENAME, Trainer
from polymodal.train.stages import quickstart as quickstart_recipe

# How many training samples of each corpus kind, and which kinds are asked about at the end.
CORPUS = {
    "image_caption": 1500, "caption_image": 1500, "speech_transcript": 800, "transcript_speech": 500,
    "sound_label": 600, "interleaved": 300, "digit_caption": 300,
    "image_qa": 4000, "spoken_image_qa": 2000, "sound_qa": 1000, "video_qa": 1500,
}  # fmt: skip
QUESTIONS = {"image": "image_qa", "speech": "spoken_image_qa", "sound": "sound_qa", "video": "video_qa"}


@dataclass(frozen=True, kw_only=True)
class QuickstartConfig:
    corpus: dict[str, int] = field(default_factory=lambda: dict(CORPUS))
    test_questions: int = 100  # held-out questions per input kind
    text_vocab_size: int = 1024
    max_length: int = 512
    max_objects: int = 2  # objects per picture: the easy end of shapes world (up to 4), learnable in minutes
    # True: pictures of large objects on light, untextured backgrounds. Trained on colour questions
    # alone, the tiny model reads those (80% after 200 steps) and not the whole world's at 32 px (22%);
    # in the whole quickstart recipe it did not help (seed 0: image 38% against 35% without the
    # picture), so the quickstart keeps the whole world's pictures.
    easy_scenes: bool = False
    image_size: int = 32  # pictures in pixels: 4x4 codes each, read in minutes (64 px: 8x8 codes, read less well)
    video_size: int = 32  # video frames in pixels: 4x4 codes each, so that a clip's frames and sound fit max_length
    video_fps: float = 2.0  # frames per second read from the corpus videos (written at 10): 2-4 s clips -> 4-8 frames
    scale: float = 1.0  # multiplies the recipe's steps
    seed: int = 0
    workers: int = 2
    media_tokenizer_steps: int = 0  # 0: the built-in image and audio tokenizers; N: train both here, N steps each


@dataclass
class QuickstartReport:
    accuracy: dict[str, float]  # held-out multiple-choice accuracy per input kind (likeliest option)
    blind: dict[str, float]  # the same questions without their media
    chance: float
    questions: int
    samples: list[str]
    # "image perception/colour" -> {"questions": n, "accuracy": ..., "blind": ...}: which abilities the scores come from
    by_ability: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step ("corpus", "train" …) of this call

    def format(self) -> str:
        lines = [f"held-out questions, {self.questions} per input kind (4 options, chance {self.chance:.0%}):",
                 f"  {'input':<7} {'accuracy':>8} {'without the media':>18}"]  # fmt: skip
        for kind, acc in self.accuracy.items():
            lines.append(f"  {kind:<7} {acc:8.1%} {self.blind[kind]:18.1%}")
        if self.by_ability:
            lines.append(f"  {'by ability':<36} {'n':>4} {'accuracy':>8} {'without':>8}")
            for name, row in self.by_ability.items():
                lines.append(f"  {name:<36} {row['questions']:4d} {row['accuracy']:8.1%} {row['blind']:8.1%}")
        if self.seconds:
            lines.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def run_quickstart(out: str | Path, config: QuickstartConfig | None = None, *, resume: bool = False,
                   progress: bool = True, say: Callable[[str], None] = print) -> QuickstartReport:  # fmt: skip
    config = config or QuickstartConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty: choose a new folder, or pass --resume to continue a quickstart there")
    data = out / "data"
    seconds: dict[str, float] = {}
    clock = [time.perf_counter(), None]

    def step(name: str, line: str) -> None:  # a step begins: the one before it ends
        now = time.perf_counter()
        if clock[1] is not None:
            seconds[clock[1]] = round(now - clock[0], 1)
        clock[:] = [now, name]
        if line:
            say(line)

    vocab_dir = prepare_data(data, config, progress=progress, step=step)
    step("train", "4/6 train: align -> pretrain -> instruct")
    recipe = quickstart_recipe(data / "tok", vocab=str(vocab_dir), scale=config.scale)
    recipe = recipe.with_(seed=config.seed)
    trainer = Trainer(recipe, out / "train", resume=(out / "train" / TRAIN_FILENAME).is_file(), progress=progress,
                      run_dir=out / "run")  # fmt: skip
    run = trainer.fit()
    step("questions", "5/6 held-out questions")
    report = evaluate_questions(run, data / "test", config.test_questions, video_fps=config.video_fps)
    step("samples", "6/6 samples")
    samples = write_samples(run, data / "test", out / "samples", video_fps=config.video_fps)
    report.samples = [str(p.relative_to(out)) for p in samples]
    step("", "")  # the last step ends
    report.seconds = seconds
    write_text_atomic(out / "report.json", json.dumps(asdict(report), indent=2) + "\n")
    return report


def prepare_data(data: Path, config: QuickstartConfig, *, progress: bool = True,
                 step: Callable[[str, str], None] = lambda name, line: None) -> Path:  # fmt: skip
    """Steps 1-3 into ``data``: the corpus (``corpus/``, and ``test/`` for the questions), the vocabulary
    (returned) and the tokenized corpus (``tok/``); each part already complete is kept."""
    step("corpus", "1/6 corpus")
    for kind, n in config.corpus.items():
        _corpus(data / "corpus" / kind, kind, n, "train", config, progress)
    for kind in QUESTIONS.values():
        _corpus(data / "test" / kind, kind, config.test_questions, "test", config, progress)
    step("tokenizers", "2/6 tokenizers")
    vocab_dir = _vocabulary(data, config)
    step("pretokenize", "3/6 pretokenize")
    todo = [kind for kind in config.corpus if not (data / "tok" / kind / META_FILENAME).is_file()]
    jobs = [(data / "corpus" / kind, vocab_dir, data / "tok" / kind, config.max_length, config.video_fps)
            for kind in todo]  # fmt: skip
    if config.workers > 1 and len(jobs) > 1:  # one kind per process, each on one thread
        with ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_pretokenize, jobs))
    else:
        for job in jobs:
            _pretokenize(job)
    return vocab_dir


def _pretokenize(job: tuple[Path, Path, Path, int, float]) -> None:
    corpus, vocab_dir, target, max_length, video_fps = job
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)
    codec = DocumentTokenizer.load(vocab_dir)
    documents = (s.document for s in read_shards(corpus, video_fps=video_fps))
    write_tokenized(documents, codec, target, max_length=max_length)


def _corpus(target: Path, kind: str, n: int, split: str, config: QuickstartConfig, progress: bool) -> None:
    if not (target / "manifest.json").is_file():
        make_shapes(target, n=n, seed=config.seed, kinds=(kind,), split=split, image_size=config.image_size,
                    video_size=config.video_size, max_objects=config.max_objects, easy_scenes=config.easy_scenes,
                    workers=config.workers, progress=progress, overwrite=True)  # fmt: skip


def _vocabulary(data: Path, config: QuickstartConfig) -> Path:
    """A BPE on the corpus text (compact ids for its words) beside the image and audio tokenizers."""
    target = data / "vocab"
    if (target / "vocab.json").is_file():
        return target
    texts = [text for kind in config.corpus for text in read_texts(data / "corpus" / kind)]
    text = TextTokenizer.train(texts, vocab_size=config.text_vocab_size)
    if config.media_tokenizer_steps:
        media = [_train_media_tokenizer(data / "tokenizers" / m, m, config) for m in ("image", "audio")]
    else:
        media = [load_tokenizer(default_vocabulary_dir() / "tokenizers" / m) for m in ("image", "audio")]
    DocumentTokenizer.from_tokenizers([text, *media]).save(target)
    return target


def _train_media_tokenizer(target: Path, kind: str, config: QuickstartConfig):
    """The ``tiny`` image or audio tokenizer trained on shapes world (kept, with its report, if already there)."""
    from polymodal.tokenizers import audio, image
    from polymodal.tokenizers.recipes import audio_data, image_data, write_report
    from polymodal.tokenizers.training import TrainConfig

    if (target / "report.json").is_file():
        return load_tokenizer(target)
    module, cls = (image, image.ImageTokenizer) if kind == "image" else (audio, audio.AudioTokenizer)
    preset, steps = module.preset("tiny"), config.media_tokenizer_steps
    batch, lr = (16, 2e-3) if kind == "image" else (8, 1e-3)
    seen = max(2, steps * batch)  # no more examples than the steps can look at
    if kind == "image":
        training, held_out = image_data([], side=preset.buckets[-1], seed=config.seed, corpus_images=min(4000, seen))
    else:
        training, held_out = audio_data([], seed=config.seed, corpus_clips=min(2000, seen))
    train = TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(100, steps // 10), eval_every=steps,
                        seed=config.seed, progress=False)  # fmt: skip
    tokenizer, result = cls.train(training, config=preset, train=train, held_out=held_out)
    tokenizer.save(target)
    write_report(target, kind=kind, preset="tiny", data="shapes-world corpus (built in)", train=train, result=result)
    return tokenizer


# -- held-out questions and samples ----------------------------------------------------------------------


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def _question_prompt(document: Document, *, blind: bool) -> tuple[Document, str]:
    """The first user turn (without its media when ``blind``) and the expected answer."""
    user, answer = document.messages[0], document.messages[1]
    parts = tuple(p for p in user.parts if not blind or hasattr(p, "text"))
    if not parts:
        parts = ("",)
    return Document([Message("user", parts)]), answer.parts[0].text


def evaluate_questions(run: Run, test_dir: Path, limit: int, batch_size: int = 8, *,
                       video_fps: float | None = None,
                       prepare: Callable[[Document], Document] | None = None) -> QuickstartReport:  # fmt: skip
    """Held-out corpus questions, asked with and without their media: a question is answered right
    when the option the run finds likeliest as its answer is the reference (4 options, so chance is
    25%, as in lm-evaluation-harness's multiple choice). ``prepare`` rewrites each prompt before the
    run reads it (a pipeline's media → text descriptions)."""
    accuracy, blind, by_ability = {}, {}, {}
    for name, kind in QUESTIONS.items():
        samples = list(itertools.islice(read_shards(test_dir / kind, video_fps=video_fps), limit))
        questions = [s.meta["truth"]["questions"][0] for s in samples]
        right = {}
        for target, is_blind in ((accuracy, False), (blind, True)):
            prompts = [_question_prompt(s.document, blind=is_blind)[0] for s in samples]
            prompts = [prepare(p) for p in prompts] if prepare is not None else prompts
            right[is_blind] = []
            for k in range(0, len(samples), batch_size):
                chunk = questions[k : k + batch_size]
                scores = option_scores(run, prompts[k : k + batch_size], [q["options"] for q in chunk])
                right[is_blind] += [int(s.argmax()) == q["answer_index"] for s, q in zip(scores, chunk, strict=True)]
            target[name] = sum(right[is_blind]) / len(samples)
        for ability in sorted({q["ability"] for q in questions}):
            asked = [i for i, q in enumerate(questions) if q["ability"] == ability]
            by_ability[f"{name} {ability}"] = {
                "questions": len(asked),
                "accuracy": sum(right[False][i] for i in asked) / len(asked),
                "blind": sum(right[True][i] for i in asked) / len(asked),
            }
    return QuickstartReport(accuracy, blind, chance=0.25, questions=limit, samples=[], by_ability=by_ability)


def write_samples(run: Run, test_dir: Path, out: Path, *, video_fps: float | None = None) -> list[Path]:
    """Drawings, speech and answers of the trained run, for a person to look at and listen to."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    captions = ["a big red circle", "a small blue square on the left", "two green triangles"]
    sampling = SamplingConfig(temperature=0.8, top_k=50, seed=0, guidance_scale=3.0, grid=(8, 8))
    for k, caption in enumerate(captions):
        image = generate(run, Document.of(caption), output="image", sampling=sampling,
                         check_direction=False)[0].part  # fmt: skip
        written.append(out / f"draw_{k}.png")
        write_bytes_atomic(written[-1], image.to_png_bytes())
    for k, sentence in enumerate(["a red circle above a blue square", "which shape is green?"]):
        speech = generate(run, Document.of(sentence), output="audio",
                          sampling=SamplingConfig(temperature=0.8, top_k=50, seed=k, max_audio_seconds=4),
                          check_direction=False)[0].part  # fmt: skip
        written.append(out / f"say_{k}.wav")
        write_bytes_atomic(written[-1], speech.to_wav_bytes())
    lines = []
    for name, kind in QUESTIONS.items():
        for sample in itertools.islice(read_shards(test_dir / kind, video_fps=video_fps), 3):
            prompt, answer = _question_prompt(sample.document, blind=False)
            said = generate(run, prompt, sampling=SamplingConfig(temperature=0, max_new_tokens=16),
                            check_direction=False)[0].part.text  # fmt: skip
            question = " ".join(p.text for p in prompt.parts if hasattr(p, "text"))
            lines.append(f"[{name}] {sample.key}: {question!r} -> {said!r} (reference {answer!r})")
    written.append(out / "answers.txt")
    write_text_atomic(written[-1], "\n".join(lines) + "\n")
    return written
