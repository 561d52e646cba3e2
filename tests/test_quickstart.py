"""The quickstart's whole path at a tiny scale: corpus, vocabulary, pretokenize, three stages,
held-out questions and samples, and picking up again where it stopped."""

import json

import pytest
import torch

from polymodal.content import Audio, Image
from polymodal.errors import ConfigError
from polymodal.run import Run
from polymodal.tokenizers import load_tokenizer
from polymodal.train.quickstart import CORPUS, QUESTIONS, QuickstartConfig, run_quickstart


def test_quickstart_end_to_end_at_a_tiny_scale(tmp_path):
    config = QuickstartConfig(corpus={kind: 6 for kind in CORPUS}, test_questions=3, scale=0.02, workers=1,
                              text_vocab_size=300, media_tokenizer_steps=3)  # fmt: skip
    said = []
    report = run_quickstart(tmp_path / "qs", config, progress=False, say=said.append)
    assert [line.split()[0] for line in said] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    assert set(report.accuracy) == set(report.blind) == set(QUESTIONS)
    for scores in (report.accuracy, report.blind):
        assert all(v in {0.0, 1 / 3, 2 / 3, 1.0} for v in scores.values())  # 3 questions each
    for kind in QUESTIONS:  # the per-ability rows add up to the per-kind scores
        rows = [row for name, row in report.by_ability.items() if name.split()[0] == kind]
        assert sum(row["questions"] for row in rows) == 3
        assert sum(row["accuracy"] * row["questions"] for row in rows) == pytest.approx(3 * report.accuracy[kind])
        assert sum(row["blind"] * row["questions"] for row in rows) == pytest.approx(3 * report.blind[kind])
    assert "sound audio/sound-event" in report.by_ability and "by ability" in report.format()
    steps = ["corpus", "tokenizers", "pretokenize", "train", "questions", "samples"]
    assert list(report.seconds) == steps and all(v >= 0 for v in report.seconds.values())
    assert report.seconds["train"] > 0 and "wall time: corpus" in report.format()
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["accuracy"] == report.accuracy and saved["chance"] == 0.25 and saved["seconds"] == report.seconds
    run = Run.load(tmp_path / "qs")
    assert run.tokenizer.vocab.range("text").size == 300 and "video+text->text" in run.directions
    for kind in ("image", "audio"):  # trained here, 3 steps each, and used by the vocabulary
        trained = json.loads((tmp_path / "qs" / "data" / "tokenizers" / kind / "report.json").read_text())
        assert trained["train"]["steps"] == 3 and trained["held_out"]
        ours = run.tokenizer.tokenizer(kind).model.state_dict()
        theirs = load_tokenizer(tmp_path / "qs" / "data" / "tokenizers" / kind).model.state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    stages = [
        json.loads(line)["stage"] for line in (tmp_path / "qs" / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert stages[0] == "align" and stages[-1] == "instruct" and "pretrain" in stages
    assert Image.open(tmp_path / "qs" / "samples" / "draw_0.png").width > 0
    assert Audio.open(tmp_path / "qs" / "samples" / "say_0.wav").duration > 0
    assert len((tmp_path / "qs" / "samples" / "answers.txt").read_text().splitlines()) == 3 * len(QUESTIONS)
    with pytest.raises(ConfigError, match="is not empty"):
        run_quickstart(tmp_path / "qs", config, progress=False, say=said.append)
    said.clear()
    again = run_quickstart(tmp_path / "qs", config, resume=True, progress=False, say=said.append)
    assert again.accuracy == report.accuracy  # every step was already complete: the same run is scored again
