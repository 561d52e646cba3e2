from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import toys
from needs import require
from polymodal import vocab as V
from polymodal.content import Audio, Document, Image, Text
from polymodal.errors import ConfigError
from polymodal.generation import (
    DirectionNotSupportedError,
    Finished,
    SamplingConfig,
    TextDelta,
    _new_cache,  # the decode cache's reuse rules
    generate,
    stream,
)
from polymodal.model import Transformer, preset
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.text import TextTokenizer

DIRECTIONS = ("text->text", "text->image", "text->audio", "image+text->text", "audio+text->text")


class FourGridImages(toys.ToyImageTokenizer):
    grids = ((2, 2), (3, 3))


@pytest.fixture(scope="module")
def run() -> Run:
    text = TextTokenizer.train(["draw a red circle and say hello, what is this? a square."] * 40, vocab_size=300)
    codec = DocumentTokenizer.from_tokenizers([text, FourGridImages(), toys.ToyAudioTokenizer()])
    torch.manual_seed(0)
    return Run(Transformer(preset("debug", codec.vocab.size)).eval(), codec, DIRECTIONS)


def red() -> Image:
    return Image(PILImage.new("RGB", (8, 8), (255, 0, 0)))


def prompts() -> list[Document]:
    return [Document.of("draw a red circle"), Document.chat(("user", ["what is this?", red()])), Document.of("say")]


@pytest.mark.parametrize("seed", range(6))
def test_grammar_output_always_decodes(run, seed):
    sampling = SamplingConfig(temperature=1.5, seed=seed, max_new_tokens=12, max_audio_seconds=0.4)
    vocab = run.tokenizer.vocab
    image_range, audio_range = vocab.range("image"), vocab.range("audio")
    for g in generate(run, [Document.of("draw")], output="image", sampling=sampling):
        names = [vocab.describe(i) for i in g.ids]
        h, w = V.parse_grid_token(names[1])
        assert names[0] == V.IMAGE_START and names[-1] == V.IMAGE_END and len(g.ids) == h * w + 3
        assert all(i in image_range for i in g.ids[2:-1])
        assert isinstance(g.part, Image) and g.part.size == (w, h) and g.finish_reason == "complete"
    for g in generate(run, [Document.of("say")], output="audio", sampling=sampling):
        assert vocab.describe(g.ids[0]) == V.AUDIO_START and vocab.describe(g.ids[-1]) == V.AUDIO_END
        codes = g.ids[1:-1]
        assert 1 <= len(codes) <= 10 and all(i in audio_range for i in codes)
        assert isinstance(g.part, Audio) and g.part.duration == pytest.approx(len(codes) / 25)
    for g in generate(run, prompts(), output="text", sampling=sampling, check_direction=False):
        assert isinstance(g.part, Text)
        assert all(i in vocab.range("text") or vocab.special_token(i) in (V.EOS, V.END_OF_TURN) for i in g.ids)
        assert g.finish_reason in ("stop", "length") and len(g.ids) <= 12


def test_greedy_is_deterministic_batched_equals_single_and_cache_equals_no_cache(run):
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    batched = generate(run, prompts(), sampling=greedy, check_direction=False)
    again = generate(run, prompts(), sampling=greedy, check_direction=False)
    single = [generate(run, [p], sampling=greedy, check_direction=False)[0] for p in prompts()]
    uncached = generate(run, prompts(), sampling=greedy, check_direction=False, use_cache=False)
    ids = [g.ids for g in batched]
    assert ids == [g.ids for g in again] == [g.ids for g in single] == [g.ids for g in uncached]
    for output in ("image", "audio"):
        media = SamplingConfig(temperature=0, max_audio_seconds=0.3)
        a = generate(run, [Document.of("draw a red circle"), Document.of("say")], output=output, sampling=media)
        b = [
            generate(run, [p], output=output, sampling=media)[0]
            for p in (Document.of("draw a red circle"), Document.of("say"))
        ]
        assert [g.ids for g in a] == [g.ids for g in b]


