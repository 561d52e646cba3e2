import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.content import Document
from polymodal.data.sample import sample_document, write_sample
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir, list_vocabularies

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_console_script_help():
    exe = shutil.which("polymodal")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "polymodal.cli", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for command in ("tokenize", "vocab", "tokenizer", "sample"):
        assert command in out


def test_tokenize_sample_reports_every_part():
    result = run("tokenize", "--sample", "--json", "--first", "4")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [p["modality"] for p in report["parts"]] == ["text", "image", "text", "audio"]
    codec = DocumentTokenizer.load(default_vocabulary_dir())
    for reported, part in zip(report["parts"], sample_document().parts, strict=True):
        expected = codec.encode(Document.of(part), add_bos=False, add_eos=False)
        assert reported["problem"] is None
        assert reported["num_tokens"] == len(expected)
        assert reported["first_ids"] == expected.ids[:4].tolist()
    assert report["total_tokens"] == len(codec.encode(sample_document()))
    assert report["parts"][1]["details"] == "64x64 px"
    assert report["parts"][3]["num_tokens"] == 2 + 13  # 0.5 s at 25 codes/s, padded to 13, plus delimiters
    assert report["parts"][3]["details"].startswith("0.50 s @ 16000 Hz")


def test_sample_written_to_disk_reads_back(tmp_path):
    path = write_sample(tmp_path / "s")
    doc = Document.load(path)
    original = sample_document()
    assert [type(p) for p in doc.parts] == [type(p) for p in original.parts]
    assert doc.parts[0] == original.parts[0]
    assert (doc.parts[1].to_array() == original.parts[1].to_array()).all()
    assert doc.parts[3].duration == pytest.approx(original.parts[3].duration)
    table = run("tokenize", str(path))
    assert table.exit_code == 0 and "image" in table.output and "64x64 px" in table.output


