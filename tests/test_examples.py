"""The worked examples keep working: each runs end to end at a tiny scale (the figures in the docs come
from the full-size commands in their READMEs)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import toys
from needs import require
from polymodal.model import Transformer, preset
from polymodal.run import Run
from polymodal.serve import ServeConfig
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.text import TextTokenizer
from polymodal.train.finetune import FinetuneConfig, finetune

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_triage_example_end_to_end(tmp_path):
    require("fastapi", "serve")
    from test_serve import Served

    data = tmp_path / "data"
    subprocess.run([sys.executable, str(EXAMPLES / "triage" / "make_data.py"), "--out", str(data), "--train", "6",
                    "--test", "2"], check=True, capture_output=True)  # fmt: skip
    schema = json.loads((data / "schema.json").read_text())
    lines = (data / "train.jsonl").read_text().splitlines()
    assert len(lines) == 6 and (data / "test.jsonl").read_text().count("\n") == 2
    truth = json.loads(json.loads(lines[0])["messages"][1]["content"][0]["text"])
    assert set(truth) == set(schema["required"]) and truth["category"] in schema["properties"]["category"]["enum"]
    # a tiny base run that reads pictures and audio, fine-tuned on the tickets with the documented command's API
    text = TextTokenizer.train([json.dumps(truth)] * 20, vocab_size=300)
    codec = DocumentTokenizer.from_tokenizers([text, toys.ToyImageTokenizer(), toys.ToyAudioTokenizer()])
    torch.manual_seed(0)
    Run(Transformer(preset("debug", codec.vocab.size)), codec, ("text->text",)).save(tmp_path / "base")
    config = FinetuneConfig(steps=2, batch_size=2, seq_len=512)
    tuned = finetune(tmp_path / "base", [data / "train.jsonl"], tmp_path / "ft", config, progress=False, say=print)
    assert "audio+image+text->text" in tuned.directions
    served = Served(tuned, ServeConfig(model_name="triage", max_completion_tokens=400))
    try:
        sys.path.insert(0, str(EXAMPLES / "triage"))
        import evaluate as triage_eval

        ticket = json.loads((data / "test.jsonl").read_text().splitlines()[0])
        image, audio, words = ticket["messages"][0]["content"]
        answer, finish = triage_eval.triage(served.client, "triage", schema, (data / image["path"]).read_bytes(),
                                            (data / audio["path"]).read_bytes(), words["text"])  # fmt: skip
        # an untrained model, but constrained to the schema: the whole object, or a prefix cut by max_tokens
        assert (answer is None) == (finish == "length"), (answer, finish)
        if finish == "stop":
            assert answer["category"] in schema["properties"]["category"]["enum"]
            assert answer["priority"] in schema["properties"]["priority"]["enum"]
        result = subprocess.run([sys.executable, str(EXAMPLES / "triage" / "evaluate.py"), "--data", str(data),
                                 "--endpoint", served.url + "/v1", "--model", "triage", "--json",
                                 str(tmp_path / "eval.json")], capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / "eval.json").read_text())
        assert report["tickets"] == 2 and set(report["scores"]) >= set(triage_eval.FIELDS)
        assert all(0 <= v <= 1 for v in report["scores"].values())
        rows = report["answers"]
        assert report["unparsed"] == sum(r["answer"] is None for r in rows) == sum(r["finish_reason"] == "length"
                                                                                   for r in rows)  # fmt: skip
        right = sum(r["answer"] is not None and r["answer"].get("category") == r["truth"]["category"] for r in rows)
        assert report["scores"]["category"] == right / 2  # an unparsed answer counts, as wrong
        assert f"answers parsed         {2 - report['unparsed']} of 2" in result.stdout
    finally:
        served.stop()
        sys.path.remove(str(EXAMPLES / "triage"))
