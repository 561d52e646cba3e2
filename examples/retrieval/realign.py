"""Give a quickstart run a unified embedding that retrieves: a short ``align`` stage (symmetric InfoNCE
between the pooled states of media spans and their texts) on top of the trained run.

The quickstart trains ``align`` first and then ``pretrain`` and ``instruct`` with next-token losses
only, which leave its pooled states at chance for retrieval. Run this after ``polymodal quickstart
--out qs`` (about 40 s on 2 CPU cores), then measure (docs/retrieval.md):

    python examples/retrieval/realign.py qs --out qs-realigned
    python benchmarks/retrieval.py --run qs-realigned/run
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from polymodal.train.loop import Trainer
from polymodal.train.stages import quickstart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("quickstart", type=Path, help="The folder `polymodal quickstart --out` wrote.")
    parser.add_argument("--out", type=Path, required=True, help="Training folder for the realigned run.")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    data = args.quickstart / "data"
    recipe = quickstart(data / "tok", vocab=str(data / "vocab"))
    align = replace(recipe.stages[0], steps=args.steps, lr=args.lr, warmup_steps=min(5, args.steps - 1))
    recipe = recipe.with_(name="realign", stages=(align,), init=str(args.quickstart / "run"))
    Trainer(recipe, args.out).fit()
    print(f"realigned run: {args.out / 'run'}")


if __name__ == "__main__":
    main()
