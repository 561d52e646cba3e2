import pytest
import torch

from polymodal.tokenizers.sequence import TokenSequence, pad_batch


def seq(ids: list[int], start: int = 0) -> TokenSequence:
    n = len(ids)
    pos = torch.arange(start, start + n).unsqueeze(1).expand(n, 3).clone()
    return TokenSequence(torch.tensor(ids), torch.ones(n, dtype=torch.long), pos, torch.ones(n))


def test_shapes_are_validated():
    with pytest.raises(ValueError, match="positions\\[N,3\\]"):
        TokenSequence(torch.tensor([1, 2]), torch.tensor([1, 1]), torch.zeros(2, 2, dtype=torch.long), torch.ones(2))


def test_cat_and_slice():
    joined = TokenSequence.cat([seq([1, 2]), seq([3], start=2)])
    assert joined.ids.tolist() == [1, 2, 3]
    assert joined.positions[:, 0].tolist() == [0, 1, 2]
    assert joined[1:].ids.tolist() == [2, 3]
    assert len(TokenSequence.cat([])) == 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_keeps_real_tokens_and_positions(side):
    a, b = seq([5, 6, 7]), seq([9])
    batch = pad_batch([a, b], pad_id=2, side=side, pad_to_multiple_of=4)
    assert batch.ids.shape == (2, 4)
    assert batch.lengths.tolist() == [3, 1]
    for row, s in enumerate((a, b)):
        mask = batch.attention_mask[row]
        assert batch.ids[row][mask].tolist() == s.ids.tolist()
        assert torch.equal(batch.positions[row][mask], s.positions)
        assert batch.ids[row][~mask].eq(2).all()
        assert batch.loss_weight[row][~mask].eq(0).all()
    if side == "left":
        assert batch.ids[:, -1].tolist() == [7, 9]
    else:
        assert batch.ids[:, 0].tolist() == [5, 9]
