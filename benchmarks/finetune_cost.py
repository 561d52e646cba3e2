"""What fine-tuning costs, full vs LoRA vs LoRA on an int8 base: measured on this machine for the small
presets, and worked out for GPUs from parameter and activation counts.

Measured (``--measure``, each in its own process so that its peak resident memory is its own): one
training step (forward, backward, AdamW on what trains) of ``--measure`` presets over ``--batch``
rows of ``--length`` tokens, fp32: time per step and peak memory.

Worked out (every preset): the bytes a GPU needs, with bf16 autocast and AdamW. Full fine-tuning keeps
fp32 weights, fp32 gradients and two fp32 moments (16 bytes per parameter); LoRA keeps the frozen base
in bf16 (2 bytes; 1 for an int8 base) and 16 bytes per adapter parameter. Activations are counted,
not guessed: the tensors autograd saves for the backward pass in one bf16 forward of the preset on
this CPU at ``--count-length`` tokens (each storage once), per token. Frozen layers still
save their inputs (the gradient must reach the adapters below them), so LoRA saves almost as much.
The table gives the tokens per step (batch × length) that fit 24 GB and 80 GB after the CUDA context
and a 10% margin.

    python benchmarks/finetune_cost.py --json benchmarks/results/finetune_cost_cpu.json
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
from common import machine_name

from polymodal.model import Transformer, preset
from polymodal.train.lora import LoRAConfig, adapter_state, apply_lora

VOCAB = 49_152  # the GPU presets' vocabulary size
METHODS = ("full", "lora", "lora-int8")
CUDA_CONTEXT_GIB = 1.0


def build(name: str, method: str, vocab: int) -> Transformer:
    model = Transformer(preset(name, vocab))
    if method != "full":
        apply_lora(model, LoRAConfig(rank=8, alpha=16, base="int8" if method == "lora-int8" else "full"))
    return model


def activation_bytes_per_token(name: str, length: int) -> float:
    """Bytes autograd saves per token in one bf16 forward (each storage counted once; weights not)."""
    torch.manual_seed(0)
    model = Transformer(preset(name, VOCAB)).to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, VOCAB, (1, length))
    positions = torch.arange(length).view(1, length, 1).expand(1, length, 3)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids, positions)
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    del loss, logits
    return sum(seen.values()) / length


def worked_out(name: str, length: int) -> dict:
    with torch.device("meta"):
        full, lora = build(name, "full", VOCAB), build(name, "lora", VOCAB)
    params = sum(p.numel() for p in full.parameters())
    adapters = sum(p.numel() for n, p in lora.named_parameters() if ".lora_" in n)
    linear = sum(m.weight.numel() for m in full.modules() if isinstance(m, torch.nn.Linear))
    fixed = {
        "full": 16 * params,
        "lora": 2 * params + 16 * adapters,
        "lora-int8": 2 * (params - linear) + linear + 16 * adapters,  # embeddings and norms stay bf16
    }
    per_token = activation_bytes_per_token(name, length)
    row = {"parameters": params, "adapter_parameters": adapters, "activation_bytes_per_token": per_token}
    for method, nbytes in fixed.items():
        row[method] = {"fixed_gib": nbytes / 2**30}
        for gpu in (24, 80):
            room = (0.9 * gpu - CUDA_CONTEXT_GIB) * 2**30 - nbytes
            row[method][f"tokens_per_step_{gpu}gb"] = max(0, int(room / per_token))
    return row


def measure_one(name: str, method: str, batch: int, length: int, steps: int) -> dict:
    """In a child process: step time and peak memory of one preset and method on this CPU."""
    vocab = 4096  # the quickstart's vocabulary is about this size
    torch.manual_seed(0)
    model = build(name, method, vocab)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, vocab, (batch, length))
    positions = torch.arange(length).view(1, length, 1).expand(batch, length, 3)
    times = []
    for step in range(steps + 1):
        tic = time.perf_counter()
        logits = model(ids, positions)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first is a warm-up
            times.append(time.perf_counter() - tic)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds_per_step": statistics.median(times), "trained_parameters": trained,
            "adapter_mib": sum(t.numel() * 4 for t in adapter_state(model).values()) / 2**20 if method != "full" else 0,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", nargs="*", default=["debug", "tiny"], help="Presets to time on this CPU.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--estimate", nargs="*", default=["tiny", "small", "base", "1b"])
    parser.add_argument("--count-length", type=int, default=256, help="Tokens of the activation count.")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, method = args.one.split(":")
        print(json.dumps(measure_one(name, method, args.batch, args.length, args.steps)))
        return
    device = torch.device("cpu")
    results: dict = {"machine": machine_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "batch": args.batch, "length": args.length, "measured": {}, "estimated": {}}  # fmt: skip
    print(f"measured on this CPU: {args.batch} rows x {args.length} tokens, fp32")
    print(f"{'preset':<8} {'method':<10} {'s/step':>8} {'trained params':>15} {'peak MiB':>9}")
    for name in args.measure:
        for method in METHODS:
            child = subprocess.run([sys.executable, __file__, "--one", f"{name}:{method}", "--batch", str(args.batch),
                                    "--length", str(args.length), "--steps", str(args.steps)],
                                   capture_output=True, text=True, check=True)  # fmt: skip
            row = json.loads(child.stdout.strip().splitlines()[-1])
            results["measured"][f"{name}/{method}"] = row
            print(f"{name:<8} {method:<10} {row['seconds_per_step']:>8.2f} {row['trained_parameters']:>15,} "
                  f"{row['peak_mib']:>9,.0f}", flush=True)  # fmt: skip
    print("\nworked out for a GPU (bf16 autocast, AdamW): fixed GiB | tokens per step that fit 24 GB / 80 GB")
    for name in args.estimate:
        row = worked_out(name, args.count_length)
        results["estimated"][name] = row
        cells = "  ".join(f"{m}: {row[m]['fixed_gib']:.2f} | {row[m]['tokens_per_step_24gb']:,} / "
                          f"{row[m]['tokens_per_step_80gb']:,}" for m in METHODS)  # fmt: skip
        print(f"{name:<5} {row['parameters'] / 1e6:,.0f}M params, {row['activation_bytes_per_token'] / 1024:,.0f} KiB "
              f"activations/token   {cells}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
