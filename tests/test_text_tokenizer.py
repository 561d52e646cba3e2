import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polymodal.content import Text
from polymodal.errors import ConfigError, PolymodalError
from polymodal.tokenizers import list_tokenizers, load_tokenizer
from polymodal.tokenizers.text import TextTokenizer

CORPUS = [
    "The red circle is above the blue square. ",
    "A green triangle sits to the left of a yellow star. ",
    "Count the shapes: one, two, three circles and 12 squares! ",
    "Ünïcödé, 日本語のテキスト, emoji 🙂 and tabs\tand\nnewlines. ",
] * 50


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, vocab_size=400, min_frequency=2)


def test_registered():
    assert "text-bpe" in list_tokenizers()


def test_training_learns_merges_that_compress(tokenizer):
    text = "The red circle is above the blue square."
    ids = tokenizer.encode_ids(text)
    assert 256 < tokenizer.vocab_size <= 400  # fewer when the corpus runs out of pairs
    assert len(ids) < len(text.encode("utf-8")) / 2, "BPE should merge frequent words"
    assert all(0 <= i < 400 for i in ids)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_unicode_string_round_trips_exactly(tokenizer, text):
    assert tokenizer.decode_ids(tokenizer.encode_ids(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_span_round_trip(tokenizer, text):
    span = tokenizer.encode(Text(text))
    assert span.modality == "text" and span.ids.dtype == torch.long
    assert tokenizer.decode(span) == Text(text)


def test_whitespace_and_controls_are_not_normalised(tokenizer):
    for text in ["  leading", "trailing  ", "\r\n\r\n", "\x00nul", "e\u0301 vs é", "<|eos|>"]:
        assert tokenizer.decode_ids(tokenizer.encode_ids(text)) == text


def test_lone_surrogate_is_a_clear_error(tokenizer):
    with pytest.raises(PolymodalError, match="not valid Unicode"):
        tokenizer.encode_ids("ok \ud800 bad")


def test_save_load_gives_identical_ids(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, TextTokenizer)
    sample = "A green triangle, 日本語 🙂"
    assert loaded.encode_ids(sample) == tokenizer.encode_ids(sample)
    assert loaded.vocab_size == tokenizer.vocab_size


def test_train_from_files_and_bad_inputs(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("hello world " * 100, encoding="utf-8")
    trained = TextTokenizer.train_from_files([good], vocab_size=300)
    assert len(trained.encode_ids("hello world")) <= 3
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff\xfe\xfa not utf8")
    with pytest.raises(PolymodalError, match="b.txt: not UTF-8"):
        TextTokenizer.train_from_files([bad], vocab_size=300)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        TextTokenizer.train_from_files([tmp_path / "missing.txt"])
    with pytest.raises(ConfigError, match="at least 257"):
        TextTokenizer.train(["x"], vocab_size=100)


def test_corrupt_saved_tokenizer(tmp_path, tokenizer):
    tokenizer.save(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ConfigError, match="cannot load BPE model"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(ConfigError, match="not a saved tokenizer"):
        load_tokenizer(tmp_path / "nowhere")


def test_decode_rejects_out_of_range_ids(tokenizer):
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode_ids([tokenizer.vocab_size])
