import numpy as np
import pytest
import torch

from polymodal.content import Document
from polymodal.data.tokenized import TokenizedDataset, pack_rows, write_tokenized
from polymodal.errors import ConfigError
from polymodal.model import Transformer, preset
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.text import TextTokenizer
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
    order = np.random.default_rng(0).permutation(len(data))
    rows = list(pack_rows(data, order, 24, codec.vocab.pad_id))
    assert sorted(i for r in rows for i in r.documents) == list(range(len(data)))
    assert [i for r in rows for i in r.documents] == order.tolist()  # in order: resumable
    again = list(pack_rows(data, order, 24, codec.vocab.pad_id))
    assert all(torch.equal(a.ids, b.ids) and a.documents == b.documents for a, b in zip(rows, again, strict=True))
    torch.manual_seed(0)
    model = Transformer(preset("debug", codec.vocab.size)).eval()
    row = rows[0]
    with torch.no_grad():
        packed = model(row.ids[None], row.positions[None], document_ids_BL=row.document_ids[None])
        packed_loss = next_token_loss(packed, row.ids[None], row.loss_weight[None])
        singles = [data[i] for i in row.documents]
        losses = [
            next_token_loss(model(s.ids[None], s.positions[None]), s.ids[None], s.loss_weight[None]) for s in singles
        ]
        weights = [s.loss_weight[1:].sum() for s in singles]
    expected = sum(loss * w for loss, w in zip(losses, weights, strict=True)) / sum(weights)
    torch.testing.assert_close(packed_loss, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="more than the row length"):
        list(pack_rows(data, [1], 4, codec.vocab.pad_id))
