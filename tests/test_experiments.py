"""The fusion experiment: its descriptions, its recipes, and the whole command at a tiny scale."""

import json

import pytest
from PIL import Image as PILImage

from polymodal.content import Text
from polymodal.data.tokenized import TokenizedDataset
from polymodal.errors import ConfigError
from polymodal.experiments.fusion import (
    MEDIA_OUT,
    FusionConfig,
    describe_video,
    early_recipe,
    late_recipe,
    pipeline_recipes,
    run_fusion,
)
from polymodal.run import Run, architecture_of
from polymodal.train.quickstart import CORPUS, QUESTIONS


def _object(colour: str, shape: str) -> dict:
    return {"colour": colour, "shape": shape}


def test_video_description_lists_arrivals_in_time_order_with_the_sound():
    arrivals = [{"obj": _object("orange", "star"), "time": 2.0}, {"obj": _object("blue", "square"), "time": 0.5}]
    video = {"movers": [{"obj": _object("red", "circle")}], "arrivals": arrivals, "sound_time": 2.0}
    assert describe_video(video) == (
        "a red circle moves. a blue square appears at 0.5 s. an orange star appears at 2.0 s. a sound plays at 2.0 s."
    )


def test_arms_are_matched_and_late_fusion_writes_text_only(tmp_path):
    config = FusionConfig(scale=0.5)
    early = early_recipe(tmp_path / "tok", tmp_path / "vocab", config)
    late = late_recipe(tmp_path / "tok", tmp_path / "vocab", config)
    assert late.architecture == "late" and all(d.endswith("->text") for d in late.directions)
    assert [s.name for s in late.stages] == [s.name for s in early.stages if s.objective != "align"]
    for stage, twin in zip(late.stages, early.stages[1:], strict=True):
        assert (stage.steps, stage.batch_size, stage.seq_len) == (twin.steps, twin.batch_size, twin.seq_len)
        kept = {p.split("/")[-1] for p in stage.data}
        assert not kept & set(MEDIA_OUT) and kept == {p.split("/")[-1] for p in twin.data} - set(MEDIA_OUT)
    describer, reasoner = pipeline_recipes(tmp_path / "pipeline", tmp_path / "vocab", config, early)
    assert describer.stages[0].steps + reasoner.stages[0].steps == sum(s.steps for s in early.stages)
    assert reasoner.directions == ("text->text",) and describer.model_overrides == early.model_overrides
    with pytest.raises(ConfigError, match="arms must be some of"):
        FusionConfig(arms=("early", "mid"))


def test_fusion_end_to_end_at_a_tiny_scale(tmp_path):
    config = FusionConfig(preset="debug", scale=0.01, test_questions=2, workers=1, text_vocab_size=300,
                          corpus={kind: 4 for kind in CORPUS})  # fmt: skip
    said = []
    results = run_fusion(tmp_path / "fx", config, progress=False, say=said.append)
    assert [r.arm for r in results] == ["early", "late", "pipeline"]
    for r in results:
        assert set(r.accuracy) == set(r.blind) == set(QUESTIONS)
        assert all(v in {0.0, 0.5, 1.0} for v in [*r.accuracy.values(), *r.blind.values()])  # 2 questions each
        assert r.tokens > 0 and r.train_seconds > 0 and r.curves
    early, late, pipeline = results
    assert early.parameters_per_token < early.parameters  # one modality expert of four per token
    assert late.parameters_per_token == late.parameters
    describer, reasoner = (Run.load(tmp_path / "fx" / "pipeline" / m / "run") for m in ("describer", "reasoner"))
    sizes = [sum(p.numel() for p in m.model.parameters()) for m in (describer, reasoner)]
    assert pipeline.parameters == sum(sizes) and set(pipeline.curves) == {"describe", "reason"}
    assert architecture_of(Run.load(tmp_path / "fx" / "late" / "run").model) == "late"
    # the reasoner learns from text alone; the describer writes text about media
    vocab = reasoner.tokenizer.vocab
    text_like = {vocab.modality_index(m) for m in ("text", "special")}
    for kind in QUESTIONS.values():
        folder = TokenizedDataset(tmp_path / "fx" / "data" / "pipeline" / "reasoner" / kind)
        assert len(folder) == 4 and all(set(folder[i].modality.tolist()) <= text_like for i in range(len(folder)))
        words = " ".join(p.text for p in reasoner.tokenizer.decode(folder[0]).parts if isinstance(p, Text))
        assert ("[video: " if kind == "video_qa" else "[image: " if "image" in kind else "[audio: ") in words
    described = TokenizedDataset(tmp_path / "fx" / "data" / "pipeline" / "describer" / "video_qa")
    seq = described[0]
    assert (seq.loss_weight > 0).any() and set(seq.modality[seq.loss_weight > 0].tolist()) <= text_like
    report = json.loads((tmp_path / "fx" / "report.json").read_text())
    assert [a["arm"] for a in report["arms"]] == ["early", "late", "pipeline"]
    assert report["arms"][0]["accuracy"] == early.accuracy
    markdown = (tmp_path / "fx" / "report.md").read_text()
    assert "| early |" in markdown and "| pipeline |" in markdown and "accuracy.png" in markdown
    for name in ("accuracy.png", "learning_curves.png"):
        with PILImage.open(tmp_path / "fx" / name) as png:
            assert png.format == "PNG" and png.width > 300
    again = run_fusion(tmp_path / "fx", config, resume=True, progress=False, say=said.append)
    assert [r.accuracy for r in again] == [r.accuracy for r in results]  # every arm was complete: scored again
    with pytest.raises(ConfigError, match="is not empty"):
        run_fusion(tmp_path / "fx", config, progress=False)
