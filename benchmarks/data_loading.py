"""Does the data loader starve the step? Training-step time on real pre-tokenized shards, read and
packed by the trainer's own loader (DataLoader workers, packing, conditioning dropout), against the
same steps on batches already in memory — in one process, rounds alternating.

The data is a quickstart's tokenized folders (``DIR/data/tok``, ``DIR/data/vocab``); the stage is the
quickstart recipe's ``pretrain`` (batch 8 rows of 512 tokens, the ``tiny`` model with modality
experts). Target: real within 5% of in-memory.

    python benchmarks/data_loading.py --data qs/data
    python benchmarks/data_loading.py --data qs/data --workers 0 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from polymodal.train.loop import Trainer, autocast_for, build_model, build_optimizer, train_step
from polymodal.train.objectives import NextToken
from polymodal.train.stages import quickstart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a quickstart's DIR/data (with tok/ and vocab/)")
    parser.add_argument("--steps", type=int, default=8, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes (the quickstart uses 1)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    data = Path(args.data)
    recipe = quickstart(data / "tok", vocab=str(data / "vocab")).with_(workers=args.workers)
    stage = replace(recipe.stages[1], steps=args.steps * args.rounds + 1)  # pretrain
    recipe = recipe.with_(stages=(recipe.stages[0], stage))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(recipe, out, device="cpu", progress=False)
        torch.manual_seed(0)
        model = build_model(recipe, trainer.vocab.size).train()
        objective = NextToken(trainer.vocab.modalities)
        optimizer, scheduler = build_optimizer(model, objective, stage, torch.device("cpu"))
        autocast = autocast_for(recipe, torch.device("cpu"))

        def step(micro_batches) -> None:  # noqa: ANN001
            train_step(model, objective, micro_batches, optimizer, scheduler, grad_clip=stage.grad_clip,
                       autocast=autocast, distributed=trainer.distributed)  # fmt: skip

        real = trainer._steps(stage, trainer._stage_data(1, stage), 0)
        first = next(real)
        step(first)  # warm-up (and the loader's workers start)
        times: dict[str, list[float]] = {"shards": [], "in_memory": []}
        for _ in range(args.rounds):
            tic = time.perf_counter()
            for micro_batches in itertools.islice(real, args.steps):
                step(micro_batches)
            times["shards"].append((time.perf_counter() - tic) / args.steps)
            tic = time.perf_counter()
            for _ in range(args.steps):
                step(first)
            times["in_memory"].append((time.perf_counter() - tic) / args.steps)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["shards"] / median["in_memory"]
    print(
        f"step on shards {median['shards'] * 1000:.0f} ms, on batches in memory {median['in_memory'] * 1000:.0f} ms: "
        f"{ratio:.3f}x ({args.workers} loader worker(s), {args.rounds} rounds of {args.steps} steps)"
    )
    if args.json:
        info = {"benchmark": "data_loading", "date": time.strftime("%Y-%m-%d"), "workers": args.workers,
                "threads": torch.get_num_threads(), "seconds_per_step": median, "ratio": ratio,
                "rounds": times}  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
