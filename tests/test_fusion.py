import pytest
import torch
from PIL import Image as PILImage

import toys
from polymodal.content import Document, Image
from polymodal.errors import ConfigError
from polymodal.model import preset
from polymodal.model.fusion import LateFusion, LateFusionConfig, split_for_late_fusion
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.sequence import pad_batch
from polymodal.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def codec() -> DocumentTokenizer:
    text = TextTokenizer.train(["look at the red square and the blue circle"] * 30, vocab_size=300)
    return DocumentTokenizer.from_tokenizers([text, toys.ToyImageTokenizer()])


def picture(colour) -> Image:
    return Image(PILImage.new("RGB", (8, 8), colour))


def model_for(codec, **kwargs) -> LateFusion:
    torch.manual_seed(0)
    v = codec.vocab.size
    config = LateFusionConfig(text=preset("debug", v), encoder=preset("debug", v, n_layers=1), **kwargs)
    return LateFusion(config)


def inputs(codec, docs):
    splits = [split_for_late_fusion(codec.encode(d), codec.vocab) for d in docs]
    text = pad_batch([s[0] for s in splits], codec.vocab.pad_id)
    media = pad_batch([s[1] for s in splits], codec.vocab.pad_id)
    visible = torch.nn.utils.rnn.pad_sequence([s[2] for s in splits], batch_first=True)
    return text, media, visible


def run(model, text, media, visible):
    return model(
        text.ids, text.positions, visible, media.ids, media.positions, media.attention_mask, text.attention_mask
    )


def test_split_removes_codes_and_counts_what_each_token_sees(codec):
    seq = codec.encode(Document.of("look", picture((255, 0, 0)), "at it"))
    text, media, visible = split_for_late_fusion(seq, codec.vocab)
    assert len(media) == 4 and len(text) == len(seq) - 4
    image = codec.vocab.range("image")
    assert all(i in image for i in media.ids.tolist()) and not any(i in image for i in text.ids.tolist())
    names = [codec.vocab.describe(i) for i in text.ids.tolist()]
    close = names.index("<|/image|>")
    assert visible[:close].eq(0).all() and visible[close:].eq(4).all()


def test_closed_gates_leave_the_text_backbone_unchanged(codec):
    model = model_for(codec).eval()
    text, media, visible = inputs(codec, [Document.of("look", picture((255, 0, 0)), "at it"), Document.of("hi")])
    with torch.no_grad():
        fused = run(model, text, media, visible)
        alone = model.backbone(text.ids, text.positions, None, text.attention_mask)
    torch.testing.assert_close(fused, alone)


def test_text_reads_only_media_before_it(codec):
    model = model_for(codec).eval()
    with torch.no_grad():
        for cross in model.cross.values():
            cross.gate.fill_(1.0)
        red = inputs(codec, [Document.of("look", picture((255, 0, 0)), "at it")])
        blue = inputs(codec, [Document.of("look", picture((0, 0, 255)), "at it")])
        a, b = run(model, *red), run(model, *blue)
    names = [codec.vocab.describe(i) for i in red[0].ids[0].tolist()]
    close = names.index("<|/image|>")
    torch.testing.assert_close(a[:, :close], b[:, :close])
    assert not torch.allclose(a[:, close:], b[:, close:])


@pytest.mark.parametrize("frozen", [False, True])
def test_gradients_and_frozen_encoder(codec, frozen):
    model = model_for(codec, freeze_encoder=frozen)
    text, media, visible = inputs(codec, [Document.of("look", picture((255, 0, 0)), "at it")])
    logits = run(model, text, media, visible)
    logits.sum().backward()
    gates = [c.gate.grad for c in model.cross.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in gates)  # closed gates still learn to open
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    if frozen:
        assert all(g is None for g in encoder_grads) and not any(p.requires_grad for p in model.encoder.parameters())
    else:
        model.zero_grad()
        with torch.no_grad():
            for c in model.cross.values():
                c.gate.fill_(0.5)
        run(model, text, media, visible).sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_config_errors(codec):
    v = codec.vocab.size
    with pytest.raises(ConfigError, match="cross_every"):
        LateFusionConfig(text=preset("debug", v), encoder=preset("debug", v), cross_every=0)
    with pytest.raises(ConfigError, match="share the vocabulary"):
        LateFusionConfig(text=preset("debug", v), encoder=preset("debug", v + 1))
