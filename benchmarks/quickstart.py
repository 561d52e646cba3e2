"""The quickstart's scores and wall time over several seeds, in one results file.

Runs ``polymodal quickstart --seed S`` into a fresh folder for each seed (one after the other, each with
the whole machine) and writes one JSON file with each seed's scores (per input kind and per ability,
with and without the media), wall time per step, and over the seeds the mean and the range of every
row: the figures README.md and docs/ quote come from that file only.

    python benchmarks/quickstart.py --seeds 0,1,2 --json benchmarks/results/quickstart_cpu.json
    python benchmarks/quickstart.py --scale 0.1          # a quick check of the whole path
    python benchmarks/quickstart.py --seeds 0 --keep runs/   # keep each run (runs/seed0/run …) to probe it
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_seed(out: Path, seed: int, scale: float) -> dict:
    """One quickstart into ``out``: its report, with the wall time of the whole command."""
    tic = time.perf_counter()
    command = [sys.executable, "-m", "polymodal.cli", "quickstart", "--out", str(out), "--scale", str(scale),
               "--seed", str(seed)]  # fmt: skip
    subprocess.run(command, check=True)
    report = json.loads((out / "report.json").read_text())
    keep = ("accuracy", "blind", "by_ability", "seconds")
    return {"seed": seed, "total_seconds": round(time.perf_counter() - tic, 1), **{k: report[k] for k in keep}}


def summary(rows: list[dict]) -> dict:
    """Mean and [min, max] over the seeds of every score (input kinds and abilities, media and blind)."""
    series: dict[str, list[float]] = {}
    for row in rows:
        for kind in row["accuracy"]:
            series.setdefault(f"{kind}", []).append(row["accuracy"][kind])
            series.setdefault(f"{kind} (blind)", []).append(row["blind"][kind])
        for ability, scores in row["by_ability"].items():
            series.setdefault(ability, []).append(scores["accuracy"])
            series.setdefault(f"{ability} (blind)", []).append(scores["blind"])
    series["total_seconds"] = [row["total_seconds"] for row in rows]
    return {name: {"mean": statistics.mean(v), "range": [min(v), max(v)]} for name, v in series.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--keep", type=Path, default=None, help="keep each seed's quickstart in KEEP/seedS")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            out = (args.keep or Path(folder)) / f"seed{seed}"
            rows.append(run_seed(out, seed, args.scale))
            print(f"seed {seed}: total {rows[-1]['total_seconds']:.0f} s; "
                  + ", ".join(f"{k} {v:.0%} (blind {rows[-1]['blind'][k]:.0%})"
                              for k, v in rows[-1]["accuracy"].items()), flush=True)  # fmt: skip
    result = {
        "benchmark": "quickstart",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "scale": args.scale,
        "seeds": rows,
        "summary": summary(rows),
    }
    for name, row in result["summary"].items():
        if name != "total_seconds" and "/" not in name:
            print(f"{name:<16} mean {row['mean']:.1%}  range {row['range'][0]:.0%}-{row['range'][1]:.0%}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
