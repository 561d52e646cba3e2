"""``polymodal experiment fusion``: the native (early-fusion) design against late fusion and a pipeline,
trained on the same corpus with the same budget and scored on the same held-out questions.

The three arms (``OUT/<arm>/``), all on the quickstart's shapes-world corpus, vocabulary and held-out
questions (``OUT/data/``, prepared once by :func:`~polymodal.train.quickstart.prepare_data`):

- ``early``: the quickstart recipe itself: one model over interleaved text, image and audio tokens
  (``align`` → ``pretrain`` → ``instruct``).
- ``late``: a text backbone of the same preset that reads media through gated cross-attention from a
  media encoder (:mod:`polymodal.model.fusion`), trained through the same ``pretrain`` → ``instruct``
  stages on the same folders less the two that write media (it writes text only) and without
  ``align`` (there is no shared space to align).
- ``pipeline``: a *describer* of the same preset (media → text: captions, transcripts, sound labels,
  and timed descriptions of videos) and a text-only *reasoner* of the same preset that answers from
  the descriptions (:class:`~polymodal.pipeline.Pipeline`). The reasoner learns from the corpus's
  questions with their media replaced by the same kind of descriptions, written from the corpus's
  ground truth; at test time it reads what the describer wrote. Their steps add up to the others'.

How they are matched: the same backbone preset (width, depth, heads), the same data folders, the same
row length and rows per step, and the same number of optimizer steps (the early arm's 40 ``align`` steps
count; its pairs are short): the report gives each arm's trained tokens, its total parameters and
the parameters one token goes through (modality experts and the pipeline's second model add
parameters, not per-token compute). Scores: the quickstart's held-out questions (image, spoken, sound,
video; 4 options, likeliest option) with and without their media, with 95% Wilson intervals.

Writes ``OUT/report.json``, ``OUT/report.md``, ``OUT/accuracy.png`` and ``OUT/learning_curves.png``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from polymodal.content import Document, Message, Text
from polymodal.data.shapes import read_shards
from polymodal.data.shapes.language import article, caption
from polymodal.data.shapes.world import Scene
from polymodal.data.tokenized import META_FILENAME, write_tokenized
from polymodal.errors import ConfigError
from polymodal.eval.scoring import wilson_interval
from polymodal.files import write_bytes_atomic, write_text_atomic
from polymodal.pipeline import DEFAULT_INSTRUCTIONS, Pipeline
from polymodal.plots import curves, grouped_bars
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer, part_modality
from polymodal.train.loop import TRAIN_FILENAME, Trainer
from polymodal.train.quickstart import QUESTIONS, QuickstartConfig, evaluate_questions, prepare_data
from polymodal.train.stages import Recipe, StageConfig
from polymodal.train.stages import quickstart as quickstart_recipe

ARMS = ("early", "late", "pipeline")
MEDIA_OUT = ("caption_image", "transcript_speech")  # corpus kinds whose targets are media


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    arms: tuple[str, ...] = ARMS
    preset: str = "tiny"  # the backbone of every arm
    scale: float = 1.0  # multiplies every arm's steps
    seed: int = 0
    test_questions: int = 100
    workers: int = 2
    corpus: dict[str, int] | None = None  # samples per corpus kind (default: the quickstart's)
    text_vocab_size: int = 1024

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ConfigError(f"arms must be some of {ARMS}, got {list(self.arms)}")
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")


# -- the pipeline's descriptions ---------------------------------------------------------------------------


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng([int(x) for x in re.findall(r"\d+", key)] or [0])


def describe_video(video: dict) -> str:
    """A timed description of a corpus video from its ground truth: what moves, what appears when, and
    when the sound plays — "a red circle moves. a blue star appears at 1.5 s. a sound plays at 1.5 s."."""
    lines = [f"{article(m['obj']['colour'] + ' ' + m['obj']['shape'])} moves." for m in video["movers"]]
    for arrival in sorted(video["arrivals"], key=lambda a: a["time"]):
        name = article(arrival["obj"]["colour"] + " " + arrival["obj"]["shape"])
        lines.append(f"{name} appears at {arrival['time']:.1f} s.")
    lines.append(f"a sound plays at {video['sound_time']:.1f} s.")
    return " ".join(lines)


def describe_image(scene: dict, key: str) -> str:
    """A corpus-style caption of a picture's ground truth (the corpus's own caption writer)."""
    return caption(Scene.from_dict(scene), _rng(key))


def describe_sound(sound: dict, key: str) -> str:
    described = article(f"{sound['size']} {sound['colour']} {sound['shape']}")
    return ["{d}", "the sound of {d}", "{d} makes this sound"][int(_rng(key).integers(3))].format(d=described)


def _described(modality: str, text: str) -> Text:
    return Text(f"[{modality}: {text}]")  # the form Pipeline.to_text writes


def describer_documents(corpus: Path, video_fps: float) -> dict[str, Iterator[Document]]:
    """The describer's training chats: (media + the pipeline's instruction) → description."""

    def chat(part, instruction: str, answer: str) -> Document:  # noqa: ANN001
        return Document.chat(("user", [part, instruction]), ("assistant", answer))

    def pictures(kind: str) -> Iterator[Document]:
        for s in read_shards(corpus / kind):
            truth = s.meta["truth"]
            text = truth.get("caption") or describe_image(truth["scene"], s.key)
            yield chat(s.document.parts[0], DEFAULT_INSTRUCTIONS["image"], text)

    def sounds(kind: str) -> Iterator[Document]:
        for s in read_shards(corpus / kind):
            truth = s.meta["truth"]
            yield chat(s.document.parts[0], DEFAULT_INSTRUCTIONS["audio"], truth.get("text") or truth["label"])

    def videos() -> Iterator[Document]:
        for s in read_shards(corpus / "video_qa", video_fps=video_fps):
            yield chat(s.document.parts[0], DEFAULT_INSTRUCTIONS["video"], describe_video(s.meta["truth"]["video"]))

    return {"image_caption": pictures("image_caption"), "image_qa": pictures("image_qa"),
            "speech_transcript": sounds("speech_transcript"), "sound_label": sounds("sound_label"),
            "video_qa": videos()}  # fmt: skip


def reasoner_documents(corpus: Path) -> dict[str, Iterator[Document]]:
    """The reasoner's training chats: the corpus's questions with each media part replaced by its
    description written from the ground truth, as :meth:`Pipeline.to_text` writes the describer's."""

    def rewrite(kind: str) -> Iterator[Document]:
        for s in read_shards(corpus / kind):
            truth = s.meta["truth"]
            messages = []
            for message in s.document.messages:
                parts = []
                for part in message.parts:
                    modality = part_modality(part)
                    if modality == "text":
                        parts.append(part)
                    elif modality == "image":
                        parts.append(_described("image", describe_image(truth["scene"], s.key)))
                    elif modality == "video":
                        parts.append(_described("video", describe_video(truth["video"])))
                    elif kind == "spoken_image_qa":  # the spoken question, transcribed
                        parts.append(_described("audio", truth["questions"][0]["text"]))
                    else:
                        parts.append(_described("audio", describe_sound(truth["sound"], s.key)))
                messages.append(Message(message.role, tuple(parts)))
            yield Document(messages)

    return {kind: rewrite(kind) for kind in QUESTIONS.values()}


