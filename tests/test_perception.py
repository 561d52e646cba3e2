"""The perception probes: pictures with known attributes, features along the image path, probes per step."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from figures import above
from polymodal.cli import app
from polymodal.content import Document
from polymodal.data.shapes.world import POSITIONS
from polymodal.errors import ConfigError
from polymodal.eval.attributes import ATTRIBUTES
from polymodal.eval.perception import (
    PerceptionSettings,
    _as_grid,
    _encode_all,
    _features,
    attention_probs,
    attention_to_pictures,
    attribute_pictures,
    conv_probe_accuracy,
    probe_perception,
)
from polymodal.model import Transformer, preset
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir


@pytest.fixture(scope="module")
def codec() -> DocumentTokenizer:
    return DocumentTokenizer.load(default_vocabulary_dir())


@pytest.fixture(scope="module")
def model(codec) -> Transformer:  # noqa: ANN001
    torch.manual_seed(0)
    return Transformer(preset("debug", codec.vocab.size)).eval()


def test_pictures_are_seeded_and_labelled_by_their_scene():
    images, labels = attribute_pictures(np.random.default_rng(4), "position", 30, 32)
    again, same = attribute_pictures(np.random.default_rng(4), "position", 30, 32)
    assert [i.to_png_bytes() for i in images] == [i.to_png_bytes() for i in again] and (labels == same).all()
    assert all(image.size == (32, 32) for image in images) and set(labels) <= set(range(len(POSITIONS)))
    for image, label in zip(images, labels, strict=True):  # the object sits in the labelled third of the picture
        pixels = np.asarray(image.pixels.convert("RGB"), np.float32)
        away = np.abs(pixels - np.median(pixels.reshape(-1, 3), axis=0)).max(axis=-1) > 20  # not the background
        row, col = divmod(int(label), 3)
        assert away[row * 10 + 2 : row * 10 + 9, col * 10 + 2 : col * 10 + 9].any()


def test_features_follow_the_path_and_the_model_reads_its_own_embeddings(codec, model):
    images, _ = attribute_pictures(np.random.default_rng(1), "colour", 6, 32)
    spans = [codec.tokenizer("image").encode(image) for image in images]
    batched = _encode_all(codec.tokenizer("image"), images)  # the probes' path: one batch through the encoder
    assert [s.ids.tolist() for s in batched] == [s.ids.tolist() for s in spans]
    features = dict(_features(images, spans, codec, model, 32))
    blocks = [f"block {i + 1}" for i in range(len(model.layers))]
    assert list(features) == ["pixels", "decoded", "codes", "code_latents", "code_appearance", "embeddings", *blocks]
    cells = len(spans[0])
    assert features["pixels"].shape == (6, 32 * 32 * 3) and features["decoded"].shape == (6, 32 * 32 * 3)
    assert (features["codes"].sum(axis=1) == cells).all() and features["codes"].shape[1] == cells * 1000
    assert features["code_latents"].shape == (6, cells * codec.tokenizer("image").code_latents().shape[1])
    assert features["code_appearance"].shape == (6, cells * 3 * 8 * 8)  # each code's 8x8 patch
    appearance = codec.tokenizer("image").code_appearance()
    assert np.allclose(features["code_appearance"][2], appearance[spans[2].ids].flatten().numpy())
    seq = codec.encode(Document.of(images[2]))
    at_codes = seq.ids[seq.ids >= codec.vocab.range("image").start]
    at_codes = at_codes[at_codes < codec.vocab.range("image").stop]
    expected = model.embed.weight[at_codes].detach().flatten().numpy()
    np.testing.assert_allclose(features["embeddings"][2], expected)  # the hook caught the codes' embeddings
    for name in blocks:
        assert features[name].shape == (6, cells * model.config.dim) and np.isfinite(features[name]).all()
    assert not np.allclose(features["block 1"], features["embeddings"])


def test_probes_read_position_from_the_pixels_and_report_every_step(codec, model):
    settings = PerceptionSettings(examples=120, held_out=80, attributes=("position",))
    report = probe_perception(codec, model, settings)
    assert list(report.attention) == [*(f"block {i + 1}" for i in range(len(model.layers))), "even"]
    assert list(report.accuracy)[:5] == ["pixels", "decoded", "codes", "code_latents", "code_appearance"]
    assert report.grid == (4, 4)
    assert report.chance == {"position": 1 / 9}
    # reached 59% (5.3x chance) / 59%; bar 3x chance (33%): a 26-point margin
    above("position read linearly from 32 px pixels / chance", report.accuracy["pixels"]["position"] * 9, 3.0)
    saved = json.loads(report.to_json())
    assert saved["accuracy"] == report.accuracy and saved["settings"]["examples"] == 120
    table, attention = report.format().split("\n\n", 1)
    assert "| share |" in attention and attention.count("%") == len(report.attention)
    table = table.splitlines()
    assert table[0] == "| read from | position | norm at a code |" and table[-1] == "| chance | 11% | |"
    assert len(table) == 2 + len(report.accuracy) + 1
    # the model's readers carry the length of their vector at a code: the embedding rows' own length first
    assert list(report.norms) == ["embeddings", *(f"block {i + 1}" for i in range(len(model.layers)))]
    rows = model.embed.weight.detach()[codec.vocab.range("image").start :][:1000]
    assert report.norms["embeddings"] == pytest.approx(float(rows.norm(dim=1).mean()), rel=0.25)


def test_the_conv_probe_reads_each_reader_laid_out_on_the_code_grid(codec):
    images, labels = attribute_pictures(np.random.default_rng(3), "position", 300, 32)
    spans = _encode_all(codec.tokenizer("image"), images)
    features = dict(_features(images[:4], spans[:4], codec, None, 32))
    kind, pixels = _as_grid("pixels", features["pixels"], (4, 4))
    assert kind == "pixels" and pixels.shape == (4, 3, 32, 32)  # an image again, channels first
    assert np.allclose(pixels[1].transpose(1, 2, 0) * 255, np.asarray(images[1].pixels.convert("RGB"), np.float32))
    kind, codes = _as_grid("codes", features["codes"], (4, 4))
    assert (
        kind == "codes"
        and codes.dtype.kind == "i"
        and (codes.reshape(4, 16) == np.stack([s.ids.numpy() for s in spans[:4]])).all()
    )
    kind, latents = _as_grid("code_latents", features["code_latents"], (4, 4))
    cell = codec.tokenizer("image").code_latents()[spans[2].ids[6]].numpy()  # row 1, column 2
    assert kind == "cells" and latents.shape[:3] == (4, 4, 4) and np.allclose(latents[2, 1, 2], cell)
    # where the object is, from the pixels: 85% (7.7x chance) on 200 pictures; bar 3x chance, a 52-point margin
    grid_pixels = _as_grid("pixels", next(_features(images, spans, codec, None, 32))[1], (4, 4))
    above("position read by the conv probe from 32 px pixels / chance",
          conv_probe_accuracy(grid_pixels, labels, 200, 0, (4, 4)) * 9, 3.0)  # fmt: skip


def test_an_attribute_gets_the_same_pictures_whichever_others_are_probed_beside_it(codec):
    alone = probe_perception(codec, None, PerceptionSettings(examples=20, held_out=20, attributes=("shape",)))
    both = probe_perception(codec, None, PerceptionSettings(examples=20, held_out=20, attributes=("colour", "shape")))
    assert {reader: scores["shape"] for reader, scores in alone.accuracy.items()} == {
        reader: scores["shape"] for reader, scores in both.accuracy.items()
    }


def test_attention_probs_are_the_weights_the_fused_kernel_applies(model):
    torch.manual_seed(1)
    attention = model.layers[0].attention
    B, L, H = 2, 9, attention.head_dim
    x = torch.randn(B, L, model.config.dim)
    positions = torch.arange(L).view(1, L, 1).expand(B, L, 3)
    cos, sin = model.rotary(positions)
    v = attention.wv(x).view(B, L, attention.n_kv_heads, H).transpose(1, 2)
    v = v.repeat_interleave(attention.n_heads // attention.n_kv_heads, dim=1)
    padded = torch.ones(B, 1, L, L, dtype=torch.bool).tril()
    padded[1, :, :, :3] = False  # row 1 is left-padded by 3: nobody sees those keys ...
    padded[1, :, :3, :3] = torch.eye(3, dtype=torch.bool)  # ... and each padding query sees only itself
    for mask in (None, padded):
        probs = attention_probs(attention, x, cos, sin, mask)
        assert probs.shape == (B, attention.n_heads, L, L)
        assert torch.allclose(probs.sum(-1), torch.ones(B, attention.n_heads, L))
        by_hand = attention.wo((probs @ v).transpose(1, 2).reshape(B, L, -1))
        assert torch.allclose(by_hand, attention(x, cos, sin, mask, None, 0), atol=1e-5)
    rows = torch.tensor([4, 8])
    assert torch.allclose(attention_probs(attention, x, cos, sin, padded, rows), probs[:, :, rows])


def test_a_model_that_attends_evenly_gives_the_picture_its_share_of_the_context(codec):
    torch.manual_seed(0)
    even_model = Transformer(preset("debug", codec.vocab.size)).eval()
    for layer in even_model.layers:  # no query: every score is 0, every earlier token weighs the same
        torch.nn.init.zeros_(layer.attention.wq.weight)
    shares = attention_to_pictures(codec, even_model, questions=6)
    # a 32 px picture's 16 codes among the chat's few dozen tokens
    assert 0.1 < shares["even"] < 0.6
    for block in ("block 1", "block 2"):
        assert shares[block] == pytest.approx(shares["even"], abs=1e-5)
    with pytest.raises(ConfigError, match="questions must be"):
        attention_to_pictures(codec, even_model, questions=0)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown attributes \\['size'\\]"):
        PerceptionSettings(attributes=("colour", "size"))
    with pytest.raises(ConfigError, match="probe must be one of linear, mlp, conv"):
        PerceptionSettings(probe="svm")
    with pytest.raises(ConfigError, match="at least 20 training"):
        PerceptionSettings(examples=5)
    assert set(PerceptionSettings().attributes) == set(ATTRIBUTES)


def test_the_command_probes_a_vocabulary_and_writes_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "perception.json"
    result = runner.invoke(app, ["eval", "perception", "--vocab", str(default_vocabulary_dir()), "--examples", "40",
                                 "--held-out", "20", "--json", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert list(saved["accuracy"]) == ["pixels", "decoded", "codes", "code_latents", "code_appearance"]
    assert set(saved["accuracy"]["codes"]) == set(ATTRIBUTES) and "| code_latents |" in result.output
    one = runner.invoke(app, ["eval", "perception", "--examples", "40", "--held-out", "20", "--attribute", "shape",
                              "--probe", "conv", "--json", str(out)])  # fmt: skip
    assert one.exit_code == 0, one.output
    saved = json.loads(out.read_text())
    assert saved["settings"]["attributes"] == ["shape"] and saved["settings"]["probe"] == "conv"
    assert set(saved["accuracy"]["codes"]) == {"shape"}
    bad = runner.invoke(app, ["eval", "perception", "--attribute", "size"])
    assert bad.exit_code != 0 and "unknown attributes ['size']" in bad.output
    both = runner.invoke(app, ["eval", "perception", str(tmp_path), "--vocab", str(default_vocabulary_dir())])
    assert both.exit_code == 2 and "not both" in both.output
