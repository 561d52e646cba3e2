import pytest
import torch
from PIL import Image as PILImage

import toys
from polymodal.content import Document, Image
from polymodal.errors import ConfigError
from polymodal.generation import SamplingConfig, generate
from polymodal.model import preset
from polymodal.model.fusion import (
    LateFusion,
    LateFusionConfig,
    MediaInputs,
    late_fusion_batch,
    late_preset,
    split_for_late_fusion,
)
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.sequence import TokenSequence
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
    return late_fusion_batch([codec.encode(d) for d in docs], codec.vocab)


def run(model, text, media, _=None):
    return model(text.ids, text.positions, text.modality, text.attention_mask, media=media)


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


def late_run(codec, directions=("image+text->text", "text->text")):
    model = model_for(codec).eval()
    with torch.no_grad():  # open the gates so that the media really change the text
        for cross in model.cross.values():
            cross.gate.fill_(1.0)
    return Run(model, codec, directions)


def test_late_run_saves_reloads_and_writes_text_only(tmp_path, codec):
    run = late_run(codec)
    run.save(tmp_path / "late")
    loaded = Run.load(tmp_path / "late")
    assert loaded.architecture == "late" and loaded.model.config == run.model.config
    prompt = Document.chat(("user", ["look", picture((255, 0, 0))]))
    greedy = SamplingConfig(temperature=0, max_new_tokens=12)
    assert generate(loaded, prompt, sampling=greedy)[0].ids == generate(run, prompt, sampling=greedy)[0].ids
    with pytest.raises(ConfigError, match="writes text only"):
        Run(run.model, codec, ("text->image",))


def test_late_generation_cache_batch_and_media_agree(codec):
    run = late_run(codec)
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    prompts = [
        Document.chat(("user", ["look", picture((255, 0, 0)), "at it"])),
        Document.chat(("user", ["hi"])),
        Document.chat(("user", [picture((0, 0, 255)), "look at the blue circle and", picture((0, 255, 0))])),
    ]
    batched = generate(run, prompts, sampling=greedy)
    for prompt, together in zip(prompts, batched, strict=True):
        alone = generate(run, prompt, sampling=greedy)[0]
        uncached = generate(run, prompt, sampling=greedy, use_cache=False)[0]
        assert together.ids == alone.ids == uncached.ids
    # prefill then cached steps compute what the full forward pass computes (the prompt's media all
    # come before the split, as they do before every generated token)
    text, media, _ = late_fusion_batch([codec.encode(prompts[2])], codec.vocab)
    with torch.no_grad():
        full = run.model(text.ids, text.positions, text.modality, media=media)
        cache = run.model.new_cache(1, text.ids.shape[1])
        split = text.ids.shape[1] - 3
        head = MediaInputs(media.ids, media.positions, media.valid, media.visible[:, :split])
        first = run.model(
            text.ids[:, :split], text.positions[:, :split], text.modality[:, :split], cache=cache, media=head
        )
        rest = run.model(text.ids[:, split:], text.positions[:, split:], text.modality[:, split:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full)


def test_packed_rows_equal_documents_alone(codec):
    model = late_run(codec).model
    docs = [Document.of("look", picture((255, 0, 0)), "at it"), Document.of(picture((0, 0, 255)), "blue")]
    seqs = [codec.encode(d) for d in docs]
    packed = TokenSequence.cat(seqs)
    doc_ids = torch.cat([torch.full((len(s),), k) for k, s in enumerate(seqs)])
    text, media, text_docs = late_fusion_batch([packed], codec.vocab, document_ids=[doc_ids])
    with torch.no_grad():
        together = model(text.ids, text.positions, text.modality, document_ids_BL=text_docs, media=media)[0]
        alone = []
        for seq in seqs:
            t, m, _ = late_fusion_batch([seq], codec.vocab)
            alone.append(model(t.ids, t.positions, t.modality, media=m)[0])
    torch.testing.assert_close(together, torch.cat(alone))


def test_late_preset_and_config_round_trip(codec):
    config = late_preset("debug", codec.vocab.size, cross_every=1, freeze_encoder=True)
    assert config.encoder.n_layers == 1 and config.encoder.dim == config.text.dim
    assert LateFusionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown keys"):
        LateFusionConfig.from_dict({**config.to_dict(), "gates": 3})
