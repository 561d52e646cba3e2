"""Fine-tuning on a user's own small real data: scikit-learn's handwritten digits as a captions folder.

What a user with their own pictures does: a folder of PNGs and ``captions.jsonl`` ("a handwritten
seven"), then ``polymodal finetune RUN --data FOLDER --out OUT``. This script builds that folder
from the digits' ``train`` split (``--pictures`` of them, seeded), fine-tunes the base run through the
same library call the command makes, and scores both runs on every digit of the ``test`` split (never
seen in training): the picture, then four captions (the right one and three other digits), the
likeliest caption is the answer (chance 25%, as lm-evaluation-harness scores multiple choice).

    python benchmarks/finetune_digits.py qs/run --seeds 0,1,2 --json benchmarks/results/finetune_digits_cpu.json

``--learn all`` trains the pictures' codes too (the default trains the captions alone); ``--batch-size``,
``--lora-rank`` and ``--freeze`` are the command's options of those names. Each seed's row also holds
``codes_probe``: a logistic regression on the same training pictures' codes, scored on the same test
digits (ten classes, chance 10%): what a reader of the codes alone reaches, the ceiling to compare with;
``codes_bag_probe`` is the same reader given only how often each code occurs (which codes, not where).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_name

from polymodal.content import Document
from polymodal.data.shapes.digits import DIGIT_NAMES, load_digits, render_digit, split_indices
from polymodal.files import write_text_atomic
from polymodal.generation import option_scores
from polymodal.run import Run
from polymodal.train.finetune import FinetuneConfig, finetune

CAPTION = "a handwritten {}"


def captions_folder(folder: Path, pictures: int, size: int, seed: int) -> None:
    """``pictures`` train-split digits as PNGs with ``captions.jsonl``, as a user would lay them out."""
    labels = load_digits()[1]
    chosen = np.random.default_rng(seed).choice(split_indices("train"), size=pictures, replace=False)
    folder.mkdir(parents=True)
    rows = []
    for index in chosen:
        name = f"digit_{int(index):04d}.png"
        (folder / name).write_bytes(render_digit(int(index), size=size).to_png_bytes())
        rows.append(json.dumps({"file": name, "text": CAPTION.format(DIGIT_NAMES[int(labels[index])])}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


def codes_probes(run: Run, pictures: int, size: int, seed: int) -> dict[str, float]:
    """What a reader of the pictures' codes alone reaches: logistic regression on the image tokenizer's
    codes of the same training pictures, scored on the same test split. ``codes_probe`` reads one one-hot
    vector per cell; ``codes_bag_probe`` their sum, each code's count (which codes, not where)."""
    from sklearn.linear_model import LogisticRegression

    labels = load_digits()[1]
    train = np.random.default_rng(seed).choice(split_indices("train"), size=pictures, replace=False)
    test = split_indices("test")
    tokenizer = run.tokenizer.tokenizer("image")

    def one_hot(indices) -> np.ndarray:  # noqa: ANN001  [pictures, cells, codes]
        rows = []
        for index in indices:
            codes = tokenizer.encode(render_digit(int(index), size=size)).ids.numpy()
            row = np.zeros((len(codes), tokenizer.vocab_size), dtype=np.float32)
            row[np.arange(len(codes)), codes] = 1.0
            rows.append(row)
        return np.stack(rows)

    seen, unseen = one_hot(train), one_hot(test)
    scores = {}
    for name, features in (("codes_probe", lambda x: x.reshape(len(x), -1)), ("codes_bag_probe", lambda x: x.sum(1))):
        probe = LogisticRegression(max_iter=2000).fit(features(seen), labels[train])
        scores[name] = float(probe.score(features(unseen), labels[test]))  # ten digits: chance 10%, not 25%
    return scores


def held_out_accuracy(run: Run, size: int, seed: int, batch_size: int = 8) -> float:
    """Every test-split digit, four captions each (seeded distractors): the share scored right."""
    labels = load_digits()[1]
    rng = np.random.default_rng([seed, 7])
    right = []
    indices = [int(i) for i in split_indices("test")]
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        prompts, options, answers = [], [], []
        for index in chunk:
            truth = int(labels[index])
            others = rng.choice([d for d in range(10) if d != truth], size=3, replace=False)
            choice = [truth, *map(int, others)]
            order = rng.permutation(4)
            prompts.append(Document.of(render_digit(index, size=size)))
            options.append([CAPTION.format(DIGIT_NAMES[choice[k]]) for k in order])
            answers.append(int(np.flatnonzero(order == 0)[0]))
        with torch.no_grad():
            scores = option_scores(run, prompts, options)
        right += [int(s.argmax()) == a for s, a in zip(scores, answers, strict=True)]
    return sum(right) / len(right)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the run to fine-tune (e.g. a quickstart's OUT/run)")
    parser.add_argument("--pictures", type=int, default=400, help="training pictures (train split)")
    parser.add_argument("--size", type=int, default=32, help="the pictures' side in pixels")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: polymodal finetune's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: polymodal finetune's)")
    parser.add_argument("--learn", default="target", choices=("target", "all"))
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default: polymodal finetune's)")
    parser.add_argument("--lora-rank", type=int, default=None, help="LoRA of this rank (default: every weight)")
    parser.add_argument("--freeze", default="", help="comma-separated parameter-name prefixes left untouched")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (data sample and training)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = Run.load(args.base)
    defaults = FinetuneConfig()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        config = FinetuneConfig(steps=args.steps or defaults.steps, lr=args.lr, learn=args.learn, seed=seed,
                                batch_size=args.batch_size or defaults.batch_size, lora_rank=args.lora_rank,
                                freeze=tuple(filter(None, args.freeze.split(","))))  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            captions_folder(Path(tmp) / "digits", args.pictures, args.size, seed)
            start = time.perf_counter()
            tuned = finetune(args.base, [Path(tmp) / "digits"], Path(tmp) / "out", config, progress=False,
                             say=lambda line: print(line, file=sys.stderr))  # fmt: skip
            seconds = time.perf_counter() - start
            row = {"seed": seed, **codes_probes(base, args.pictures, args.size, seed),
                   "base": held_out_accuracy(base, args.size, seed),
                   "tuned": held_out_accuracy(tuned, args.size, seed),
                   "finetune_seconds": round(seconds, 1)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    tuned = [r["tuned"] for r in rows]
    result = {
        "benchmark": "finetune_digits",
        "base_run": str(args.base),
        "settings": {
            "pictures": args.pictures,
            "size": args.size,
            "steps": config.steps,
            "lr": config.learning_rate,
            "learn": args.learn,
            "batch_size": config.batch_size,
            "lora_rank": config.lora_rank,
            "freeze": list(config.freeze),
            "caption": CAPTION,
            "held_out": len(split_indices("test")),
            "options": 4,
        },  # fmt: skip
        "seeds": rows,
        "mean": {
            "base": statistics.mean(r["base"] for r in rows),
            "tuned": statistics.mean(tuned),
            "codes_probe": statistics.mean(r["codes_probe"] for r in rows),
            "codes_bag_probe": statistics.mean(r["codes_bag_probe"] for r in rows),
        },  # fmt: skip
        "range": {"tuned": [min(tuned), max(tuned)]},
        "machine": {
            "cpu": machine_name(torch.device("cpu")),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },  # fmt: skip
    }
    print(json.dumps(result["mean"]))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
