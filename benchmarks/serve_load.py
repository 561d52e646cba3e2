"""The server under load: throughput and latency at 1, 8, 32 and 64 concurrent clients, beside the
same requests served one at a time, in one process on one machine (never compare across runs).

A uvicorn server runs in a thread of this process with the run (``--run``, else a random ``tiny``
model over the built-in vocabulary); clients are threads sending chat requests over HTTP, each a
picture (a different one per request, so the media cache does not flatter the figures) and a
question, greedy, ``--max-tokens`` at most. At each level every client sends its share of
``--requests`` one after another. The media cache is measured apart: the same picture asked
``--repeats`` times, with the cache on and off.

    python benchmarks/serve_load.py --run qs/run
    python benchmarks/serve_load.py --levels 1,8 --requests 32 --json out.json
    python benchmarks/serve_load.py --run qs/run --device cuda
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import uvicorn
from common import machine_name
from PIL import Image as PILImage
from PIL import ImageDraw

from polymodal.model import Transformer, preset
from polymodal.run import Run
from polymodal.serve import ServeConfig, create_app
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir


def random_run(device: str, shape: str) -> Run:
    tokenizer = DocumentTokenizer.load(default_vocabulary_dir())
    torch.manual_seed(0)
    model = Transformer(preset(shape, tokenizer.vocab.size)).to(device).eval()
    return Run(model, tokenizer, ("image+text->text", "text->text"))


def picture(k: int, side: int = 32) -> str:
    image = PILImage.new("RGB", (side, side), (230, 230, 225))
    colour = ((k * 53) % 256, (k * 97) % 256, (k * 151) % 256)
    ImageDraw.Draw(image).ellipse((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


class Server:
    def __init__(self, run: Run, config: ServeConfig) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = create_app(run, config)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def ask(self, body: dict) -> tuple[float, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        start = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body=json.dumps(body),
                           headers={"content-type": "application/json"})  # fmt: skip
        reply = connection.getresponse()
        data = json.loads(reply.read())
        elapsed = time.perf_counter() - start
        connection.close()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {data}")
        return elapsed, data

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def request(k: int, max_tokens: int, url: str | None = None) -> dict:
    return {"model": "bench", "temperature": 0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url or picture(k)}},
        {"type": "text", "text": "Describe the picture."}]}]}  # fmt: skip


def level(server: Server, clients: int, total: int, max_tokens: int) -> dict:
    share = [list(range(c, total, clients)) for c in range(clients)]
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(ks: list[int]) -> None:
        for k in ks:
            elapsed, data = server.ask(request(k, max_tokens))
            with lock:
                latencies.append(elapsed)
                tokens[0] += data["usage"]["completion_tokens"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, share))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients, "requests": total, "seconds": wall, "requests_per_s": total / wall,
        "tokens_per_s": tokens[0] / wall, "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run folder (default: a random tiny model over the built-in vocabulary)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny", help="the random model's preset (without --run)")
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--requests", type=int, default=128, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=16, help="requests of the media-cache measurement")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    run = Run.load(args.run, device=args.device) if args.run else random_run(args.device, args.preset)
    config = ServeConfig(model_name="bench", max_batch=args.max_batch, max_queue=256, max_completion_tokens=256)
    server = Server(run, config)
    server.ask(request(0, 2))  # warm-up
    rows = [level(server, int(c), args.requests, args.max_tokens) for c in args.levels.split(",")]
    server.stop()
    base = rows[0]["requests_per_s"]
    what = args.run or f"random {args.preset} model"
    print(f"{machine_name(torch.device(args.device))}, {what}: {args.requests} requests "
          f"per level, a picture and a question each, greedy, at most {args.max_tokens} new tokens")  # fmt: skip
    print(f"{'clients':>8} {'req/s':>8} {'tokens/s':>9} {'p50 s':>7} {'p99 s':>7} {'vs one at a time':>17}")
    for r in rows:
        print(f"{r['clients']:>8} {r['requests_per_s']:>8.2f} {r['tokens_per_s']:>9.1f} {r['p50_s']:>7.3f} "
              f"{r['p99_s']:>7.3f} {r['requests_per_s'] / base:>16.2f}x")  # fmt: skip

    cache = {}
    url = picture(12345, side=128)
    for items in (512, 0):
        server = Server(run, ServeConfig(model_name="bench", media_cache_items=items, max_completion_tokens=256))
        server.ask(request(0, 1, url))
        times = [server.ask(request(0, 1, url))[0] for _ in range(args.repeats)]
        server.stop()
        cache["on" if items else "off"] = statistics.median(times)
    on, off = cache["on"] * 1000, cache["off"] * 1000
    print(f"the same 128x128 picture asked {args.repeats} times (1 new token): median {on:.1f} ms with the media "
          f"cache, {off:.1f} ms without ({off / on:.2f}x)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_name(torch.device(args.device)), "run": args.run, "levels": rows,
                       "max_tokens": args.max_tokens, "media_cache_median_s": cache}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