def _write(documents: dict[str, Iterator[Document]], codec: DocumentTokenizer, target: Path, max_length: int) -> None:
    for kind, docs in documents.items():
        if not (target / kind / META_FILENAME).is_file():
            write_tokenized(docs, codec, target / kind, max_length=max_length)


# -- the arms' recipes -------------------------------------------------------------------------------------


def early_recipe(tok: Path, vocab: Path, config: FusionConfig) -> Recipe:
    return quickstart_recipe(tok, vocab=str(vocab), scale=config.scale).with_(
        name="fusion-early", model=config.preset, seed=config.seed
    )


def late_recipe(tok: Path, vocab: Path, config: FusionConfig) -> Recipe:
    """The early recipe's next-token stages, less the folders whose targets are media, on late fusion."""
    base = early_recipe(tok, vocab, config)
    stages = tuple(
        replace(s, data={p: w for p, w in s.data.items() if Path(p).name not in MEDIA_OUT}, cond_dropout=0.0)
        for s in base.stages
        if s.objective != "align"
    )
    directions = tuple(d for d in base.directions if d.endswith("->text"))
    return base.with_(name="fusion-late", architecture="late", stages=stages, directions=directions,
                      model_overrides={"max_seq_len": base.model_overrides.get("max_seq_len", 1024)})  # fmt: skip


