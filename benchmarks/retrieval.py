"""Cross-modal retrieval with a run's unified embedding: Recall@1/5/10 on held-out shapes-world pairs
(test split, never trained on), and exact-search latency at 10k and 100k items.

For each pair kind (image ↔ caption, speech ↔ transcript, sound ↔ label) ``--pairs`` test samples are
made, both sides embedded with :func:`polymodal.retrieval.embed`, and every query ranks all the other
side's items; Recall@k is the share of queries whose partner is among the first k (chance: k / pairs).
The captions are also spoken (eSpeak NG, a new voice each) to find their pictures (speech → image).
Sound labels repeat (a few sound kinds), so a sound query counts as found when any item with its
label is within k. Latency: one query against random unit vectors, the median of 50.

    python benchmarks/retrieval.py --run qs/run
    python benchmarks/retrieval.py --run qs/run --pairs 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_name

from polymodal.content import Document, Text
from polymodal.data.shapes import make_shapes, read_shards
from polymodal.data.shapes.speech import random_voice, speak
from polymodal.retrieval import Index, embed
from polymodal.run import Run

KINDS = {"image_caption": ("image", "text"), "speech_transcript": ("speech", "text"), "sound_label": ("sound", "text")}


def pairs(kind: str, n: int, image_size: int) -> tuple[list[Document], list[Document], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        make_shapes(Path(tmp), n=n, seed=0, kinds=(kind,), split="test", image_size=image_size, max_objects=2,
                    workers=1, progress=False)  # fmt: skip
        media, texts, keys = [], [], []
        for sample in read_shards(Path(tmp)):
            parts = sample.document.parts
            medium = next(p for p in parts if not isinstance(p, Text))
            text = " ".join(p.text for p in parts if isinstance(p, Text)).strip()
            media.append(Document.of(medium))
            texts.append(Document.of(text))
            keys.append(text)
    return media, texts, keys


def recall(queries: torch.Tensor, items: torch.Tensor, query_keys: list[str], item_keys: list[str]) -> dict:
    order = (queries @ items.T).argsort(dim=1, descending=True)
    out = {}
    for k in (1, 5, 10):
        hits = [any(item_keys[j] == query_keys[i] for j in order[i, :k].tolist()) for i in range(len(queries))]
        out[f"R@{k}"] = sum(hits) / len(hits)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=32, help="the size the run was trained on")
    parser.add_argument("--json")
    args = parser.parse_args()
    run = Run.load(args.run)
    rows = []
    for kind, (media_name, text_name) in KINDS.items():
        media, texts, keys = pairs(kind, args.pairs, args.image_size)
        m, t = embed(run, media), embed(run, texts)
        rows.append({"query": f"{text_name}->{media_name}", **recall(t, m, keys, keys)})
        rows.append({"query": f"{media_name}->{text_name}", **recall(m, t, keys, keys)})
        if kind == "image_caption":  # the captions spoken (a new voice each), finding their pictures
            rng = np.random.default_rng(0)
            spoken = embed(run, [Document.of(speak(key, random_voice(rng))) for key in keys])
            rows.append({"query": "speech->image", **recall(spoken, m, keys, keys)})
    dim = run.model.config.dim
    latency = {}
    for size in (10_000, 100_000):
        index = Index(torch.nn.functional.normalize(torch.randn(size, dim), dim=1), [{}] * size)
        query = index.vectors[0]
        times = []
        for _ in range(50):
            start = time.perf_counter()
            index.search(query, 10)
            times.append(time.perf_counter() - start)
        latency[size] = statistics.median(times)
    print(f"{machine_name(torch.device('cpu'))}, {args.run}: {args.pairs} held-out pairs per kind (chance R@1 "
          f"{1 / args.pairs:.1%}, R@10 {10 / args.pairs:.1%}; sound labels repeat, see the docstring)")  # fmt: skip
    print(f"{'query':<16} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
    for r in rows:
        print(f"{r['query']:<16} {r['R@1']:>6.1%} {r['R@5']:>6.1%} {r['R@10']:>6.1%}")
    print("exact search, top 10: " + ", ".join(f"{n:,} items {s * 1000:.2f} ms" for n, s in latency.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "pairs": args.pairs, "recall": rows,
                       "latency_s": {str(k): v for k, v in latency.items()}}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
