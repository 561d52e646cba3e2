"""Cross-modal retrieval: an index of a folder, searched by text or by a file, from the library and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.content import Document
from polymodal.errors import ConfigError
from polymodal.retrieval import Index, build_index, embed
from test_serve import tiny_run


@pytest.fixture(scope="module")
def run():  # noqa: ANN201
    return tiny_run()


@pytest.fixture
def folder(tmp_path):  # noqa: ANN201
    root = tmp_path / "things"
    (root / "pictures").mkdir(parents=True)
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        PILImage.new("RGB", (8, 8), colour).save(root / "pictures" / f"{name}.png")
    (root / "notes.txt").write_text("draw a red circle")
    (root / "other.md").write_text("say hello, what is this?")
    t = np.arange(8000) / 16000
    sf.write(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    (root / "ignored.bin").write_bytes(b"\0\1")
    return root


def test_an_index_ranks_items_of_every_modality_and_survives_saving(run, folder, tmp_path):
    index = build_index(run, folder, progress=False)
    assert sorted(i["path"] for i in index.items) == ["notes.txt", "other.md", "pictures/blue.png",
                                                       "pictures/red.png", "tone.wav"]  # fmt: skip
    assert {i["modality"] for i in index.items} == {"text", "image", "audio"}
    assert torch.allclose(index.vectors.norm(dim=1), torch.ones(len(index.items)), atol=1e-5)
    query = embed(run, [Document.of("draw a red circle")])[0]
    results = index.search(query, k=5)
    assert results[0][1]["path"] == "notes.txt" and results[0][0] == pytest.approx(1.0, abs=1e-5)
    assert [s for s, _ in results] == sorted((s for s, _ in results), reverse=True)
    # exact search: the scores are the cosines, item by item
    assert results[1][0] == pytest.approx(float(index.vectors[[i["path"] for i in index.items].index(
        results[1][1]["path"])] @ query), abs=1e-5)  # fmt: skip
    saved = Index.load(index.save(tmp_path / "index"))
    assert saved.items == index.items and torch.equal(saved.vectors, index.vectors)
    with pytest.raises(ConfigError, match="not a polymodal index"):
        index.save(folder)  # never replaces a folder that is not an index
    with pytest.raises(ConfigError, match="no text"):
        build_index(run, tmp_path / "index", progress=False)


def test_a_bad_file_is_named_before_any_embedding(run, folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ConfigError, match="broken.png"):
        build_index(run, folder, progress=False)


def test_index_commands(run, folder, tmp_path):
    run_dir = run.save(tmp_path / "run")
    out = tmp_path / "index"
    built = CliRunner().invoke(app, ["index", "build", str(run_dir), str(folder), "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert "5 items" in built.output
    found = CliRunner().invoke(app, ["index", "search", str(out), "--run", str(run_dir), "--file",
                                     str(folder / "pictures" / "red.png"), "--k", "2", "--json"])  # fmt: skip
    assert found.exit_code == 0, found.output
    results = json.loads(found.output)
    assert len(results) == 2 and results[0]["path"] == "pictures/red.png"
    missing = CliRunner().invoke(app, ["index", "search", str(out), "--run", str(run_dir)])
    assert missing.exit_code != 0 and "--text or --file" in missing.output