def pipeline_recipes(folder: Path, vocab: Path, config: FusionConfig, early: Recipe) -> tuple[Recipe, Recipe]:
    """The describer and the reasoner; their steps add up to the early arm's (its align steps included)."""
    total = sum(s.steps for s in early.stages)
    describe_steps = max(2, round(total * 0.55))
    reason_steps = max(2, total - describe_steps)
    base = early.stages[-1]
    describe = StageConfig(
        name="describe", data={str(folder / "describer" / k): (2.0 if k == "video_qa" else 1.0)
                               for k in ("image_caption", "image_qa", "speech_transcript", "sound_label", "video_qa")},
        steps=describe_steps, batch_size=base.batch_size, seq_len=base.seq_len, lr=2e-3,
        warmup_steps=min(15, describe_steps - 1),
    )  # fmt: skip
    reason = StageConfig(
        name="reason", data={str(folder / "reasoner" / k): w for k, w in
                             {"image_qa": 3.0, "spoken_image_qa": 2.0, "sound_qa": 1.0, "video_qa": 3.0}.items()},
        steps=reason_steps, batch_size=base.batch_size, seq_len=base.seq_len, lr=2e-3,
        warmup_steps=min(15, reason_steps - 1),
    )  # fmt: skip
    common = {"model": config.preset, "vocab": str(vocab), "seed": config.seed, "checkpoint_every": 50, "workers": 1}
    reads = ("image->text", "audio->text", "video->text")
    describer = Recipe(name="fusion-pipeline-describer", stages=(describe,), directions=reads,
                       model_overrides=dict(early.model_overrides), **common)  # fmt: skip
    reasoner = Recipe(
        name="fusion-pipeline-reasoner",
        stages=(reason,),
        directions=("text->text",),
        model_overrides={"max_seq_len": early.model_overrides.get("max_seq_len", 1024)},
        **common,
    )
    return describer, reasoner


# -- running and reporting ---------------------------------------------------------------------------------


@dataclass
class ArmResult:
    arm: str
    accuracy: dict[str, float]
    blind: dict[str, float]
    by_ability: dict[str, dict[str, float]]
    questions: int
    parameters: int  # every trainable number
    parameters_per_token: int  # the ones a token goes through (one modality expert; one of the pipeline's models)
    tokens: int  # trained tokens, every stage (and model) together
    train_seconds: float
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # stage -> (cumulative tokens, loss)


def _parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    experts = getattr(getattr(model, "config", None), "modality_experts", False)
    if not experts:
        return total, total
    per_token = 0  # one expert of each layer's modality experts
    for name, p in model.named_parameters():
        match = re.search(r"experts\.(\d+)\.", name)
        if match is None or match.group(1) == "0":
            per_token += p.numel()
    return total, per_token


