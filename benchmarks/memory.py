"""Modular loading: resident memory of a process that serves text only, against one that also reads
and writes pictures and sound. A run's media tokenizers load on first use, so a text-only request
never loads their weights.

Each measurement runs in a fresh process (``--stage``), which loads a run, generates, and reports its
resident set size (``VmRSS``) and the tokenizers it loaded.

    python benchmarks/memory.py --run qs/run
    python benchmarks/memory.py --run qs/run --json benchmarks/results/memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def stage(run_dir: str, modalities: str) -> dict:
    import numpy as np
    from PIL import Image as PILImage

    from polymodal.content import Audio, Document, Image
    from polymodal.generation import SamplingConfig, generate
    from polymodal.run import Run

    before = rss_mib()
    run = Run.load(run_dir)
    loaded_run = rss_mib()
    greedy = SamplingConfig(temperature=0, max_new_tokens=8)
    parts: list = ["Describe what you see and hear."]
    if modalities == "all":
        parts = [Image(PILImage.new("RGB", (32, 32), (200, 30, 30))), Audio(np.zeros(8000, np.float32), 16000), *parts]
    generate(run, [Document.chat(("user", parts))], sampling=greedy, check_direction=False)
    if modalities == "all":
        generate(run, [Document.of("a red circle")], output="image", sampling=greedy, check_direction=False)
        generate(run, [Document.of("say hello")], output="audio",
                 sampling=SamplingConfig(temperature=0, max_audio_seconds=0.5), check_direction=False)  # fmt: skip
    return {"rss_mib_before": before, "rss_mib_run_loaded": loaded_run, "rss_mib_after": rss_mib(),
            "tokenizers_loaded": sorted(run.tokenizer.loaded_modalities)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder (e.g. a quickstart's DIR/run)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--stage", choices=["text", "all"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.run, args.stage)))
        return
    results = {}
    for modalities in ("text", "all"):
        out = subprocess.run([sys.executable, __file__, "--run", args.run, "--stage", modalities],
                             check=True, capture_output=True, text=True)  # fmt: skip
        results[modalities] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[modalities]
        print(
            f"{modalities:<5} resident {r['rss_mib_after']:7.1f} MiB (after import {r['rss_mib_before']:.1f}, run "
            f"loaded {r['rss_mib_run_loaded']:.1f})   tokenizers loaded: {', '.join(r['tokenizers_loaded'])}"
        )
    if args.json:
        info = {"benchmark": "memory", "run": args.run, "date": time.strftime("%Y-%m-%d"), "results": results}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