@pytest.mark.slow
def test_compiled_decoding_matches_eager_and_reuses_its_cache(run):
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    eager = generate(run, prompts(), sampling=greedy, check_direction=False)
    compiled = generate(run, prompts(), sampling=greedy, check_direction=False, compile=True)
    cache = run.model.__dict__["_decode_cache"]
    again = generate(run, prompts(), sampling=greedy, check_direction=False, compile=True)
    assert [g.ids for g in compiled] == [g.ids for g in eager] == [g.ids for g in again]
    assert run.model.__dict__["_decode_cache"] is cache  # same size: the same tensors, emptied
    # two generations in progress at once (a server's streams) never share a cache; a finished or
    # abandoned one frees its cache for the next
    held = _new_cache(run.model, 3, 128, torch.device("cpu"), torch.float32, reuse=True)
    assert held is cache and held.in_use
    other = _new_cache(run.model, 3, 128, torch.device("cpu"), torch.float32, reuse=True)
    assert other is not held and run.model.__dict__["_decode_cache"] is held
    held.in_use = False
    events = stream(run, prompts(), sampling=greedy, check_direction=False, compile=True)
    next(events)
    assert held.in_use
    events.close()
    assert not held.in_use
    media = SamplingConfig(temperature=0, guidance_scale=2.0, grid=(2, 2), seed=0)
    image = generate(run, [Document.of("draw a red circle")], output="image", sampling=media)
    image_compiled = generate(run, [Document.of("draw a red circle")], output="image", sampling=media, compile=True)
    assert image[0].ids == image_compiled[0].ids


@pytest.mark.slow
def test_modality_experts_decode_one_token_per_row_as_the_full_forward_does():
    text = TextTokenizer.train(["what is this? a red square."] * 20, vocab_size=280)
    codec = DocumentTokenizer.from_tokenizers([text, FourGridImages(), toys.ToyAudioTokenizer()])
    torch.manual_seed(1)
    model = Transformer(preset("debug", codec.vocab.size).with_(modality_experts=True)).eval()
    for expert in model.layers[0].ffn.experts:  # make the experts differ, so that a wrong pick shows
        torch.nn.init.normal_(expert.w2.weight, std=0.5)
    experts = Run(model, codec, DIRECTIONS)
    greedy = SamplingConfig(temperature=0, max_new_tokens=8)
    for output, sampling in (("text", greedy), ("image", SamplingConfig(temperature=0, grid=(2, 2)))):
        cached = generate(experts, prompts()[:2], output=output, sampling=sampling, check_direction=False)
        full = generate(experts, prompts()[:2], output=output, sampling=sampling, check_direction=False,
                        use_cache=False)  # fmt: skip
        assert [g.ids for g in cached] == [g.ids for g in full]
    # compiled, every expert runs on every row and each row takes its own (no data-dependent shapes)
    compiled = generate(experts, prompts()[:2], sampling=greedy, check_direction=False, compile=True)
    assert [g.ids for g in compiled] == [g.ids for g in generate(experts, prompts()[:2], sampling=greedy,
                                                                  check_direction=False)]  # fmt: skip


def test_generated_image_positions_match_the_encoder(run):
    prompt = Document.of("draw a red circle")
    # the toy tokenizer encodes every image on a 2x2 grid: generate one so that it re-encodes alike
    g = generate(run, [prompt], output="image", sampling=SamplingConfig(temperature=0, grid=(2, 2)))[0]
    codec, model = run.tokenizer, run.model
    full = codec.encode(Document.of("draw a red circle", g.part), add_eos=False)
    prompt_len = len(codec.encode(prompt, add_eos=False))
    assert full.ids[prompt_len:].tolist() == g.ids  # the decoded image re-encodes to the same codes
    with torch.no_grad():
        logits = model(full.ids[None], full.positions[None], full.modality[None])[0]
    # teacher-forced greedy over the encoder's positions picks the same codes as generation did
    image_range = codec.vocab.range("image")
    for k in range(prompt_len + 2, len(full) - 1):
        step = logits[k - 1, image_range.start : image_range.stop]
        assert int(step.argmax()) + image_range.start == g.ids[k - prompt_len]


