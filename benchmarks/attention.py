"""Sliding-window attention beside full attention: speed and memory on long sequences, and quality.

Speed and memory: the ``tiny`` backbone (width 256, 6 layers, 8 / 4 heads) over one long document of
``--lengths`` tokens (4k–16k: a long video), batch 1, fp32. Each configuration runs in its own
process, so that its peak resident memory is its own: a training step (forward, backward, AdamW)
and a forward pass without gradients (prefill). Configurations: ``full`` (causal attention; SDPA's
fused kernel, which never holds the L × L scores), ``full, packed`` (the same tokens as documents of
``--document`` tokens: a dense L × L block-causal mask, the path packed training takes; skipped where
that mask would not fit in ``--max-dense-gib``), ``window W`` (every layer local), ``window W, packed``
(the same documents, local layers) and ``window W + global`` (every third layer full). Figures:
median of ``--steps`` after a warm-up.

Quality (``--run``, a quickstart's ``OUT/run``, trained with full attention): the quickstart's held-out
questions asked of the same weights with each window applied at inference — how much of the context
its answers need.

    python benchmarks/attention.py --json benchmarks/results/attention_cpu.json --run qs/run
    python benchmarks/attention.py --device cuda --lengths 4096 8192 16384 32768
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine_name, sync

from polymodal.model import Transformer, preset

VOCAB = 16_384


def configurations(window: int, lengths: list[int], document: int, max_dense_gib: float) -> list[dict]:
    out = []
    for length in lengths:
        dense_gib = length * length * 4 / 2**30  # the block-causal mask, as SDPA's float bias
        out += [
            {"name": "full", "length": length},
            {"name": "full, packed", "length": length, "document": document, "skip": dense_gib > max_dense_gib},
            {"name": f"window {window}", "length": length, "sliding_window": window},
            {"name": f"window {window}, packed", "length": length, "sliding_window": window, "document": document},
            {"name": f"window {window} + global", "length": length, "sliding_window": window,
             "full_attention_every": 3},
        ]  # fmt: skip
    return out


def measure_one(spec: dict, device: torch.device, steps: int) -> dict:
    """Runs in a child process: the step and prefill times and this process's peak memory."""
    torch.manual_seed(0)
    overrides = {k: spec[k] for k in ("sliding_window", "full_attention_every") if k in spec}
    model = Transformer(preset("tiny", VOCAB, max_seq_len=spec["length"], **overrides)).to(device)
    L = spec["length"]
    ids = torch.randint(0, VOCAB, (1, L), device=device)
    positions = torch.arange(L, device=device).view(1, L, 1).expand(1, L, 3)
    documents = None
    if "document" in spec:
        documents = (torch.arange(L, device=device) // spec["document"]).view(1, L)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = peak_bytes(device)

    def train_step() -> None:
        logits = model(ids, positions, document_ids_BL=documents)
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def prefill() -> None:
        with torch.no_grad():
            model(ids, positions, document_ids_BL=documents)

    result = {}
    for name, fn in (("prefill", prefill), ("train", train_step)):
        fn()  # warm-up
        times = []
        for _ in range(steps):
            sync(device)
            tic = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - tic)
        result[f"{name}_tokens_per_s"] = L / statistics.median(times)
    result["peak_mib"] = peak_bytes(device) / 2**20  # on a CPU: the whole process
    result["above_setup_mib"] = (peak_bytes(device) - before) / 2**20  # beyond the model and its inputs
    return result


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def quality(run_dir: Path, windows: list[int], questions: int) -> dict:
    from polymodal.run import Run
    from polymodal.train.quickstart import QuickstartConfig, evaluate_questions

    run = Run.load(run_dir)
    test, fps = run_dir.parent / "data" / "test", QuickstartConfig().video_fps
    base = run.model.config
    rows = {}
    settings = [("full", {})] + [(f"window {w}", {"sliding_window": w}) for w in windows]
    settings += [(f"window {w} + global", {"sliding_window": w, "full_attention_every": 3}) for w in windows]
    for label, changes in settings:
        run.model.config = base.with_(**changes)
        report = evaluate_questions(run, test, questions, video_fps=fps)
        rows[label] = {kind: round(100 * acc, 1) for kind, acc in report.accuracy.items()}
        print(label, rows[label], flush=True)
    run.model.config = base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--document", type=int, default=1024, help="Document length of the packed rows.")
    parser.add_argument("--max-dense-gib", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--run", type=Path, help="A quickstart's OUT/run: held-out accuracy under each window.")
    parser.add_argument("--quality-windows", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--only", nargs="*", help="Measure only the configurations with these names.")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one configuration as JSON
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one), device, args.steps)))
        return
    results: dict = {"machine": machine_name(device), "torch": torch.__version__, "device": str(device),
                     "threads": torch.get_num_threads(), "speed": []}  # fmt: skip
    header = ("configuration", "tokens", "train tok/s", "prefill tok/s", "peak MiB", "above setup")
    print(f"{header[0]:<22} {header[1]:>7} {header[2]:>12} {header[3]:>14} {header[4]:>9} {header[5]:>12}")
    for spec in configurations(args.window, args.lengths, args.document, args.max_dense_gib):
        if args.only and spec["name"] not in args.only:
            continue
        row = dict(spec)
        if not spec.pop("skip", False):
            command = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps)]
            child = subprocess.run([*command, "--one", json.dumps(spec)], capture_output=True, text=True)
            if child.returncode:
                row["error"] = (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1]
            else:
                row.update(json.loads(child.stdout.strip().splitlines()[-1]))
        else:
            row["error"] = f"skipped: its mask alone exceeds --max-dense-gib {args.max_dense_gib}"
        results["speed"].append(row)
        if "error" in row:
            print(f"{row['name']:<22} {row['length']:>7}   {row['error']}", flush=True)
        else:
            print(f"{row['name']:<22} {row['length']:>7} {row['train_tokens_per_s']:>12,.0f} "
                  f"{row['prefill_tokens_per_s']:>14,.0f} {row['peak_mib']:>9,.0f} {row['above_setup_mib']:>12,.0f}",
                  flush=True)  # fmt: skip
    if args.run is not None:
        results["quality"] = quality(args.run, args.quality_windows, args.questions)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