def _curves(train_dir: Path, offset: int = 0) -> tuple[dict[str, list[tuple[int, float]]], int]:
    curves: dict[str, list[tuple[int, float]]] = {}
    tokens = 0
    for line in (train_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and "tokens" in row and "stage" in row and "step" in row:
            tokens = int(row["tokens"])
            curves.setdefault(row["stage"], []).append((offset + tokens, float(row["loss"])))
    return curves, tokens


def _train(recipe: Recipe, out: Path, progress: bool) -> Run:
    resume = (out / "train" / TRAIN_FILENAME).is_file()
    return Trainer(recipe, out / "train", resume=resume, progress=progress, run_dir=out / "run").fit()


def run_fusion(out: str | Path, config: FusionConfig | None = None, *, resume: bool = False, progress: bool = True,
               say: Callable[[str], None] = print) -> list[ArmResult]:  # fmt: skip
    """Prepare the data, train and score every arm of ``config``, and write the report into ``out``."""
    config = config or FusionConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty: choose a new folder, or pass --resume to continue the experiment")
    qs = QuickstartConfig(scale=config.scale, seed=config.seed, test_questions=config.test_questions,
                          workers=config.workers, text_vocab_size=config.text_vocab_size)  # fmt: skip
    if config.corpus is not None:
        qs = replace(qs, corpus=dict(config.corpus))
    data = out / "data"
    say("data: corpus, vocabulary, tokenized corpus (as the quickstart's)")
    vocab = prepare_data(data, qs, progress=progress)
    early = early_recipe(data / "tok", vocab, config)
    results = []
    for arm in config.arms:
        say(f"{arm}: training")
        started = time.perf_counter()
        if arm == "pipeline":
            codec = DocumentTokenizer.load(vocab)
            _write(describer_documents(data / "corpus", qs.video_fps), codec, data / "pipeline" / "describer",
                   qs.max_length)  # fmt: skip
            _write(reasoner_documents(data / "corpus"), codec, data / "pipeline" / "reasoner", qs.max_length)
            describer_recipe, reasoner_recipe = pipeline_recipes(data / "pipeline", vocab, config, early)
            describer = _train(describer_recipe, out / arm / "describer", progress)
            reasoner = _train(reasoner_recipe, out / arm / "reasoner", progress)
            seconds = time.perf_counter() - started
            pipeline = Pipeline({"image": describer, "audio": describer, "video": describer}, reasoner)
            say(f"{arm}: held-out questions (the describer writes, the reasoner answers)")
            scores = evaluate_questions(reasoner, data / "test", config.test_questions, video_fps=qs.video_fps,
                                        prepare=pipeline.to_text)  # fmt: skip
            curves, tokens = _curves(out / arm / "describer" / "train")
            more, more_tokens = _curves(out / arm / "reasoner" / "train", offset=tokens)
            curves, tokens = {**curves, **more}, tokens + more_tokens
            total = sum(_parameters(m.model)[0] for m in (describer, reasoner))
            per_token = max(_parameters(m.model)[1] for m in (describer, reasoner))
        else:
            recipe = early if arm == "early" else late_recipe(data / "tok", vocab, config)
            run = _train(recipe, out / arm, progress)
            seconds = time.perf_counter() - started
            say(f"{arm}: held-out questions")
            scores = evaluate_questions(run, data / "test", config.test_questions, video_fps=qs.video_fps)
            curves, tokens = _curves(out / arm / "train")
            total, per_token = _parameters(run.model)
        results.append(ArmResult(arm, scores.accuracy, scores.blind, scores.by_ability, config.test_questions, total,
                                 per_token, tokens, round(seconds, 1), curves))  # fmt: skip
    write_report(out, results, config)
    return results


def _interval(accuracy: float, n: int) -> str:
    low, high = wilson_interval(round(accuracy * n), n)
    return f"{accuracy:.0%} [{low:.0%}, {high:.0%}]"


def report_markdown(results: list[ArmResult], config: FusionConfig) -> str:
    kinds = list(results[0].accuracy)
    lines = ["# Fusion experiment: native (early) vs late fusion vs pipeline", "",
             f"Preset `{config.preset}`, scale {config.scale}, seed {config.seed}; {results[0].questions} held-out "
             "questions per input kind, 4 options (chance 25%), the likeliest option; 95% Wilson intervals.", "",
             "| arm | " + " | ".join(kinds) + " | parameters (per token) | trained tokens | train time |",
             "|---|" + "---|" * len(kinds) + "---|---|---|"]  # fmt: skip
    for r in results:
        cells = [f"{_interval(r.accuracy[k], r.questions)} (without: {r.blind[k]:.0%})" for k in kinds]
        size = f"{r.parameters / 1e6:.1f}M ({r.parameters_per_token / 1e6:.1f}M)"
        lines.append(f"| {r.arm} | " + " | ".join(cells) + f" | {size} | {r.tokens / 1e6:.2f}M | "
                     f"{r.train_seconds / 60:.1f} min |")  # fmt: skip
    lines += ["", "## By ability", "", "| ability | " + " | ".join(r.arm for r in results) + " |",
              "|---|" + "---|" * len(results)]  # fmt: skip
    for ability in results[0].by_ability:
        cells = [f"{r.by_ability[ability]['accuracy']:.0%} ({r.by_ability[ability]['blind']:.0%})" for r in results]
        lines.append(f"| {ability} (n={results[0].by_ability[ability]['questions']}) | " + " | ".join(cells) + " |")
    lines += ["", "In brackets: the same questions without their media.", "",
              "![held-out accuracy](accuracy.png)", "", "![learning curves](learning_curves.png)", ""]  # fmt: skip
    return "\n".join(lines)


def write_report(out: Path, results: list[ArmResult], config: FusionConfig) -> None:
    write_text_atomic(
        out / "report.json",
        json.dumps({"config": asdict(config), "arms": [asdict(r) for r in results]}, indent=2) + "\n",
    )
    write_text_atomic(out / "report.md", report_markdown(results, config))
    write_bytes_atomic(out / "accuracy.png", accuracy_plot(results))
    write_bytes_atomic(out / "learning_curves.png", curves_plot(results))


def accuracy_plot(results: list[ArmResult]) -> bytes:
    """Bars per input kind and arm with 95% intervals; black ticks: the same questions without media."""
    kinds = list(results[0].accuracy)

    def interval(r: ArmResult, kind: str) -> tuple[float, float, float]:
        return (r.accuracy[kind], *wilson_interval(round(r.accuracy[kind] * r.questions), r.questions))

    series = {r.arm: [interval(r, k) for k in kinds] for r in results}
    markers = {r.arm: [r.blind[k] for k in kinds] for r in results}
    return grouped_bars(kinds, series, ylabel="held-out accuracy", chance=0.25, markers=markers,
                        marker_label="without media")  # fmt: skip


def curves_plot(results: list[ArmResult]) -> bytes:
    """Training loss against trained tokens (millions), one panel per arm, one line per stage."""
    panels = {r.arm: {stage: [(t / 1e6, loss) for t, loss in points] for stage, points in r.curves.items()}
              for r in results}  # fmt: skip
    return curves(panels, xlabel="trained tokens (M)", ylabel="training loss")
