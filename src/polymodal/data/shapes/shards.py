"""Writing the shapes world as WebDataset shards, and reading them back as documents.

A corpus is ``shapes-000000.tar``, ``shapes-000001.tar`` ... plus ``manifest.json`` in one folder.
Each sample is a group of tar members sharing a key (``image_qa-train-0-0000012``):

- ``<key>.json``: ``{"document": <the Document's JSON form>, "meta": <metadata>}``, where every
  media entry's ``path`` is the member's name after the key (``"m0_p1.png"``), so an extracted
  sample folder is also a document that ``Document.from_json(..., base_dir=folder)`` reads;
- ``<key>.m<i>_p<j>.png`` images, ``.flac`` audio (16-bit, lossless), ``.mp4`` videos
  (MPEG-4 video + AAC audio, lossy; the exact frames and sound are in the ground truth).

Global sample ``j`` of a mixed corpus is sample ``j // len(kinds)`` of kind ``kinds[j % len(kinds)]``
and lands in shard ``j // samples_per_shard``. Workers (spawned processes) only make samples; the
parent writes them in order, so the shards are byte-identical for any worker count. Each shard is
written under a hidden temporary name and renamed when complete; ``manifest.json`` is written last
and marks a finished corpus. An interrupted run leaves complete shards only (and no manifest);
leftover temporary files from a killed run are removed by the next run in that folder.

This module knows nothing about how samples are generated beyond calling
:func:`~polymodal.data.shapes.samples.make_sample`.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile

from polymodal.content import Audio, Document, Image, MediaLimits, Message, Part, Text, Video
from polymodal.data.shapes import samples as _samples
from polymodal.data.shapes.samples import ALL_KINDS, ShapesConfig, ShapesSample, check_kinds
from polymodal.data.shapes.seeds import GENERATOR_VERSION, check_seed, check_split
from polymodal.data.shapes.speech import backend_versions
from polymodal.data.shapes.video import encode_mp4
from polymodal.errors import ConfigError, CorruptMediaError
from polymodal.files import write_text_atomic
from polymodal.progress import show_progress

SHARD_PATTERN = "shapes-{:06d}.tar"
MANIFEST = "manifest.json"
_TMP_GLOB = ".shapes-*.tar.tmp*"
_BATCH = 8  # samples per worker task: small enough for a smooth progress bar


def make_shapes(
    out_dir: str | os.PathLike,
    *,
    n: int,
    seed: int = 0,
    kinds: tuple[str, ...] | list[str] = ALL_KINDS,
    split: str = "train",
    image_size: int = 64,
    video_size: int = 64,
    max_objects: int = 4,
    easy_scenes: bool = False,
    samples_per_shard: int = 1000,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Generate ``n`` samples cycling through ``kinds`` into WebDataset shards in ``out_dir``.

    Returns the shard paths in order. Refuses a folder that already holds a shapes corpus unless
    ``overwrite``. ``workers > 1`` uses spawned processes: call it under
    ``if __name__ == "__main__":`` in scripts.
    """
    config = ShapesConfig(image_size=image_size, video_size=video_size, max_objects=max_objects,
                          easy_scenes=easy_scenes)  # fmt: skip
    plan = _check_plan(n, seed, kinds, split, config, samples_per_shard, workers)
    out_dir = Path(out_dir)
    _prepare_folder(out_dir, overwrite)
    started = time.perf_counter()
    batches = [(start, min(start + _BATCH, n), plan) for start in range(0, n, _BATCH)]
    writer = _ShardWriter(out_dir, n, samples_per_shard)
    with show_progress(n, "shapes", "sample", enabled=progress) as bar:
        try:
            if workers == 1:
                results: Iterable[list] = map(_make_batch, batches)
                for batch in results:
                    writer.write_all(batch)
                    bar.update(len(batch))
            else:
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for batch in pool.imap(_make_batch, batches):
                        writer.write_all(batch)
                        bar.update(len(batch))
        finally:
            writer.abort()  # no-op when every shard was completed
    manifest = {
        "generator": "polymodal.data.shapes",
        "generator_version": GENERATOR_VERSION,
        "seed": plan["seed"],
        "split": split,
        "n": n,
        "kinds": list(plan["kinds"]),
        "counts": dict(sorted(writer.counts.items())),
        "config": plan["config"],
        "speech_backend": backend_versions(),
        "samples_per_shard": samples_per_shard,
        "shards": writer.shards,
        "total_bytes": sum(s["bytes"] for s in writer.shards),
        "workers": workers,
        "elapsed_seconds": round(time.perf_counter() - started, 3),
    }
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return [out_dir / s["name"] for s in writer.shards]


