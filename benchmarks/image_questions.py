"""How fast the tiny model learns to answer questions about pictures, when that is all it is trained on.

A focused check of the model's own ability to read a picture, minutes instead of a whole quickstart:
shapes-world chats (a 32 px picture of one or two objects, a question of one ``--ability``, its answer)
tokenized with the built-in vocabulary, the quickstart's model (``tiny``, modality experts, image codes'
embeddings started from their appearance) trained on the answers alone with the library's AdamW and
warmup + cosine schedule, then scored on held-out chats as the quickstart scores its questions (the
likeliest of four options; chance 25%). Each ``--variants`` entry changes the model config or how the
image codes' embeddings start, so that a change is measured before a whole quickstart is spent on it:

    python benchmarks/image_questions.py --ability colour --steps 200 --seeds 0,1 \
        --variants "as before:embed_scale=1" "scaled:embed_scale=16" \
        --json benchmarks/results/image_questions_colour_cpu.json

A variant is ``NAME:key=value,key=value``: ``media_embeddings`` (appearance, codes, random) or any
:class:`~polymodal.model.ModelConfig` field (numbers are read as numbers). ``--turns K`` asks up to K
different questions about each training picture in one chat (held-out chats keep one). Each run's result
also holds its final accuracy ``by_group``: by the number of objects in the picture and by ability.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_name

from polymodal.content import Document
from polymodal.data.shapes.questions import image_question
from polymodal.data.shapes.render import render_scene
from polymodal.data.shapes.world import random_scene
from polymodal.files import write_text_atomic
from polymodal.generation import option_scores
from polymodal.model import Transformer, preset
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir
from polymodal.tokenizers.sequence import pad_batch
from polymodal.train.loop import build_optimizer, init_media_embeddings
from polymodal.train.losses import next_token_losses
from polymodal.train.stages import StageConfig


def chats(codec: DocumentTokenizer, n: int, ability: str, size: int, seed: int, split: int, turns: int = 1):
    """``n`` (token sequence with the answers' tokens trained, picture, first question, objects); ``split``
    seeds apart. With ``turns`` > 1 a chat asks up to that many different questions about its picture."""
    rng = np.random.default_rng([seed, split])
    out = []
    while len(out) < n:
        scene = random_scene(rng, max_objects=2)
        asked: dict[str, object] = {}
        for _ in range(3 * turns):  # a few draws per turn: the same question drawn twice counts once
            try:
                question = image_question(scene, rng, ability=None if ability == "any" else f"perception/{ability}")
            except ValueError as exc:  # this scene cannot answer that question unambiguously: draw another
                if "no image question" in str(exc):
                    raise SystemExit(str(exc)) from None
                break
            asked.setdefault(question.text, question)
            if len(asked) == turns:
                break
        if not asked:
            continue
        picture = render_scene(scene, size=size)
        questions = list(asked.values())
        messages = [("user", [picture, questions[0].text]), ("assistant", questions[0].answer)]
        for q in questions[1:]:
            messages += [("user", q.text), ("assistant", q.answer)]
        out.append((codec.encode(Document.chat(*messages)), picture, questions[0], len(scene.objects)))
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    changes = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        try:
            changes[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            changes[key.strip()] = value.strip()
    return name, changes


def accuracy(run: Run, test: list, batch_size: int = 16) -> tuple[float, dict[str, float]]:
    """The share of ``test`` answered right, and the same by number of objects and by ability."""
    run.model.eval()
    right = []
    with torch.no_grad():
        for k in range(0, len(test), batch_size):
            chunk = test[k : k + batch_size]
            prompts = [Document.chat(("user", [picture, q.text])) for _, picture, q, _ in chunk]
            scores = option_scores(run, prompts, [q.options for _, _, q, _ in chunk])
            right += [int(s.argmax()) == q.answer_index for s, (_, _, q, _) in zip(scores, chunk, strict=True)]
    run.model.train()
    groups: dict[str, list[bool]] = {}
    for ok, (_, _, q, objects) in zip(right, test, strict=True):
        for key in (f"{objects} object{'s' if objects > 1 else ''}", q.ability.removeprefix("perception/")):
            groups.setdefault(key, []).append(ok)
    return sum(right) / len(right), {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}


def train_one(codec: DocumentTokenizer, train: list, test: list, changes: dict, args, seed: int) -> dict:  # noqa: ANN001
    changes = dict(changes)
    source = changes.pop("media_embeddings", "appearance")
    torch.manual_seed(seed)
    model = Transformer(preset("tiny", codec.vocab.size, modality_experts=True, **changes))
    if source != "random":
        init_media_embeddings(model, codec, source)
    stage = StageConfig(name="questions", data={"-": 1.0}, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        warmup_steps=10)  # fmt: skip
    optimizer, scheduler = build_optimizer(model, torch.nn.Module(), stage, torch.device("cpu"))
    run = Run(model=model, tokenizer=codec)
    rng = np.random.default_rng([seed, 3])
    curve, start = [], time.perf_counter()
    for step in range(args.steps):
        batch = pad_batch([train[i][0] for i in rng.integers(0, len(train), args.batch_size)], codec.vocab.pad_id)
        logits = model(batch.ids, batch.positions, batch.modality, batch.attention_mask)
        loss = next_token_losses(logits, batch.ids, batch.loss_weight).sum() / batch.loss_weight[:, 1:].sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if (step + 1) % max(1, args.steps // 4) == 0:
            overall, groups = accuracy(run, test)
            curve.append({"step": step + 1, "loss": round(loss.item(), 4), "accuracy": overall})
            print(f"  step {step + 1}: loss {loss.item():.3f}, held-out {curve[-1]['accuracy']:.1%} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    print("  by group: " + ", ".join(f"{k} {v:.0%}" for k, v in groups.items()), file=sys.stderr, flush=True)
    return {"accuracy": curve[-1]["accuracy"], "by_group": groups, "curve": curve,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ability", default="colour", help="colour, shape, count, position, spatial-relation, any")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train", type=int, default=4000, help="training chats (drawn from with replacement)")
    parser.add_argument("--test", type=int, default=300, help="held-out chats")
    parser.add_argument("--size", type=int, default=32, help="pictures' side in pixels")
    parser.add_argument("--turns", type=int, default=1, help="questions per training chat, all about its picture")
    parser.add_argument("--seeds", default="0", help="comma-separated: each seed draws its own data and model")
    parser.add_argument("--variants", nargs="+", default=["as built:"], help="NAME:key=value,... (see above)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codec = DocumentTokenizer.load(default_vocabulary_dir())
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = dict(parse_variant(v) for v in args.variants)
    results = {name: {} for name in variants}
    for seed in seeds:
        train = chats(codec, args.train, args.ability, args.size, seed, 0, args.turns)
        test = chats(codec, args.test, args.ability, args.size, seed, 1)
        for name, changes in variants.items():
            print(f"{name} ({changes}), seed {seed}", file=sys.stderr, flush=True)
            results[name][str(seed)] = train_one(codec, train, test, changes, args, seed)
    summary = {}
    for name, by_seed in results.items():
        scores = [r["accuracy"] for r in by_seed.values()]
        summary[name] = {"mean": statistics.mean(scores), "min": min(scores), "max": max(scores)}
        print(f"{name:<24} held-out {summary[name]['mean']:.1%} (range {min(scores):.1%}-{max(scores):.1%}, "
              f"{len(scores)} seeds)")  # fmt: skip
    out = {
        "benchmark": "image_questions", "machine": machine_name(torch.device("cpu")),
        "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "variants": variants, "chance": 0.25, "results": results, "summary": summary,
    }  # fmt: skip
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
