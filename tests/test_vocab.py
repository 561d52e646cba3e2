import json

import pytest
import torch

from polymodal import vocab as V
from polymodal.errors import ConfigError
from polymodal.vocab import ModalityRange, Vocabulary


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.build({"text": 300, "image": 64, "audio": 32}, grids=[(2, 2), (8, 8)])


def test_layout_is_specials_then_contiguous_ranges(vocab):
    n_specials = len(V.BASE_SPECIALS) + 2
    assert len(vocab.specials) == n_specials
    assert vocab.range("text") == ModalityRange("text", n_specials, 300)
    assert vocab.range("image").start == n_specials + 300
    assert vocab.range("audio").start == n_specials + 364
    assert vocab.size == n_specials + 300 + 64 + 32
    assert vocab.modalities == ("special", "text", "image", "audio")


def test_modality_of_is_a_range_lookup(vocab):
    text, image, audio = vocab.range("text"), vocab.range("image"), vocab.range("audio")
    ids = torch.tensor(
        [0, vocab.bos_id, text.start, text.stop - 1, image.start, image.stop - 1, audio.start, vocab.size - 1]
    )
    assert vocab.modality_of(ids).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert vocab.modality_of(text.start + 5).item() == vocab.modality_index("text")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.modality_of([vocab.size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.modality_of([-1])


def test_local_global_round_trip_and_range_checks(vocab):
    local = torch.tensor([0, 5, 63])
    glob = vocab.to_global("image", local)
    assert glob.tolist() == [vocab.range("image").start + i for i in (0, 5, 63)]
    assert torch.equal(vocab.to_local("image", glob), local)
    with pytest.raises(ValueError, match="outside its range of 64"):
        vocab.to_global("image", [64])
    with pytest.raises(ValueError, match="outside the audio range"):
        vocab.to_local("audio", glob)
    with pytest.raises(KeyError, match="no id range"):
        vocab.range("video")


def test_special_tokens_and_grids(vocab):
    assert vocab.special_token(vocab.bos_id) == V.BOS
    assert vocab.special_id(V.ASSISTANT) == V.BASE_SPECIALS.index(V.ASSISTANT)
    assert vocab.grids == ((2, 2), (8, 8))
    assert vocab.special_token(vocab.grid_id(8, 8)) == "<|grid:8x8|>"
    assert V.parse_grid_token("<|grid:16x9|>") == (16, 9)
    assert V.parse_grid_token("<|image|>") is None
    with pytest.raises(KeyError, match="no grid token for a 3x3"):
        vocab.grid_id(3, 3)
    assert vocab.describe(vocab.range("audio").start + 3) == "audio:3"
    assert vocab.describe(vocab.eos_id) == V.EOS


def test_save_load_round_trip(tmp_path, vocab):
    path = vocab.save(tmp_path)
    assert path.name == "vocab.json"
    loaded = Vocabulary.load(tmp_path)
    assert loaded == vocab
    assert loaded.time_units_per_second == vocab.time_units_per_second
    assert torch.equal(loaded.modality_of(torch.arange(vocab.size)), vocab.modality_of(torch.arange(vocab.size)))
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


def test_adding_a_modality_touches_only_its_range():
    before = Vocabulary.build({"text": 300, "image": 64})
    after = Vocabulary.build({"text": 300, "image": 64, "video_depth": 16})
    assert after.range("text") == before.range("text")
    assert after.range("image") == before.range("image")
    assert after.range("video_depth").start == before.size
    assert after.modality_of([before.size]).item() == after.modality_index("video_depth")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(extra=1), "unknown keys"),
        (lambda d: d.pop("ranges"), "missing keys"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d["ranges"][1].update(start=0), "expected"),
        (lambda d: d["ranges"][0].update(size=0), "size 0"),
        (lambda d: d["specials"].remove(V.EOS), "missing required special"),
        (lambda d: d.update(time_units_per_second=0), "time_units_per_second"),
    ],
)
def test_bad_vocab_json_is_a_clear_error(tmp_path, vocab, mutate, message):
    data = vocab.to_dict()
    mutate(data)
    (tmp_path / "vocab.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        Vocabulary.load(tmp_path)


def test_unreadable_vocab_file(tmp_path):
    with pytest.raises(ConfigError, match="no vocabulary file"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Vocabulary.load(tmp_path)
