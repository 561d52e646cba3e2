"""Shapes world samples, shards and streams: determinism, round trips and safe writes."""

from __future__ import annotations

import itertools
import json
import tarfile

import numpy as np
import pytest

from polymodal.content import Audio, Image, Text, Video
from polymodal.data.shapes import (
    ALL_KINDS,
    GENERATOR_VERSION,
    iter_scene_images,
    iter_sound_clips,
    list_kinds,
    make_sample,
    make_shapes,
    read_shards,
)
from polymodal.data.shapes import samples as samples_module
from polymodal.errors import ConfigError

N = 2 * len(ALL_KINDS)  # every kind twice


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    paths = make_shapes(out, n=N, seed=5, samples_per_shard=10, workers=1, progress=False)
    return out, paths


def test_same_arguments_same_sample_other_seed_or_split_differs():
    for kind in list_kinds():
        a, b = make_sample(kind, 3, seed=1), make_sample(kind, 3, seed=1)
        assert a == b and a.meta == b.meta
        assert make_sample(kind, 3, seed=2) != a
        assert make_sample(kind, 3, seed=1, split="test") != a
        assert make_sample(kind, 4, seed=1) != a


def test_every_document_carries_its_metadata_and_the_right_parts():
    expected_first = {"image_caption": Image, "caption_image": Text, "speech_transcript": Audio}
    for kind in list_kinds():
        sample = make_sample(kind, 0)
        meta = sample.meta
        assert meta["kind"] == kind and meta["generator_version"] == GENERATOR_VERSION
        assert meta["key"] == sample.key and "." not in sample.key
        assert meta["direction"] and meta["ability"] and meta["truth"]
        json.dumps(meta)  # JSON-ready
        if kind in expected_first:
            assert isinstance(sample.document.parts[0], expected_first[kind])
        if kind.endswith("_qa"):
            assert sample.document.is_chat
            assert [m.role for m in sample.document.messages][:2] == ["user", "assistant"]
            assert sample.document.messages[1].parts[0].text == meta["truth"]["questions"][0]["answer"]
    assert isinstance(make_sample("video_qa", 0).document.parts[0], Video)


def test_shards_hold_the_samples_in_kind_cycle_order(corpus):
    out, paths = corpus
    assert [p.name for p in paths] == ["shapes-000000.tar", "shapes-000001.tar", "shapes-000002.tar"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] == N and manifest["seed"] == 5 and manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["counts"] == {kind: 2 for kind in sorted(ALL_KINDS)}
    assert [s["samples"] for s in manifest["shards"]] == [10, 10, 4]
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in paths)
    assert manifest["elapsed_seconds"] > 0
    keys = [s.key for s in read_shards(out)]
    expected = [f"{ALL_KINDS[j % len(ALL_KINDS)]}-train-5-{j // len(ALL_KINDS):07d}" for j in range(N)]
    assert keys == expected
    names = tarfile.open(paths[0]).getnames()
    assert f"{expected[0]}.json" in names and f"{expected[0]}.m0_p0.png" in names


def test_read_shards_round_trips_documents_and_metadata(corpus):
    out, _ = corpus
    for sample in read_shards(out):
        kind, index = sample.meta["kind"], sample.meta["index"]
        original = make_sample(kind, index, seed=5)
        assert sample.meta == json.loads(json.dumps(original.meta))
        assert [m.role for m in sample.document] == [m.role for m in original.document]
        for got, want in zip(sample.document.parts, original.document.parts, strict=True):
            if isinstance(want, Video):  # MP4 is lossy: same frames and length, close pixels
                assert got.num_frames == want.num_frames and abs(got.duration - want.duration) < 0.05
                diff = np.abs(got.frames[-1].image.to_array().astype(int) - want.frames[-1].image.to_array())
                assert np.median(diff) < 8
            else:
                assert got == want  # text, PNG and 16-bit FLAC are exact


