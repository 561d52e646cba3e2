"""Weight-only int8 quantization (torchao, ``polymodal.quantize``) beside the full-precision model, in one
process on one machine: linear weight memory, batch-1 greedy decode speed after a prompt with a picture
and text, and the change in held-out accuracy.

With ``--run`` (a quickstart's ``OUT/run``) the accuracy is the quickstart's held-out questions
(``OUT/data/test``: 100 per input kind, the likeliest of 4 options) asked of both models; without it, a
randomly initialised run of ``--preset`` is timed and only the weight figures and the largest change in
next-token log-probabilities are reported. Decode runs alternate (full, int8, full …); each figure is the
median of ``--repeats``.

    python benchmarks/quantize.py --run qs/run --json benchmarks/results/quantize_quickstart_cpu.json
    python benchmarks/quantize.py --preset small --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_name, sync
from PIL import Image as PILImage

from polymodal.content import Document, Image
from polymodal.generation import SamplingConfig, generate
from polymodal.model import Transformer, preset
from polymodal.quantize import linear_weight_bytes, quantize_weights
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir

PROMPT_TEXT = "Describe everything in this picture: every shape, its colour, its size and where it is."


def prompt() -> Document:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return Document.chat(("user", [Image(PILImage.fromarray(pixels)), PROMPT_TEXT]))


def decode_seconds(run: Run, new: int, device: torch.device) -> tuple[float, int]:
    sync(device)
    tic = time.perf_counter()
    out = generate(run, [prompt()], sampling=SamplingConfig(temperature=0, max_new_tokens=new), check_direction=False)
    sync(device)
    return time.perf_counter() - tic, len(out[0].ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="A run folder (a quickstart's OUT/run): accuracy on its questions.")
    parser.add_argument("--preset", default="tiny", help="Without --run: a random run of this preset.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new", type=int, default=128, help="Tokens decoded per timing.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--questions", type=int, default=100, help="Held-out questions per input kind (--run).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.run is not None:
        full = Run.load(args.run, device=device)
    else:
        codec = DocumentTokenizer.load(default_vocabulary_dir())
        model = Transformer(preset(args.preset, codec.vocab.size)).to(device).eval()
        full = Run(model, codec, ("image+text->text",))
    quantized = Run(quantize_weights(copy.deepcopy(full.model)), full.tokenizer, full.directions)
    results: dict = {"machine": machine_name(device), "torch": torch.__version__, "device": str(device),
                     "run": str(args.run) if args.run else f"random {args.preset}"}  # fmt: skip
    full_bytes, int8_bytes = linear_weight_bytes(full.model), linear_weight_bytes(quantized.model)
    results["linear_weight_mib"] = {"full": full_bytes / 2**20, "int8": int8_bytes / 2**20,
                                    "ratio": full_bytes / int8_bytes}  # fmt: skip
    seq = full.tokenizer.encode(prompt(), add_generation_prompt=True, add_eos=False)
    with torch.no_grad():
        inputs = (seq.ids[None].to(device), seq.positions[None].to(device), seq.modality[None].to(device))
        a = torch.log_softmax(full.model(*inputs).float(), -1)
        b = torch.log_softmax(quantized.model(*inputs).float(), -1)
    results["max_logprob_change"] = float((a - b).abs().max())
    results["same_greedy_token_share"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    for run in (full, quantized):  # warm-up
        decode_seconds(run, 8, device)
    times: dict[str, list[float]] = {"full": [], "int8": []}
    for _ in range(args.repeats):
        for name, run in (("full", full), ("int8", quantized)):
            seconds, tokens = decode_seconds(run, args.new, device)
            times[name].append(tokens / seconds)
    results["decode_tokens_per_s"] = {k: statistics.median(v) for k, v in times.items()}
    results["decode_speedup"] = results["decode_tokens_per_s"]["int8"] / results["decode_tokens_per_s"]["full"]
    if args.run is not None:
        from polymodal.train.quickstart import QuickstartConfig, evaluate_questions

        test, fps = args.run.parent / "data" / "test", QuickstartConfig().video_fps
        scores = {name: evaluate_questions(run, test, args.questions, video_fps=fps)
                  for name, run in (("full", full), ("int8", quantized))}  # fmt: skip
        results["accuracy"] = {name: s.accuracy for name, s in scores.items()}
        results["accuracy_change_points"] = {
            kind: round(100 * (scores["int8"].accuracy[kind] - scores["full"].accuracy[kind]), 1)
            for kind in scores["full"].accuracy
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
