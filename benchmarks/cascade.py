"""Cascade routing measured: a small and a large run answer the same held-out questions; the cascade
rule of ``polymodal serve SMALL --large LARGE`` (escalate when the small run's mean token
log-probability is below a threshold) is applied to their answers at each threshold.

The questions are a quickstart's held-out ones (``DATA/test``: pictures, spoken questions, sounds and
videos, 100 of each by default), asked as chats and answered greedily, as the server would with
``temperature: 0``; an answer is right when it is the reference option's text (case and punctuation
aside). Compute is tokens × parameters: the prompt and the answer's tokens times the run's parameter
count; the cascade always pays the small run and, for an escalated question, the large one too.

    python benchmarks/cascade.py --small small/run --large qs/run --data qs/data \\
        --json benchmarks/results/cascade_quickstart_cpu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_name

from polymodal.data.shapes import read_shards
from polymodal.generation import SamplingConfig, generate
from polymodal.run import Run
from polymodal.serve.router import cascade_curve
from polymodal.train.quickstart import QUESTIONS, QuickstartConfig, _normalise, _question_prompt


def answers(run: Run, prompts: list, references: list[str], batch: int) -> list[dict]:
    greedy = SamplingConfig(temperature=0, max_new_tokens=8)
    rows = []
    for k in range(0, len(prompts), batch):
        said = generate(run, prompts[k : k + batch], sampling=greedy)
        for reference, g in zip(references[k : k + batch], said, strict=True):
            rows.append({"answer": g.part.text, "correct": int(_normalise(g.part.text) == _normalise(reference)),
                         "logprob": g.mean_logprob, "tokens": g.prompt_tokens + len(g.ids)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=Path, required=True)
    parser.add_argument("--large", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="A quickstart's DATA folder (its test/ is read).")
    parser.add_argument("--questions", type=int, default=100, help="Per input kind.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    small, large = Run.load(args.small), Run.load(args.large)
    params = {"small": small.model.num_parameters(), "large": large.model.num_parameters()}
    rows, fps = [], QuickstartConfig().video_fps
    tic = time.perf_counter()
    for kind, folder in QUESTIONS.items():
        samples = list(itertools.islice(read_shards(args.data / "test" / folder, video_fps=fps), args.questions))
        prompts, references = zip(*(_question_prompt(s.document, blind=False) for s in samples), strict=True)
        by_small = answers(small, list(prompts), list(references), args.batch)
        by_large = answers(large, list(prompts), list(references), args.batch)
        for a, b in zip(by_small, by_large, strict=True):
            rows.append({"kind": kind, "small_correct": a["correct"], "small_logprob": a["logprob"],
                         "small_tokens": a["tokens"], "large_correct": b["correct"],
                         "large_tokens": b["tokens"]})  # fmt: skip
        print(f"{kind}: small {np.mean([a['correct'] for a in by_small]):.0%}, "
              f"large {np.mean([b['correct'] for b in by_large]):.0%}", flush=True)  # fmt: skip
    logprobs = np.array([r["small_logprob"] for r in rows])
    thresholds = sorted({round(float(q), 3) for q in np.quantile(logprobs, np.linspace(0, 1, 11))} | {0.0})
    thresholds = [t - 1e-6 if t == logprobs.min() else t for t in thresholds]  # the lowest: nothing escalates
    curve = cascade_curve(rows, params["small"], params["large"], thresholds)
    large_accuracy = curve["always_large"]["accuracy"]
    # where to start: the cheapest threshold within 1 point of the large run alone, else the most accurate
    near = [c for c in curve["cascade"] if c["accuracy"] >= large_accuracy - 0.01]
    start = min(near, key=lambda c: c["compute"]) if near else max(curve["cascade"], key=lambda c: c["accuracy"])
    print(f"\nparameters: small {params['small']:,}, large {params['large']:,}; {len(rows)} questions, "
          f"{time.perf_counter() - tic:.0f} s")  # fmt: skip
    print(f"always small: {curve['always_small']['accuracy']:.1%}; always large: {large_accuracy:.1%}")
    print(f"{'threshold':>10} {'accuracy':>9} {'escalated':>10} {'compute vs large':>17}")
    for c in curve["cascade"]:
        mark = "  <- start here" if c is start else ""
        figures = f"{c['accuracy']:>9.1%} {c['escalated']:>10.0%} {c['compute_vs_large']:>17.2f}"
        print(f"{c['threshold']:>10.3f} {figures}{mark}")
    if args.json:
        result = {"machine": machine_name(torch.device("cpu")), "torch": torch.__version__, "small": str(args.small),
                  "large": str(args.large), "parameters": params, "questions": len(rows), "curve": curve,
                  "start_threshold": start["threshold"], "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