def test_tokenize_text_file_and_errors(tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello polymodal", encoding="utf-8")
    result = run("tokenize", str(note), "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["total_tokens"] == json.loads(result.output)["parts"][0]["num_tokens"] + 2
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    result = runner.invoke(app, ["tokenize", str(bad)])
    assert result.exit_code == 2 and "broken.png" in result.output
    assert runner.invoke(app, ["tokenize"]).exit_code == 2


def test_train_build_and_use_a_vocabulary(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    assert (
        run("tokenizer", "train", "text", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok")).exit_code
        == 0
    )
    result = run("vocab", "build", str(tmp_path / "tok"), "--out", str(tmp_path / "vocab"), "--grid", "8x8")
    assert result.exit_code == 0, result.output
    shown = run("vocab", "show", "--vocab", str(tmp_path / "vocab")).output
    assert "<|grid:8x8|>" in shown and "text" in shown and "<|grid:16x16|>" not in shown
    described = run("vocab", "describe", "0", "20", "--vocab", str(tmp_path / "vocab")).output.splitlines()
    assert described[0].split("\t")[1] == "<|bos|>" and described[1].split("\t")[1].startswith("text:")
    assert (
        runner.invoke(
            app, ["vocab", "build", str(tmp_path / "tok"), "--out", str(tmp_path / "v2"), "--grid", "8by8"]
        ).exit_code
        == 2
    )
    assert runner.invoke(app, ["tokenizer", "train", "sound", str(corpus), "--out", str(tmp_path / "x")]).exit_code == 2


def test_shipped_vocabularies():
    assert list_vocabularies() == ["default"]
    codec = DocumentTokenizer.load(default_vocabulary_dir())
    for modality in ("text", "image", "audio"):
        assert codec.vocab.range(modality).size == codec.tokenizer(modality).vocab_size
    assert codec.vocab.grids == ((4, 4), (8, 8), (16, 16))
    assert codec.decode(codec.encode(Document.of("Any text, 任何文字 🙂"))).parts[0].text == "Any text, 任何文字 🙂"


def test_make_shapes_command(tmp_path):
    out = tmp_path / "corpus"
    result = run("data", "make", "shapes", "--out", str(out), "--n", "6", "--samples-per-shard", "4", "--workers", "1",
                 "--kind", "image_caption", "--kind", "sound_label")  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.glob("*.tar")) == ["shapes-000000.tar", "shapes-000001.tar"]
    assert json.dumps(manifest).count("image_caption") >= 1
    again = runner.invoke(app, ["data", "make", "shapes", "--out", str(out), "--n", "2", "--workers", "1"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["data", "make", "shapes", "--out", str(out), "--kind", "poems"]).exit_code == 2


def test_train_media_tokenizers_and_roundtrip(tmp_path):
    common = ["--preset", "debug", "--steps", "4", "--batch-size", "2"]
    result = run("tokenizer", "train", "image", "--out", str(tmp_path / "image"), *common)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "image" / "report.json").read_text())
    assert report["preset"] == "debug" and {"psnr@32", "palette_psnr@32"} <= set(report["held_out"])
    result = run("tokenizer", "train", "audio", "--out", str(tmp_path / "audio"), "--corpus-clips", "6", *common)
    assert result.exit_code == 0, result.output
    assert "mel_distance" in json.loads((tmp_path / "audio" / "report.json").read_text())["held_out"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red circle and a blue square. " * 50, encoding="utf-8")
    assert (
        run("tokenizer", "train", "text", str(corpus), "--vocab-size", "280", "--out", str(tmp_path / "text")).exit_code
        == 0
    )
    vocab = tmp_path / "vocab"
    toks = [str(tmp_path / m) for m in ("text", "image", "audio")]
    assert run("vocab", "build", *toks, "--out", str(vocab)).exit_code == 0
    result = run("tokenize", "--sample", "--vocab", str(vocab), "--json", "--roundtrip", str(tmp_path / "back"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[0])
    assert all(p["num_tokens"] for p in report["parts"])
    assert report["parts"][3]["num_tokens"] == 2 + 13  # 0.5 s at 25 tokens/s, padded to 13, plus delimiters
    back = Document.load(tmp_path / "back" / "0_sample.json")
    assert [type(p).__name__ for p in back.parts] == ["Text", "Image", "Text", "Audio"]
    assert back.parts[1].size == (32, 32) and back.parts[0] == sample_document().parts[0]


def test_generate_command_writes_each_output(tmp_path):
    import torch

    from polymodal.content import Audio, Image
    from polymodal.model import Transformer, preset
    from polymodal.run import Run

    codec = DocumentTokenizer.load(default_vocabulary_dir())
    torch.manual_seed(0)
    directions = ("text->text", "text->image", "text->audio", "image+text->text")
    Run(Transformer(preset("debug", codec.vocab.size)), codec, directions).save(tmp_path / "run")
    picture = tmp_path / "in.png"
    picture.write_bytes(sample_document().parts[1].to_png_bytes())
    common = [
        "generate",
        str(tmp_path / "run"),
        "--text",
        "draw a circle",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "out"),
    ]
    assert run(*common, "--output", "image").exit_code == 0
    assert Image.open(tmp_path / "out" / "output.png").width in (32, 64, 128)
    assert run(*common, "--output", "audio").exit_code == 0
    assert Audio.open(tmp_path / "out" / "output.wav").sample_rate == 16_000
    result = run(*common, "--image", str(picture), "--max-new-tokens", "5")
    assert result.exit_code == 0
    assert (tmp_path / "out" / "output.txt").read_text().rstrip("\n") == result.output.splitlines()[0]
    refused = runner.invoke(app, [*common, "--image", str(picture), "--output", "audio"])
    assert refused.exit_code == 2 and "image+text->audio" in refused.output


def test_pretokenize_command(tmp_path):
    from polymodal.data.tokenized import TokenizedDataset

    shards = tmp_path / "shapes"
    assert (
        run(
            "data", "make", "shapes", "--out", str(shards), "--n", "4", "--workers", "1", "--kind", "image_caption"
        ).exit_code
        == 0
    )
    doc = write_sample(tmp_path / "sample")
    result = run("data", "pretokenize", str(shards), str(doc), "--out", str(tmp_path / "tok"), "--max-length", "256")
    assert result.exit_code == 0, result.output
    data = TokenizedDataset(tmp_path / "tok")
    assert len(data) == 5 and data.lengths().max() <= 256
    data.check_vocabulary(DocumentTokenizer.load(default_vocabulary_dir()).vocab)


def test_own_captions_folder_to_training_to_generation(tmp_path):
    """A user's folder of pictures with captions: pretokenize, train a recipe file, generate from the result."""
    from PIL import Image as PILImage

    folder = tmp_path / "pictures"
    folder.mkdir()
    rows = []
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("green", (20, 200, 20))):
        PILImage.new("RGB", (32, 32), colour).save(folder / f"{name}.png")
        rows.append(json.dumps({"file": f"{name}.png", "text": f"a {name} picture"}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    result = run("data", "pretokenize", str(folder), "--out", str(tmp_path / "tok"), "--max-length", "128")
    assert result.exit_code == 0, result.output
    assert "3 documents" in result.output
    recipe = {
        "name": "mine", "model": "debug", "directions": ["image->text"], "workers": 0,
        "stages": [{"name": "captions", "data": "tok", "steps": 3, "batch_size": 2, "seq_len": 128}],
    }  # fmt: skip
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    result = run("train", str(tmp_path / "recipe.json"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["loss"] > 0 for m in metrics)
    out = tmp_path / "gen"
    result = run("generate", str(tmp_path / "out"), "--image", str(folder / "red.png"), "--no-chat",
                 "--max-new-tokens", "4", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "output.txt").is_file()
    again = runner.invoke(app, ["train", str(tmp_path / "recipe.json"), "--out", str(tmp_path / "out")])
    assert again.exit_code == 2 and "--resume" in again.output
    missing = runner.invoke(app, ["data", "pretokenize", str(tmp_path / "nothing"), "--out", str(tmp_path / "t2")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
