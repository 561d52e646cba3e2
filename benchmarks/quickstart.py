"""The quickstart's wall time per step (corpus, tokenizers, pretokenize, train, questions, samples),
tracked as a benchmark: runs ``polymodal quickstart`` into a fresh folder and records the
``seconds`` of its ``report.json`` with the scores.

    python benchmarks/quickstart.py --json benchmarks/results/quickstart_cpu.json
    python benchmarks/quickstart.py --scale 0.1          # a quick check of the whole path
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "qs"
        tic = time.perf_counter()
        command = [sys.executable, "-m", "polymodal.cli", "quickstart", "--out", str(out), "--scale", str(args.scale),
                   "--seed", str(args.seed)]  # fmt: skip
        subprocess.run(command, check=True)
        total = time.perf_counter() - tic
        report = json.loads((out / "report.json").read_text())
    print(f"total {total:.0f} s (process start included): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()))  # fmt: skip
    if args.json:
        info = {"benchmark": "quickstart", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                "scale": args.scale, "seed": args.seed, "total_seconds": total, "seconds": report["seconds"],
                "accuracy": report["accuracy"], "blind": report["blind"]}  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
