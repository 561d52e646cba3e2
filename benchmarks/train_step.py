"""Training-step throughput: polymodal's backbone beside ``transformers``' ``LlamaForCausalLM`` at the
same shape, in one process on one machine (never compare figures across runs or machines).

The shape is the reference of the performance issue: vocabulary 16,384, width 256, 6 layers, 8 query /
4 key-value heads, SwiGLU 704, tied embeddings (8.6M parameters); rows of 256 tokens, batch 8, fp32
on a CPU (bf16 autocast with ``--device cuda``), AdamW, the same cross-entropy outside both models.

Workloads, each eager and (``--compile``) under ``torch.compile``:

* ``hf/text``      ``LlamaForCausalLM`` (SDPA attention) on text rows: what users would otherwise run;
* ``ours/text``    our ``Transformer`` on the same ids, positions (t, h, w) all equal to the index;
* ``ours/mm``      our ``Transformer`` on packed multimodal rows: documents of text, an 8x8 image grid
                   (2-D positions) and 40 audio codes, several per row, attention block-causal
                   within each document (``document_ids``), modality per token.

Measurements alternate between workloads in rounds (A B C A B C …) so that a machine that speeds up
or slows down during the run affects all of them alike; each figure is the median over rounds.

    python benchmarks/train_step.py                 # eager and compiled, prints a table
    python benchmarks/train_step.py --no-compile --rounds 3 --json out.json
    python benchmarks/train_step.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from common import machine_name, sync

from polymodal.model import Transformer
from polymodal.model.config import ModelConfig
from polymodal.positions import audio_positions, image_positions, next_index, text_positions

SHAPES = {
    # the performance issue's reference (8.6M parameters): CPU-sized
    "reference": {"vocab": 16_384, "dim": 256, "layers": 6, "heads": 8, "kv_heads": 4, "ffn": 704},
    # the ``small`` preset (SmolLM-135M's shape, 135M parameters): the one-GPU reference
    "small": {"vocab": 49_152, "dim": 576, "layers": 30, "heads": 9, "kv_heads": 3, "ffn": 1_536},
}
SHAPE = dict(SHAPES["reference"])  # the shape in use; main() sets it from --shape
TEXT, IMAGE, AUDIO = 1, 2, 3  # modality codes (0 is "special")


def ours(device: torch.device) -> Transformer:
    config = ModelConfig(vocab_size=SHAPE["vocab"], dim=SHAPE["dim"], n_layers=SHAPE["layers"], n_heads=SHAPE["heads"],
                         n_kv_heads=SHAPE["kv_heads"], ffn_dim=SHAPE["ffn"], tie_embeddings=True,
                         max_seq_len=4096)  # fmt: skip
    return Transformer(config).to(device)


def theirs(device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["dim"], intermediate_size=SHAPE["ffn"],
                         num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
                         num_key_value_heads=SHAPE["kv_heads"], tie_word_embeddings=True, max_position_embeddings=4096,
                         attn_implementation="sdpa")  # fmt: skip
    return LlamaForCausalLM(config).to(device)


@dataclass
class Batch:
    ids: torch.Tensor
    positions: torch.Tensor
    modality: torch.Tensor
    document_ids: torch.Tensor | None

    @property
    def tokens(self) -> int:
        return self.ids.numel()


def text_batch(batch: int, length: int, generator: torch.Generator, device: torch.device) -> Batch:
    ids = torch.randint(17, SHAPE["vocab"], (batch, length), generator=generator)
    positions = torch.arange(length).view(1, length, 1).expand(batch, length, 3).contiguous()
    modality = torch.full((batch, length), TEXT)
    return Batch(ids.to(device), positions.to(device), modality.to(device), None)


def multimodal_row(length: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Documents of text (16) + an 8x8 image + text (8) + 40 audio codes + text (24), packed until full."""
    ids, positions, modality, documents = [], [], [], []
    document = 0
    while sum(len(i) for i in ids) < length:
        start = 0
        for kind, n in ((TEXT, 16), (IMAGE, 64), (TEXT, 8), (AUDIO, 40), (TEXT, 24)):
            if kind == IMAGE:
                pos = image_positions(start, 8, 8)
            elif kind == AUDIO:
                pos = audio_positions(start, n, 25.0, 25.0)
            else:
                pos = text_positions(start, n)
            start = next_index(start, pos)
            v = SHAPE["vocab"]
            low, high = {TEXT: (17, v // 2), IMAGE: (v // 2, 3 * v // 4), AUDIO: (3 * v // 4, v)}[kind]
            ids.append(torch.randint(low, high, (n,), generator=generator))
            positions.append(pos)
            modality.append(torch.full((n,), kind))
            documents.append(torch.full((n,), document))
        document += 1
    return tuple(torch.cat(parts)[:length] for parts in (ids, positions, modality, documents))


def multimodal_batch(batch: int, length: int, generator: torch.Generator, device: torch.device) -> Batch:
    rows = [multimodal_row(length, generator) for _ in range(batch)]
    ids, positions, modality, documents = (torch.stack(parts).to(device) for parts in zip(*rows, strict=True))
    return Batch(ids, positions, modality, documents)


def loss_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def step_fn(model: torch.nn.Module, forward: Callable, device: torch.device) -> Callable[[Batch], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch: Batch) -> float:
        with autocast:
            loss = loss_of(forward(batch), batch.ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def flops_per_token(length: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3x forward), PaLM-style: every weight matrix
    (the tied head included) and causal attention's two matrix products over half the row on average."""
    d, kv = SHAPE["dim"], SHAPE["dim"] * SHAPE["kv_heads"] // SHAPE["heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * SHAPE["ffn"]  # q, o; k, v; SwiGLU
    weights = SHAPE["layers"] * per_layer + d * SHAPE["vocab"]
    attention = SHAPE["layers"] * 2 * d * length  # QK^T and AV, 2 FLOPs each, causal half of `length` keys
    return 3 * (2 * weights + attention)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large matrix product on this device, measured (random data, median of 10)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(13):
        sync(device)
        tic = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - tic)
    return 2 * n**3 / statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="reference")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per workload per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure every workload under torch.compile")  # fmt: skip
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    SHAPE.update(SHAPES[args.shape])
    generator = torch.Generator().manual_seed(0)
    text = text_batch(args.batch, args.length, generator, device)
    mm = multimodal_batch(args.batch, args.length, generator, device)

    workloads: dict[str, tuple[Callable, Batch]] = {}
    for mode in ("eager", "compiled") if args.compile else ("eager",):
        torch.manual_seed(0)
        hf, mine, mine_mm = theirs(device), ours(device), ours(device)
        wrap = torch.compile if mode == "compiled" else (lambda m: m)
        hf_c, mine_c, mine_mm_c = wrap(hf), wrap(mine), wrap(mine_mm)
        workloads[f"hf/text/{mode}"] = (step_fn(hf, lambda b, m=hf_c: m(input_ids=b.ids).logits, device), text)
        workloads[f"ours/text/{mode}"] = (step_fn(mine, lambda b, m=mine_c: m(b.ids, b.positions, b.modality),
                                                  device), text)  # fmt: skip
        workloads[f"ours/mm/{mode}"] = (
            step_fn(mine_mm, lambda b, m=mine_mm_c: m(b.ids, b.positions, b.modality, document_ids_BL=b.document_ids),
                    device), mm)  # fmt: skip

    warmup_seconds = {}
    for name, (step, batch) in workloads.items():
        tic = time.perf_counter()
        for _ in range(args.warmup):
            step(batch)
        sync(device)
        warmup_seconds[name] = time.perf_counter() - tic
        print(f"warm-up {name}: {warmup_seconds[name]:.1f} s", flush=True)

    rates: dict[str, list[float]] = {name: [] for name in workloads}
    for round_ in range(args.rounds):
        for name, (step, batch) in workloads.items():
            sync(device)
            tic = time.perf_counter()
            for _ in range(args.steps):
                step(batch)
            sync(device)
            rates[name].append(args.steps * batch.tokens / (time.perf_counter() - tic))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    median = {name: statistics.median(r) for name, r in rates.items()}
    peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    per_token = flops_per_token(args.length)
    mfu = {name: rate * per_token / peak for name, rate in median.items()}
    print(
        f"\nshape {args.shape}, batch {args.batch} x {args.length}, {per_token / 1e6:.0f} MFLOP per token; "
        f"measured matmul peak {peak / 1e12:.2f} TFLOP/s"
    )
    print(f"{'workload':<22} {'tokens/s':>10} {'vs hf (same mode)':>18} {'MFU':>7}")
    for name, rate in median.items():
        mode = name.rsplit("/", 1)[1]
        print(f"{name:<22} {rate:>10,.0f} {rate / median[f'hf/text/{mode}']:>17.2f}x {mfu[name]:>6.1%}")
    if args.json:
        result = {
            "benchmark": "train_step", "shape_name": args.shape, "shape": SHAPE, "batch": args.batch,
            "length": args.length,
            "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": machine_name(device), "date": time.strftime("%Y-%m-%d"),
            "tokens_per_s": median, "rounds": rates, "warmup_seconds": warmup_seconds,
            "flops_per_token": per_token, "matmul_peak_flops": peak, "mfu": mfu,
        }  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