def test_one_and_two_workers_write_identical_shards(corpus, tmp_path):
    out, paths = corpus
    again = make_shapes(tmp_path, n=N, seed=5, samples_per_shard=10, workers=2, progress=False)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_a_sample_does_not_depend_on_the_mix_or_the_shard_layout(tmp_path):
    paths = make_shapes(tmp_path, n=6, seed=5, kinds=("sound_qa", "image_caption"), samples_per_shard=4, progress=False)
    for sample in read_shards(paths):
        assert sample == make_sample(sample.meta["kind"], sample.meta["index"], seed=5)


def test_interrupted_run_leaves_only_complete_shards_and_no_manifest(tmp_path, monkeypatch):
    real = samples_module.make_sample

    def failing(kind, index, **kw):
        if index == 10:  # global sample 20 of 2 kinds: after 16 written, one into the sixth shard
            raise KeyboardInterrupt
        return real(kind, index, **kw)

    monkeypatch.setattr(samples_module, "make_sample", failing)
    (tmp_path / ".shapes-000009.tar.tmp-1").write_bytes(b"half a shard from a killed run")
    with pytest.raises(KeyboardInterrupt):  # in-process (workers=1), so the patch applies
        make_shapes(tmp_path, n=24, kinds=("sound_qa", "sound_label"), samples_per_shard=3, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"shapes-00000{i}.tar" for i in range(5)]
    assert len(list(read_shards(tmp_path))) == 15
    monkeypatch.setattr(samples_module, "make_sample", real)
    with pytest.raises(ConfigError, match="already holds a shapes corpus"):
        make_shapes(tmp_path, n=8, kinds=("sound_qa", "sound_label"), samples_per_shard=3, progress=False)
    paths = make_shapes(
        tmp_path, n=8, kinds=("sound_qa", "sound_label"), samples_per_shard=3, progress=False, overwrite=True
    )
    assert len(paths) == 3 and (tmp_path / "manifest.json").exists()
    assert len(list(read_shards(tmp_path))) == 8


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown sample kind"):
        make_shapes(tmp_path, n=1, kinds=("pictures",), progress=False)
    with pytest.raises(ConfigError, match="unknown split"):
        make_shapes(tmp_path, n=1, split="eval", progress=False)
    with pytest.raises(ConfigError, match="n must be"):
        make_shapes(tmp_path, n=0, progress=False)
    with pytest.raises(ConfigError, match="image size"):
        make_shapes(tmp_path, n=1, image_size=7, progress=False)


def test_streams_are_deterministic_and_endless():
    images = list(iter_scene_images(3, size=32, count=5))
    assert images == list(iter_scene_images(3, size=32, count=5)) and len(images) == 5
    assert all(im.size == (32, 32) for im in images)
    assert images != list(iter_scene_images(4, size=32, count=5))
    assert len(list(itertools.islice(iter_scene_images(3), 50))) == 50
    clips = list(itertools.islice(iter_sound_clips(3), 30))
    assert all(c.sample_rate == 16_000 and c.num_channels == 1 for c in clips)
    assert clips == list(iter_sound_clips(3, count=30))
    assert any(c.source == "shapes:speech" for c in clips) and any(c.source.startswith("shapes:sound") for c in clips)
    assert all(c.source.startswith("shapes:sound") for c in iter_sound_clips(3, count=20, include_speech=False))


def test_max_objects_makes_an_easier_corpus_and_is_checked():
    from polymodal.data.shapes.samples import ShapesConfig, make_sample

    easy = ShapesConfig(max_objects=2)
    counts = {len(make_sample(kind, i, config=easy).meta["truth"]["scene"]["objects"])
              for kind in ("image_qa", "image_caption", "spoken_image_qa") for i in range(40)}  # fmt: skip
    assert counts == {1, 2}
    whole = {len(make_sample("image_qa", i).meta["truth"]["scene"]["objects"]) for i in range(60)}
    assert max(whole) > 2
    with pytest.raises(ConfigError, match="max_objects must be an int in \\[1, 4\\]"):
        ShapesConfig(max_objects=5)