def test_forced_grid_guidance_and_seeds(run):
    grid = SamplingConfig(temperature=0, grid=(3, 3))
    g = generate(run, [Document.of("draw")], output="image", sampling=grid)[0]
    assert g.part.size == (3, 3)
    with pytest.raises(ConfigError, match="no grid token"):
        generate(run, [Document.of("draw")], output="image", sampling=SamplingConfig(grid=(5, 5)))
    plain = generate(
        run, [Document.of("draw a red circle")], output="image", sampling=SamplingConfig(temperature=0, grid=(3, 3))
    )
    guided = generate(
        run,
        [Document.of("draw a red circle")],
        output="image",
        sampling=SamplingConfig(temperature=0, grid=(3, 3), guidance_scale=3.0),
    )
    assert plain[0].ids != guided[0].ids and len(guided[0].ids) == 12
    seeded = [
        generate(run, [Document.of("draw")], output="image", sampling=SamplingConfig(seed=s))[0].ids for s in (1, 1, 2)
    ]
    assert seeded[0] == seeded[1] != seeded[2]


def test_directions_are_enforced(run):
    with pytest.raises(DirectionNotSupportedError, match="image\\+text->audio"):
        generate(run, [Document.of("hello", red())], output="audio")
    with pytest.raises(ConfigError, match="output must be"):
        generate(run, [Document.of("x")], output="video")


def test_stream_deltas_add_up_and_stop_strings(run):
    sampling = SamplingConfig(temperature=1.0, seed=3, max_new_tokens=20)
    events = list(stream(run, [Document.of("draw a red circle")], sampling=sampling))
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    final = [e for e in events if isinstance(e, Finished)][0].generation
    assert deltas == final.part.text and isinstance(events[-1], Finished)
    text = final.part.text
    if len(text) > 3:
        stop = text[2:4]
        stopped = generate(
            run,
            [Document.of("draw a red circle")],
            sampling=SamplingConfig(temperature=1.0, seed=3, max_new_tokens=20, stop=(stop,)),
        )[0]
        assert stopped.part.text == text[: text.find(stop)] and stopped.finish_reason == "stop"


def test_sampling_config_errors():
    with pytest.raises(ConfigError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ConfigError, match="top_k"):
        SamplingConfig(top_k=0)
    with pytest.raises(ConfigError):
        SamplingConfig(temperature=-1)


def test_top_k_and_top_p_restrict_the_choice():
    from polymodal.generation import sample

    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]]).repeat(200, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample(logits, SamplingConfig(top_k=2), gen).tolist()) == {0, 1}
    assert set(sample(logits, SamplingConfig(top_p=0.5), gen).tolist()) == {0}
    assert sample(logits[:1], SamplingConfig(temperature=0), gen).tolist() == [0]
    assert np.unique(sample(logits, SamplingConfig(), gen).numpy()).size >= 2


def test_conditioning_dropout_matches_the_unconditional_branch(run):
    from polymodal.generation import _unconditional, drop_conditioning

    chat = Document.chat(("user", "draw a red circle"), ("assistant", [red()]))
    dropped = drop_conditioning(chat)
    assert [m.role for m in dropped.messages] == ["user", "assistant"] and dropped.messages[0].parts == (Text(""),)
    assert dropped.messages[1] == chat.messages[1]
    # the training form without its target is exactly what generation feeds the unconditional branch
    prompt = Document.chat(("user", "draw a red circle"))
    training_prefix = run.tokenizer.encode(drop_conditioning(chat), add_eos=False)
    uncond = _unconditional(run, prompt)
    assert training_prefix.ids[: len(uncond)].tolist() == uncond.ids.tolist()
    plain = drop_conditioning(Document.of("draw a red circle", red()))
    assert plain.parts[0] == Text("") and isinstance(plain.parts[1], Image)


