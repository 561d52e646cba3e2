import pytest
import torch

from polymodal.content import Document
from polymodal.errors import ConfigError
from polymodal.model import Transformer, preset
from polymodal.run import Run, parse_direction
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def codec() -> DocumentTokenizer:
    return DocumentTokenizer.from_tokenizers(
        [TextTokenizer.train(["a red circle above a blue square"] * 30, vocab_size=280)]
    )


def make_run(codec, seed: int = 0) -> Run:
    torch.manual_seed(seed)
    return Run(Transformer(preset("debug", codec.vocab.size)).eval(), codec, ("text->text", "image+text->text"))


def logits(run: Run) -> torch.Tensor:
    seq = run.tokenizer.encode(Document.of("a red circle"))
    with torch.no_grad():
        return run.model(seq.ids[None], seq.positions[None], seq.modality[None])


def test_saved_run_reloads_to_identical_outputs(tmp_path, codec):
    run = make_run(codec)
    run.save(tmp_path / "run")
    loaded = Run.load(tmp_path / "run")
    assert loaded.directions == ("image+text->text", "text->text")
    assert loaded.model.config == run.model.config
    assert torch.equal(logits(loaded), logits(run))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "model.safetensors",
        "run.json",
        "tokenizers",
        "vocab.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_save_replaces_atomically_and_survives_failures(tmp_path, codec, monkeypatch):
    first, second = make_run(codec, 0), make_run(codec, 1)
    first.save(tmp_path / "run")
    second.save(tmp_path / "run")
    assert torch.equal(logits(Run.load(tmp_path / "run")), logits(second))

    def broken_save(directory):
        raise OSError("disk full")

    monkeypatch.setattr(first.tokenizer, "write_into", broken_save)
    with pytest.raises(OSError, match="disk full"):
        first.save(tmp_path / "run")
    assert torch.equal(logits(Run.load(tmp_path / "run")), logits(second))  # the old run is intact
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    monkeypatch.undo()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a polymodal run"):
        first.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_directions(codec):
    assert parse_direction("image+text->text") == (frozenset({"image", "text"}), "text")
    for bad in ("image", "image->smell", "->text", "smell->text"):
        with pytest.raises(ConfigError, match="direction"):
            parse_direction(bad)
    run = make_run(codec)
    assert run.supports({"image"}, "text") and run.supports({"text"}, "text")
    assert not run.supports({"audio"}, "text") and not run.supports({"text"}, "image")
    spoken = Run(run.model, run.tokenizer, ("image+audio->text", "text->image"))
    assert spoken.supports({"image", "audio", "text"}, "text")  # an instruction beside the media it reads
    assert not spoken.supports({"image", "audio", "video"}, "text") and not spoken.supports({"text"}, "text")
    assert not spoken.supports({"image", "text"}, "image")


def test_bad_runs_are_clear_errors(tmp_path, codec):
    with pytest.raises(ConfigError, match="not a polymodal run"):
        Run.load(tmp_path)
    with pytest.raises(ConfigError, match="ids but the vocabulary"):
        Run(Transformer(preset("debug", 99)), codec)
    make_run(codec).save(tmp_path / "run")
    (tmp_path / "run" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot load the weights"):
        Run.load(tmp_path / "run")
