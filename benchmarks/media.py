"""Media in and out: the built-in image and audio tokenizers' speed, and end-to-end time to generate
an image and a second of speech with a run (tokens + decoder), in one process on one machine.

* image tokenizer: images/s to encode (pixels -> codes) and decode (codes -> pixels), batches of
  ``--batch`` random images at 64 px and 256 px;
* audio tokenizer: seconds of audio per second of compute, encoding and decoding ``--seconds`` s clips;
* generation: one 8x8-grid image and one second of speech from a run (``--run DIR``, e.g. a
  quickstart's ``DIR/run``; by default an untrained ``tiny`` model over the built-in vocabulary, which
  costs the same per token), greedy, unguided and with classifier-free guidance (the conditioned and
  unconditioned prompts run as one batch): tokens/s, total time, and for speech the real-time factor
  (compute time / audio duration; below 1 is faster than real time);
* streamed speech: the same speech (1 s and up to 5 s) written with ``audio_chunk`` (the clip comes
  out in chunks of that many codes as it is generated, each decoded with the decoder's context):
  time to first audio beside the time to the whole clip.

Each figure is the median of ``--repeats`` runs after one warm-up.

    python benchmarks/media.py
    python benchmarks/media.py --run qs/run --json benchmarks/results/media_cpu.json
    python benchmarks/media.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from common import machine_name, sync

from polymodal.content import Document
from polymodal.generation import AudioDelta, SamplingConfig, generate, stream
from polymodal.model import Transformer, preset
from polymodal.run import Run
from polymodal.tokenizers.audio import SAMPLE_RATE
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        tic = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


@torch.no_grad()
def tokenizers(codec: DocumentTokenizer, device: torch.device, batch: int, seconds: float, repeats: int) -> dict:
    results = {}
    image = codec.tokenizer("image").model.to(device)
    for side in (64, 256):
        pixels = torch.rand(batch, 3, side, side, device=device) * 2 - 1
        codes = image.encode(pixels)
        results[f"image_{side}"] = {
            "grid": list(codes.shape[1:]),
            "encode_images_per_s": batch / timed(lambda p=pixels: image.encode(p), device, repeats),
            "decode_images_per_s": batch / timed(lambda c=codes: image.decode(c), device, repeats),
        }
    audio_tok = codec.tokenizer("audio")
    audio = audio_tok.model.to(device)
    rate = SAMPLE_RATE
    wave = torch.randn(batch, int(seconds * rate), device=device) * 0.1
    codes = audio.encode(wave)
    audio_seconds = batch * seconds
    results["audio"] = {
        "clip_seconds": seconds,
        "encode_audio_seconds_per_s": audio_seconds / timed(lambda: audio.encode(wave), device, repeats),
        "decode_audio_seconds_per_s": audio_seconds / timed(lambda: audio.decode(codes), device, repeats),
    }
    return results


def generation(run: Run, device: torch.device, repeats: int) -> dict:
    results = {}
    jobs = {
        "image_8x8": ("image", Document.of("a red circle on the left"), {"grid": (8, 8)}),
        "speech_1s": ("audio", Document.of("say: the red circle is on the left"), {"max_audio_seconds": 1.0}),
    }
    for name, (output, prompt, extra) in jobs.items():
        for guidance in (1.0, 3.0):
            sampling = SamplingConfig(temperature=0, guidance_scale=guidance, **extra)
            out: list = []

            def once(o=output, p=prompt, s=sampling, into=out) -> None:
                into[:] = generate(run, [p], output=o, sampling=s, check_direction=False)

            seconds = timed(once, device, repeats)
            tokens = len(out[0].ids)
            row = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
            if output == "audio":
                duration = out[0].part.waveform.shape[-1] / out[0].part.sample_rate
                row |= {"audio_seconds": duration, "real_time_factor": seconds / max(duration, 1e-9)}
            results[f"{name}{'_guided' if guidance != 1.0 else ''}"] = row
    return results


def streaming(run: Run, device: torch.device, repeats: int, chunk: int) -> dict:
    results = {}
    prompt = Document.of("say: the red circle is on the left")
    for seconds in (1.0, 5.0):
        sampling = SamplingConfig(temperature=0, max_audio_seconds=seconds, audio_chunk=chunk)
        firsts, totals, samples = [], [], 0
        for attempt in range(repeats + 1):  # the first is a warm-up
            sync(device)
            tic, first, samples = time.perf_counter(), None, 0
            for event in stream(run, [prompt], output="audio", sampling=sampling, check_direction=False):
                if isinstance(event, AudioDelta):
                    first = first if first is not None else time.perf_counter() - tic
                    samples += len(event.samples)
            if attempt:
                firsts.append(first)
                totals.append(time.perf_counter() - tic)
        duration = samples / SAMPLE_RATE
        total = statistics.median(totals)
        results[f"speech_{seconds:g}s_streamed"] = {
            "time_to_first_audio_s": statistics.median(firsts), "seconds": total, "audio_seconds": duration,
            "real_time_factor": total / max(duration, 1e-9), "chunk_codes": chunk,
        }  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run", help="a run folder (default: an untrained tiny model, the built-in vocabulary)")
    parser.add_argument("--batch", type=int, default=16, help="images / clips per tokenizer call")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each audio clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=10, help="codes per streamed speech chunk (the server's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.run:
        run = Run.load(args.run)
    else:
        codec = DocumentTokenizer.load(default_vocabulary_dir())
        torch.manual_seed(0)
        config = preset("tiny", codec.vocab.size).with_(modality_experts=True)
        run = Run(Transformer(config).eval(), codec, ("text->image", "text->audio"))
    run.model.to(device)
    results = {"tokenizers": tokenizers(run.tokenizer, device, args.batch, args.seconds, args.repeats)}
    for name, row in results["tokenizers"].items():
        print(f"{name:<10} " + "  ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row.items()))  # fmt: skip
    results["generation"] = generation(run, device, args.repeats)
    results["generation"] |= streaming(run, device, args.repeats, args.chunk)
    for name, row in results["generation"].items():
        print(f"{name:<18} " + "  ".join(f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row.items()))  # fmt: skip
    if args.json:
        info = {"benchmark": "media", "device": str(device), "machine": machine_name(device),
                "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                "run": args.run or "untrained tiny", "batch": args.batch, "results": results}  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
