"""Greedy decoding throughput: polymodal's ``generate()`` beside ``transformers``' ``generate()`` on the
same weights, in one process on one machine (never compare figures across runs or machines).

A ``LlamaForCausalLM`` at the ``tiny`` shape (width 256, 6 layers, 8 / 4 heads, SwiGLU 704, tied
embeddings) over the text range of the built-in vocabulary is saved and imported into a polymodal run
(``import_llama``), so both decode with identical weights. Our prompt is a chat turn holding an
image (an 8x8 grid) and text; ``transformers`` gets a text prompt of the same length (it cannot read
image codes). Both decode ``--new`` tokens greedily (``transformers`` with ``min_new_tokens`` so that
it never stops early; ours reports how many it produced before stopping). Time to first token is
the time to a one-token generation. Runs alternate (ours, theirs, ours …) and each figure is the
median of ``--repeats``.

    python benchmarks/decode.py                      # batch 1, 8 and 32
    python benchmarks/decode.py --batch 1 --json out.json
    python benchmarks/decode.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
from common import machine_name, sync
from PIL import Image as PILImage

from polymodal.content import Document, Image
from polymodal.generation import SamplingConfig, generate
from polymodal.model.hf_import import import_llama
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir

SHAPES = {  # (width, layers, query heads, key-value heads, SwiGLU width)
    "tiny": (256, 6, 8, 4, 704),  # the quickstart's model
    "small": (576, 30, 9, 3, 1536),  # the one-GPU preset (SmolLM-135M's shape)
}
PROMPT_TEXT = "Describe everything in this picture: every shape, its colour, its size and where it is. " * 2


def build(device: torch.device, shape: str) -> tuple[Run, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    codec = DocumentTokenizer.load(default_vocabulary_dir())
    torch.manual_seed(0)
    width, layers, heads, kv_heads, ffn = SHAPES[shape]
    config = LlamaConfig(vocab_size=codec.vocab.range("text").size, hidden_size=width, intermediate_size=ffn,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         tie_word_embeddings=True, max_position_embeddings=2048,
                         attn_implementation="sdpa")  # fmt: skip
    theirs = LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        theirs.save_pretrained(folder)
        ours = import_llama(folder, codec.vocab)
    run = Run(ours.to(device).eval(), codec, ("image+text->text",))
    return run, theirs.to(device)


def prompt() -> Document:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return Document.chat(("user", [Image(PILImage.fromarray(pixels)), PROMPT_TEXT]))


def time_ours(run: Run, prompts: list[Document], new: int, device: torch.device,
              compile: bool = False) -> tuple[float, int]:  # fmt: skip
    sync(device)
    tic = time.perf_counter()
    out = generate(run, prompts, sampling=SamplingConfig(temperature=0, max_new_tokens=new), check_direction=False,
                   compile=compile)  # fmt: skip
    sync(device)
    return time.perf_counter() - tic, sum(len(g.ids) for g in out)


def time_theirs(model: torch.nn.Module, ids: torch.Tensor, new: int, device: torch.device) -> tuple[float, int]:
    sync(device)
    tic = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0)  # fmt: skip
    sync(device)
    return time.perf_counter() - tic, (out.shape[1] - ids.shape[1]) * ids.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="weights (default: bf16 on a GPU, else fp32)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    run, theirs = build(device, args.shape)
    run.model.to(dtype)
    theirs.to(dtype)
    length = len(run.tokenizer.encode(prompt(), add_generation_prompt=True))
    generator = torch.Generator().manual_seed(0)
    text_ids = torch.randint(0, theirs.config.vocab_size, (1, length), generator=generator)
    print(f"prompt: {length} tokens (ours: an 8x8 image and text; transformers: text ids of the same length)")
    time_ours(run, [prompt()], 4, device)  # warm-up both
    time_theirs(theirs, text_ids.to(device), 4, device)
    results = {}
    for batch in args.batch:
        prompts, ids = [prompt()] * batch, text_ids.expand(batch, -1).contiguous().to(device)
        tic = time.perf_counter()
        time_ours(run, prompts, args.new, device, compile=True)  # compiles for this batch size
        compile_seconds = time.perf_counter() - tic
        rows = {"ours": [], "ours_compiled": [], "theirs": [], "ours_ttft": [], "theirs_ttft": []}
        for _ in range(args.repeats):
            for name in ("ours", "ours_compiled", "theirs"):
                if name == "theirs":
                    seconds, tokens = time_theirs(theirs, ids, args.new, device)
                else:
                    seconds, tokens = time_ours(run, prompts, args.new, device, compile=name == "ours_compiled")
                rows[name].append(tokens / seconds)
            rows["ours_ttft"].append(time_ours(run, prompts, 1, device)[0])
            rows["theirs_ttft"].append(time_theirs(theirs, ids, 1, device)[0])
        results[batch] = {k: statistics.median(v) for k, v in rows.items()} | {"compile_seconds": compile_seconds}
        r = results[batch]
        print(f"batch {batch:>3}: ours {r['ours']:8,.0f} tokens/s, compiled {r['ours_compiled']:8,.0f} "
              f"(first token {r['ours_ttft'] * 1000:6.1f} ms)   transformers {r['theirs']:8,.0f} tokens/s "
              f"(first token {r['theirs_ttft'] * 1000:6.1f} ms)   {r['ours'] / r['theirs']:.2f}x eager, "
              f"{r['ours_compiled'] / r['theirs']:.2f}x compiled (compiling took {compile_seconds:.0f} s)",
              flush=True)  # fmt: skip
    if args.json:
        info = {"benchmark": "decode", "shape": args.shape, "dtype": str(dtype), "device": str(device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(), "machine": machine_name(device),
                "date": time.strftime("%Y-%m-%d"), "prompt_tokens": length, "new_tokens": args.new,
                "results": results}  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
