"""polymodal finetune: the user's folder checked first, full and LoRA fine-tuning from a saved run,
and the new run's directions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

import toys
from polymodal.cli import app
from polymodal.content import Audio
from polymodal.data.tokenized import TokenizedDataset
from polymodal.errors import ConfigError
from polymodal.eval.regression import check_finetune
from polymodal.model import Transformer, preset
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.text import TextTokenizer
from polymodal.train.finetune import FinetuneConfig, finetune
from polymodal.train.loop import ADAPTER_FILENAME

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "white": (250, 250, 250)}


@pytest.fixture
def base(tmp_path):
    text = TextTokenizer.train([f"a {c} square" for c in COLOURS] * 20, vocab_size=300)
    codec = DocumentTokenizer.from_tokenizers([text, toys.ToyImageTokenizer(), toys.ToyAudioTokenizer()])
    torch.manual_seed(0)
    directions = ("audio+text->text", "text->text")
    Run(Transformer(preset("debug", codec.vocab.size)), codec, directions).save(tmp_path / "base")
    return tmp_path / "base"


def captions_folder(folder, rows=None):
    folder.mkdir(parents=True)
    for colour, rgb in COLOURS.items():
        PILImage.new("RGB", (8, 8), rgb).save(folder / f"{colour}.png")
    rows = rows or [{"file": f"{c}.png", "text": f"a {c} square"} for c in COLOURS]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_lora_finetune_adds_the_data_direction_and_leaves_the_base_alone(base, tmp_path):
    weights = (base / "model.safetensors").read_bytes()
    said = []
    config = FinetuneConfig(steps=6, batch_size=2, seq_len=64, lora_rank=2)
    run = finetune(base, [captions_folder(tmp_path / "mine")], tmp_path / "ft", config, progress=False,
                   say=said.append)  # fmt: skip
    assert run.directions == ("audio+text->text", "image->text", "text->text")
    assert Run.load(tmp_path / "ft" / "run").directions == run.directions
    assert (tmp_path / "ft" / "run" / ADAPTER_FILENAME).is_file()
    assert (base / "model.safetensors").read_bytes() == weights  # the base run's files are untouched
    original = Run.load(base).model.state_dict()
    changed = [k for k, v in run.model.state_dict().items() if not torch.equal(v, original[k])]
    assert changed and all(k.split(".")[-2] in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for k in changed)
    assert any("image_captions: 4 documents" in line for line in said)


@pytest.mark.parametrize("learn", ["target", "all"])
def test_a_captions_folder_trains_the_captions_unless_told_all(base, tmp_path, learn):
    """The tokenized data says what trains: the caption (and <|eos|>) by default, every token after
    <|bos|> with learn="all"."""
    config = FinetuneConfig(steps=2, batch_size=2, seq_len=64, learn=learn)
    finetune(base, [captions_folder(tmp_path / "mine")], tmp_path / "ft", config, progress=False, say=lambda _: None)
    data = TokenizedDataset(tmp_path / "ft" / "data")
    vocab = Run.load(base).tokenizer.vocab
    for k in range(len(data)):
        seq = data[k]
        image = (seq.ids >= vocab.range("image").start) & (seq.ids < vocab.range("image").stop)
        text = (seq.ids >= vocab.range("text").start) & (seq.ids < vocab.range("text").stop)
        assert image.any() and text.any()
        assert seq.loss_weight[text].eq(1).all()
        assert seq.loss_weight[image].eq(1 if learn == "all" else 0).all()
    with pytest.raises(ConfigError, match="learn must be one of target, all"):
        FinetuneConfig(learn="media")


def test_a_bad_data_folder_fails_before_any_work(base, tmp_path):
    bad = captions_folder(tmp_path / "bad", [{"file": "red.png", "text": "a red square"},
                                              {"file": "purple.png", "text": "a purple square"}])  # fmt: skip
    with pytest.raises(ConfigError, match=r"captions.jsonl:2: .*purple.png: no such file"):
        finetune(base, [bad], tmp_path / "ft", FinetuneConfig(steps=2), progress=False, say=lambda _: None)
    assert not (tmp_path / "ft").exists()
    with pytest.raises(ConfigError, match="no such file or folder"):
        finetune(base, [tmp_path / "missing"], tmp_path / "ft2", progress=False, say=lambda _: None)
    result = CliRunner().invoke(app, ["finetune", str(base), "--data", str(bad), "--out", str(tmp_path / "ft3")])
    assert result.exit_code == 2 and "purple.png" in result.output
    good = captions_folder(tmp_path / "good")
    result = CliRunner().invoke(app, ["finetune", str(base), "--data", str(good), "--out", str(tmp_path / "ft4"),
                                      "--lora-base", "int8"])  # fmt: skip
    assert result.exit_code == 2 and "give a LoRA rank too" in result.output
    assert not (tmp_path / "ft4").exists()


def test_the_tasks_the_data_did_not_touch_are_scored_before_and_after(base, tmp_path):
    suite = tmp_path / "suite"
    (suite / "sounds" / "wav").mkdir(parents=True)
    items = []
    for k, level in enumerate((0.1, 0.3, 0.6)):
        (suite / "sounds" / "wav" / f"{k}.wav").write_bytes(
            Audio(np.full((1, 4000), level, np.float32), 16000).to_wav_bytes()
        )
        items.append({"id": str(k), "input": [{"audio": f"wav/{k}.wav"}, "how loud?"],
                      "options": ["quiet", "loud"], "answer": "loud" if level > 0.2 else "quiet"})  # fmt: skip
    (suite / "sounds" / "task.json").write_text(json.dumps({"name": "sounds", "output": "multiple_choice"}))
    (suite / "sounds" / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (suite / "captions" / "img").mkdir(parents=True)
    PILImage.new("RGB", (8, 8), COLOURS["red"]).save(suite / "captions" / "img" / "red.png")
    (suite / "captions" / "task.json").write_text(json.dumps({"name": "captions", "output": "text", "chat": False}))
    (suite / "captions" / "items.jsonl").write_text(json.dumps({"id": "r", "input": [{"image": "img/red.png"}],
                                                                "answers": ["a red square"]}) + "\n")  # fmt: skip
    said = []
    config = FinetuneConfig(steps=4, batch_size=2, seq_len=64)
    finetune(base, [captions_folder(tmp_path / "mine")], tmp_path / "ft", config, progress=False, say=said.append)
    check_finetune(tmp_path / "ft", suite, max_drop=-1000.0, say=said.append)
    report = json.loads((tmp_path / "ft" / "regression.json").read_text())
    assert report["learned"] == ["image->text"]
    assert [row["task"] for row in report["tasks"]] == ["sounds"]  # captions is what the data trains
    row = report["tasks"][0]
    assert row["direction"] == "audio+text->text" and row["drop"] == round(row["base"] - row["tuned"], 1)
    assert report["warnings"] and any(line.startswith("WARNING: sounds got") for line in said)