def test_rows_finish_as_soon_as_they_are_done_and_cancelled_rows_stop(run):
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=30)
    docs = [Document.of("draw a red circle"), Document.of("say"), Document.of("what is this?")]
    alone = [generate(run, d, sampling=sampling)[0] for d in docs]
    events = list(stream(run, docs, sampling=sampling))
    order = [e.index for e in events if isinstance(e, Finished)]
    # a row's Finished comes right after its last token: shorter answers finish first
    assert order == sorted(range(3), key=lambda b: (alone[b].finish_reason == "length", len(alone[b].ids), b))
    cancelled: set[int] = set()
    seen = []
    for event in stream(run, docs, sampling=sampling, cancelled=cancelled):
        seen.append(event)
        if isinstance(event, TextDelta) and event.index == 0:
            cancelled.add(0)  # the client of row 0 went away after its first delta
    assert [e for e in seen if isinstance(e, TextDelta) and e.index == 0][1:] == []
    assert not any(isinstance(e, Finished) and e.index == 0 for e in seen)
    others = {e.index: e.generation for e in seen if isinstance(e, Finished)}
    assert {b: g.ids for b, g in others.items()} == {1: alone[1].ids, 2: alone[2].ids}


def test_int8_weights_are_four_times_smaller_and_decode_alike(tmp_path):
    require("torchao", "quantize")
    from polymodal.quantize import linear_weight_bytes, quantize_weights

    text = TextTokenizer.train(["a red circle and a blue square, what is this"] * 30, vocab_size=300)
    codec = DocumentTokenizer.from_tokenizers([text, toys.ToyImageTokenizer(), toys.ToyAudioTokenizer()])
    torch.manual_seed(0)
    full = Run(Transformer(preset("debug", codec.vocab.size)).eval(), codec, ("text->text",))
    before = linear_weight_bytes(full.model)
    prompt = Document.of("a red circle and")
    seq = codec.encode(prompt, add_eos=False)
    with torch.no_grad():
        reference = torch.log_softmax(full.model(seq.ids[None], seq.positions[None], seq.modality[None]), -1)
    quantize_weights(full.model)
    assert before / linear_weight_bytes(full.model) > 3.5  # the tied output projection included
    with torch.no_grad():
        quantized = torch.log_softmax(full.model(seq.ids[None], seq.positions[None], seq.modality[None]), -1)
    assert (quantized - reference).abs().max() < 0.1 and not torch.equal(quantized, reference)
    out = generate(full, prompt, sampling=SamplingConfig(temperature=0, max_new_tokens=6), check_direction=False)
    assert len(out[0].ids) >= 1
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_weights(full.model)
    with pytest.raises(ConfigError, match="save the run before quantizing"):
        full.save(tmp_path / "run")


@pytest.mark.parametrize("incremental", [True, False])
def test_audio_streams_in_chunks_that_make_up_the_clip(incremental):
    from polymodal.generation import AudioDelta, PartDone
    from polymodal.tokenizers.audio import AudioTokenizer

    text = TextTokenizer.train(["say hello"] * 40, vocab_size=280)
    speech = AudioTokenizer(audio_tok_config()) if incremental else toys.ToyAudioTokenizer()
    codec = DocumentTokenizer.from_tokenizers([text, speech])
    torch.manual_seed(0)
    run = Run(Transformer(preset("debug", codec.vocab.size)).eval(), codec, ("text->audio",))
    sampling = SamplingConfig(temperature=1.0, seed=3, max_audio_seconds=2.0, audio_chunk=5)
    events = list(stream(run, [Document.of("say hello")], output="audio", sampling=sampling))
    deltas = [e for e in events if isinstance(e, AudioDelta)]
    done = [k for k, e in enumerate(events) if isinstance(e, PartDone)]
    assert done and all(events.index(d) < done[0] for d in deltas)  # every delta comes before the clip
    clip = events[done[0]].part
    assert (len(deltas) > 2) == incremental  # a toy tokenizer without stream(): one delta, the whole clip
    np.testing.assert_allclose(np.concatenate([d.samples for d in deltas]), clip.to_mono().waveform[0], atol=1e-5)
    assert {d.sample_rate for d in deltas} == {clip.sample_rate}
    without = list(stream(run, [Document.of("say hello")], output="audio", sampling=replace(sampling, audio_chunk=0)))
    assert not any(isinstance(e, AudioDelta) for e in without)


def audio_tok_config():
    from polymodal.tokenizers import audio as audio_tok

    return audio_tok.preset("debug")