def _check_plan(
    n: int,
    seed: int,
    kinds: tuple[str, ...] | list[str],
    split: str,
    config: ShapesConfig,
    samples_per_shard: int,
    workers: int,
) -> dict:
    """Validate the arguments; the plan every worker gets (plain data: it crosses processes)."""
    for name, value in (("n", n), ("samples_per_shard", samples_per_shard), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    check_split(split)
    return {"seed": check_seed(seed), "split": split, "kinds": check_kinds(kinds), "config": config.to_dict()}


def _prepare_folder(out_dir: Path, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(_TMP_GLOB):
        stale.unlink(missing_ok=True)  # a killed run's partial shard: never complete, never read
    existing = sorted(out_dir.glob("shapes-*.tar")) + ([out_dir / MANIFEST] if (out_dir / MANIFEST).exists() else [])
    if existing and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds a shapes corpus ({existing[0].name} ...); "
            "pass overwrite=True (--overwrite on the command line) to replace it"
        )
    (out_dir / MANIFEST).unlink(missing_ok=True)  # first: a folder without manifest is unfinished
    for path in existing:
        path.unlink(missing_ok=True)


def _make_batch(task: tuple[int, int, dict]) -> list[tuple[str, dict[str, bytes | str]]]:
    """Worker: make and encode global samples ``start`` ... ``stop - 1``."""
    start, stop, plan = task
    kinds, config = plan["kinds"], ShapesConfig(**plan["config"])
    out = []
    for j in range(start, stop):
        kind = kinds[j % len(kinds)]
        sample = _samples.make_sample(kind, j // len(kinds), seed=plan["seed"], split=plan["split"], config=config)
        out.append((kind, encode_sample(sample, video_fps=config.video_fps)))
    return out


class _ShardWriter:
    """Writes samples in global order, one temporary file per shard, renamed when full."""

    def __init__(self, out_dir: Path, n: int, per_shard: int) -> None:
        self.out_dir, self.n, self.per_shard = out_dir, n, per_shard
        self.written = 0
        self.counts: Counter[str] = Counter()
        self.shards: list[dict] = []
        self.file = self.tar = self.tmp = None

    def write_all(self, batch: list[tuple[str, dict]]) -> None:
        for kind, members in batch:
            if self.tar is None:
                self._open(self.written // self.per_shard)
            self.tar.write(members)
            self.counts[kind] += 1
            self.written += 1
            if self.written % self.per_shard == 0 or self.written == self.n:
                self._finish()

    def _open(self, index: int) -> None:
        self.name = SHARD_PATTERN.format(index)
        self.tmp = self.out_dir / f".{self.name}.tmp-{os.getpid()}"
        import webdataset  # here, not at the top: it imports torch, which spawned workers never need

        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _finish/abort
        # Fixed owner, mode and mtime: the same samples give the same bytes.
        self.tar = webdataset.TarWriter(self.file, encoder=False, mtime=0, user="shapes", group="shapes")
        self.in_shard = self.written

    def _finish(self) -> None:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        final = self.out_dir / self.name
        os.replace(self.tmp, final)
        self.shards.append({"name": self.name, "samples": self.written - self.in_shard, "bytes": final.stat().st_size})
        self.file = self.tar = self.tmp = None

    def abort(self) -> None:
        """Drop the shard being written, if any (after an error or interrupt)."""
        if self.tar is not None:
            with contextlib.suppress(Exception):  # it only flushes into a file we delete
                self.tar.close()
        if self.file is not None:
            self.file.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
        self.file = self.tar = self.tmp = None


# -- one sample <-> tar members ---------------------------------------------------------------------


def encode_sample(sample: ShapesSample, *, video_fps: int) -> dict[str, bytes | str]:
    """The sample's tar members (``__key__`` plus extension -> bytes), as WebDataset writes them."""
    members: dict[str, bytes | str] = {"__key__": sample.key}
    messages = []
    for i, message in enumerate(sample.document.messages):
        content = []
        for j, part in enumerate(message.parts):
            stem = f"m{i}_p{j}"
            if isinstance(part, Text):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, Image):
                members[f"{stem}.png"] = part.to_png_bytes()
                content.append({"type": "image", "path": f"{stem}.png"})
            elif isinstance(part, Audio):
                members[f"{stem}.flac"] = flac_bytes(part)
                content.append({"type": "audio", "path": f"{stem}.flac"})
            else:
                members[f"{stem}.mp4"] = encode_mp4(part, fps=video_fps)
                content.append({"type": "video", "path": f"{stem}.mp4", "fps": video_fps})
        messages.append({"role": message.role, "content": content})
    record = {"document": {"messages": messages}, "meta": sample.meta}
    members["json"] = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return members


def flac_bytes(audio: Audio) -> bytes:
    """16-bit FLAC. Integer samples are written directly (libsndfile would scale floats by 32767,
    not 32768), so waveforms on the 16-bit grid read back exactly."""
    pcm = np.clip(np.rint(audio.waveform * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm.T, audio.sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_sample(
    key: str, members: dict[str, bytes], *, video_fps: float | None = None, limits: MediaLimits | None = None
) -> ShapesSample:
    """A :class:`ShapesSample` from one key's members (extension -> bytes); media decoded from
    memory. ``video_fps`` overrides the frame rate videos are sampled at (default: as written)."""
    if "json" not in members:
        raise CorruptMediaError(f"sample {key!r} has no .json member", source=key)
    record = json.loads(members["json"].decode("utf-8"))
    messages = []
    for message in record["document"]["messages"]:
        parts: list[Part] = []
        for entry in message["content"]:
            if entry["type"] == "text":
                parts.append(Text(entry["text"]))
                continue
            name = entry["path"]
            if name not in members:
                raise CorruptMediaError(f"sample {key!r} names member {name!r}, which is missing", source=key)
            label = f"{key}.{name}"
            if entry["type"] == "image":
                parts.append(Image.from_bytes(members[name], name=label, limits=limits))
            elif entry["type"] == "audio":
                parts.append(Audio.from_bytes(members[name], name=label, limits=limits))
            else:
                fps = video_fps or entry.get("fps", 1.0)
                parts.append(Video.from_bytes(members[name], name=label, fps=fps, limits=limits))
        messages.append(Message(message["role"], tuple(parts)))
    return ShapesSample(key, Document(tuple(messages)), record["meta"])


def read_shards(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    video_fps: float | None = None,
    limits: MediaLimits | None = None,
) -> Iterator[ShapesSample]:
    """Every sample of ``paths`` (shard files, or a corpus folder), in order, as documents with
    their metadata. Streams the tar files: nothing is extracted to disk."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        path = Path(path)
        shard_files = sorted(path.glob("shapes-*.tar")) if path.is_dir() else [path]
        for shard in shard_files:
            yield from _read_one(shard, video_fps, limits)


def read_texts(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> Iterator[str]:
    """The text parts of every sample, read from the JSON members only (no media is decoded)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        path = Path(path)
        for shard in sorted(path.glob("shapes-*.tar")) if path.is_dir() else [path]:
            with tarfile.open(shard, mode="r|") as tar:
                for info in tar:
                    if info.isfile() and info.name.endswith(".json"):
                        record = json.loads(tar.extractfile(info).read())
                        for message in record["document"]["messages"]:
                            yield from (c["text"] for c in message["content"] if c["type"] == "text")


def _read_one(shard: Path, video_fps: float | None, limits: MediaLimits | None) -> Iterator[ShapesSample]:
    key, members = None, {}
    with tarfile.open(shard, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            # WebDataset's rule: the key is the name up to the first dot of its last component.
            folder, _, base = info.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot:
                continue
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key:
                if key is not None:
                    yield decode_sample(key, members, video_fps=video_fps, limits=limits)
                key, members = member_key, {}
            members[ext] = tar.extractfile(info).read()
    if key is not None:
        yield decode_sample(key, members, video_fps=video_fps, limits=limits)
