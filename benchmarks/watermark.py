"""Watermarks measured: false positives on media that was never marked, detection after common edits,
and what marking costs in quality (``polymodal.watermark``).

Images: shapes-world scenes at 64 and 128 px (the sizes the built-in tokenizer draws) and crops of a
real photograph (matplotlib's sample ``grace_hopper.jpg``, random crops resized to those sizes);
edits: JPEG quality 75, resize to half, a crop of 10% off the top and left, Gaussian noise of σ 5 (of
255). Audio: shapes-world sound events and spoken sentences (eSpeak NG voices), 16 kHz; edits: Ogg
Vorbis and MP3 re-encoding (libsndfile's defaults), cutting the first fifth (and 77 samples, off the
STFT's grid), noise at σ 0.01.
A file counts as marked when its score is above ``polymodal.watermark.THRESHOLD``.

    python benchmarks/watermark.py --json benchmarks/results/watermark_cpu.json
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import soundfile as sf
from PIL import Image as PILImage

from polymodal import watermark as W
from polymodal.content import Audio, Image
from polymodal.data.shapes import iter_scene_images, iter_sound_clips
from polymodal.data.shapes.language import caption
from polymodal.data.shapes.seeds import sample_rng
from polymodal.data.shapes.speech import random_voice, speak
from polymodal.data.shapes.world import random_scene


def image_edits() -> dict:
    def jpeg(image: Image) -> Image:
        out = io.BytesIO()
        image.pixels.save(out, format="JPEG", quality=75)
        return Image(PILImage.open(io.BytesIO(out.getvalue())).convert("RGB"))

    def half(image: Image) -> Image:
        p = image.pixels
        return Image(p.resize((p.width // 2, p.height // 2), PILImage.LANCZOS))

    def crop(image: Image) -> Image:
        p = image.pixels
        return Image(p.crop((p.width // 10, p.height // 10, p.width, p.height)))

    def noise(image: Image) -> Image:
        a = np.asarray(image.pixels, np.float32)
        a = a + np.random.default_rng(0).normal(0, 5, a.shape)
        return Image(PILImage.fromarray(np.clip(a, 0, 255).astype(np.uint8)))

    return {"none": lambda x: x, "jpeg q75": jpeg, "resize to half": half, "crop 10%": crop, "noise σ5": noise}


def audio_edits() -> dict:
    def encode(audio: Audio, fmt: str, subtype: str | None) -> Audio:
        out = io.BytesIO()
        sf.write(out, audio.waveform[0], audio.sample_rate, format=fmt, subtype=subtype)
        return Audio.from_bytes(out.getvalue())

    def cut(audio: Audio) -> Audio:
        return Audio(audio.waveform[:, audio.waveform.shape[1] // 5 + 77 :], audio.sample_rate)

    def noise(audio: Audio) -> Audio:
        w = audio.waveform + np.random.default_rng(0).normal(0, 0.01, audio.waveform.shape)
        return Audio(np.clip(w, -1, 1).astype(np.float32), audio.sample_rate)

    return {"none": lambda x: x, "ogg vorbis": lambda a: encode(a, "OGG", "VORBIS"),
            "mp3": lambda a: encode(a, "MP3", None), "cut 20% + 77 samples": cut, "noise σ0.01": noise}  # fmt: skip


def photo_crops(size: int, n: int) -> list[Image]:
    photo = PILImage.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    rng = np.random.default_rng(size)
    crops = []
    for _ in range(n):
        side = int(rng.integers(size, min(photo.size)))
        x, y = (int(rng.integers(0, d - side + 1)) for d in photo.size)
        crops.append(Image(photo.crop((x, y, x + side, y + side)).resize((size, size), PILImage.LANCZOS)))
    return crops


def spoken(n: int) -> list[Audio]:
    clips = []
    for i in range(n):
        rng = sample_rng(7, "test", "benchmark/watermark", i)
        clips.append(speak(caption(random_scene(rng), rng), random_voice(rng)))
    return clips


def rates(parts: list, mark, score, edits: dict) -> dict:  # noqa: ANN001
    unmarked = [score(p) for p in parts]
    row = {"false_positive_rate": float(np.mean(np.array(unmarked) > W.THRESHOLD)), "max_unmarked_score": max(unmarked)}
    marked = [mark(p) for p in parts]
    for name, edit in edits.items():
        scores = [score(edit(m)) for m in marked]
        detected = float(np.mean(np.array(scores) > W.THRESHOLD))
        row[name] = {"detected": detected, "median_score": float(np.median(scores))}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="Scenes per size (and a quarter as many photo crops).")
    parser.add_argument("--clips", type=int, default=100, help="Sound events, and as many spoken sentences.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tic = time.perf_counter()
    results: dict = {"threshold": W.THRESHOLD, "images": {}, "audio": {}}
    for size in (64, 128):
        scenes = list(itertools.islice(iter_scene_images(11, size=size, split="test"), args.images))
        photos = photo_crops(size, args.images // 4)
        for name, parts in ((f"scenes {size} px", scenes), (f"photo crops {size} px", photos)):
            row = rates(parts, W.mark_image, W.image_score, image_edits())
            a = np.stack([np.asarray(p.pixels, np.float32) for p in parts])
            b = np.stack([np.asarray(W.mark_image(p).pixels, np.float32) for p in parts])
            row["psnr_db"] = float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))
            results["images"][name] = row
            print(name, json.dumps(row), flush=True)
    sounds = list(itertools.islice(iter_sound_clips(11, include_speech=False, split="test"), args.clips))
    for name, parts in (("sound events", sounds), ("speech", spoken(args.clips))):
        row = rates(parts, W.mark_audio, W.audio_score, audio_edits())
        snr = []
        for p in parts:
            x, y = W._mono16k(p), W.mark_audio(p).waveform[0]
            snr.append(10 * np.log10(np.sum(x**2) / max(np.sum((x - y) ** 2), 1e-12)))
        row["snr_db_median"] = float(np.median(snr))
        row["seconds_median"] = float(np.median([p.duration for p in parts]))
        results["audio"][name] = row
        print(name, json.dumps(row), flush=True)
    results["seconds"] = round(time.perf_counter() - tic, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
