import numpy as np
import pytest
import torch

from polymodal.content import Document
from polymodal.data.tokenized import TokenizedDataset, write_tokenized
from polymodal.errors import ConfigError
from polymodal.model import Transformer, preset
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.text import TextTokenizer
from polymodal.train.data import Mixture, PackedRows, collate_rows, plan_rows
from polymodal.train.losses import next_token_loss

TEXTS = [
    "a red circle",
    "two blue squares and a green star above them",
    "hi",
    "the yellow triangle is left of the star",
]


@pytest.fixture(scope="module")
def codec() -> DocumentTokenizer:
    return DocumentTokenizer.from_tokenizers([TextTokenizer.train(TEXTS * 20, vocab_size=290)])


def test_round_trip_and_truncation(tmp_path, codec):
    docs = [Document.of(t) for t in TEXTS]
    write_tokenized(docs, codec, tmp_path / "tok", max_length=8)
    data = TokenizedDataset(tmp_path / "tok")
    assert len(data) == 4 and data.meta["documents"] == 4
    for doc, seq in zip(docs, (data[i] for i in range(4)), strict=True):
        expected = codec.encode(doc, max_length=8, truncation="right")
        assert torch.equal(seq.ids, expected.ids) and torch.equal(seq.positions, expected.positions)
        assert torch.equal(seq.loss_weight, expected.loss_weight) and torch.equal(seq.modality, expected.modality)
    assert data.lengths().max() <= 8
    data.check_vocabulary(codec.vocab)
    other = DocumentTokenizer.from_tokenizers([TextTokenizer.train(TEXTS * 20, vocab_size=280)])
    with pytest.raises(ConfigError, match="different vocabulary"):
        data.check_vocabulary(other.vocab)


def test_documents_cut_or_left_without_an_answer_are_counted_and_skipped(tmp_path, codec):
    long_answer = Document.chat(("user", TEXTS[1]), ("assistant", TEXTS[3]))  # the answer falls past the cut
    fits = Document.chat(("user", "hi"), ("assistant", "a red circle"))
    docs = [Document.of(TEXTS[1]), long_answer, fits]
    write_tokenized(docs, codec, tmp_path / "tok", max_length=16)
    data = TokenizedDataset(tmp_path / "tok")
    assert (data.meta["read"], data.meta["cut"], data.meta["skipped"]) == (3, 1, 1)
    assert len(data) == 2 and torch.equal(data[1].ids, codec.encode(fits).ids)
    with pytest.raises(ConfigError, match="none of the 1 documents fits max_length=6"):
        write_tokenized([long_answer], codec, tmp_path / "none", max_length=6)
    assert not (tmp_path / "none").exists()


def test_damaged_and_missing_datasets(tmp_path, codec):
    with pytest.raises(ConfigError, match="not a tokenized dataset"):
        TokenizedDataset(tmp_path)
    write_tokenized([Document.of(t) for t in TEXTS], codec, tmp_path / "tok", max_length=32)
    ids = tmp_path / "tok" / "ids.bin"
    ids.write_bytes(ids.read_bytes()[:-4])
    with pytest.raises(ConfigError, match="damaged"):
        TokenizedDataset(tmp_path / "tok")


def test_interrupted_write_leaves_nothing(tmp_path, codec):
    def documents():
        yield Document.of("a red circle")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_tokenized(documents(), codec, tmp_path / "tok", max_length=32)
    assert list(tmp_path.iterdir()) == []


def test_packing_keeps_documents_whole_and_separate(tmp_path, codec):
    write_tokenized([Document.of(t) for t in TEXTS * 3], codec, tmp_path / "tok", max_length=32)
    data = TokenizedDataset(tmp_path / "tok")
    mixture = Mixture({str(tmp_path / "tok"): 1.0}, codec.vocab)
    plan = plan_rows(mixture, 8, 24, seed=0)
    rows = PackedRows(mixture, plan, 24, codec.vocab)
    for r in range(len(plan)):
        seq, doc_ids = rows[r]
        whole = [data[d] for _, d in plan.row(r)]
        assert torch.equal(seq.ids, torch.cat([w.ids for w in whole])) and len(seq) <= 24
        assert doc_ids.tolist() == [k for k, w in enumerate(whole) for _ in range(len(w))]
    again = plan_rows(mixture, 8, 24, seed=0)
    assert np.array_equal(plan.documents, again.documents) and np.array_equal(plan.starts, again.starts)
    torch.manual_seed(0)
    model = Transformer(preset("debug", codec.vocab.size)).eval()
    batch = collate_rows([rows[0]], codec.vocab, seq_len=24)
    with torch.no_grad():
        packed_loss = next_token_loss(model(**batch.model_inputs()), batch.ids, batch.loss_weight)
        singles = [data[d] for _, d in plan.row(0)]
        losses = [
            next_token_loss(model(s.ids[None], s.positions[None]), s.ids[None], s.loss_weight[None]) for s in singles
        ]
        weights = [s.loss_weight[1:].sum() for s in singles]
    expected = sum(loss * w for loss, w in zip(losses, weights, strict=True)) / sum(weights)
    torch.testing.assert_close(packed_loss, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="more than seq_len 4"):
        plan_rows(mixture, 1, 4, seed=0)
