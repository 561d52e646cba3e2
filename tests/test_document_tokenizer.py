import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import toys
from polymodal import vocab as V
from polymodal.content import Audio, Document, Image, Message, Text, Video, VideoFrame
from polymodal.errors import ConfigError, PolymodalError, SequenceTooLongError, TokenizerNotAvailableError
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.sequence import pad_batch
from polymodal.tokenizers.text import TextTokenizer

CORPUS = ["a red circle above a blue square and a loud beep " * 20, "what is in the picture? it is a circle. " * 20]


@pytest.fixture(scope="module")
def text_tokenizer() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, vocab_size=320)


@pytest.fixture
def codec(text_tokenizer) -> DocumentTokenizer:
    return DocumentTokenizer.from_tokenizers(
        [text_tokenizer, toys.ToyImageTokenizer(), toys.ToyAudioTokenizer()], grids=[(2, 2)]
    )


def red_image() -> Image:
    return Image(PILImage.new("RGB", (16, 16), (255, 0, 0)))


def beep(seconds: float = 0.2) -> Audio:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return Audio((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)


def token_names(codec, seq) -> list[str]:
    return [codec.vocab.describe(i) for i in seq.ids.tolist()]


def test_plain_document_layout_positions_and_weights(codec, text_tokenizer):
    doc = Document.of("a red", red_image(), "beep", beep())
    seq = codec.encode(doc)
    names = token_names(codec, seq)
    n_a = len(text_tokenizer.encode_ids("a red"))
    n_b = len(text_tokenizer.encode_ids("beep"))
    n_audio = 5  # 0.2 s at 25 tokens/s
    assert names[0] == V.BOS and names[-1] == V.EOS
    i_img = 1 + n_a
    assert names[i_img : i_img + 2] == [V.IMAGE_START, "<|grid:2x2|>"]
    assert all(n.startswith("image:") for n in names[i_img + 2 : i_img + 6])
    assert names[i_img + 6] == V.IMAGE_END
    i_aud = i_img + 7 + n_b
    assert names[i_aud] == V.AUDIO_START and names[i_aud + n_audio + 1] == V.AUDIO_END
    assert len(seq) == 1 + n_a + 7 + n_b + n_audio + 2 + 1
    # modality tensor is the vocabulary's range lookup
    assert torch.equal(seq.modality, codec.vocab.modality_of(seq.ids))
    # positions: the image grid starts at p = 1 + n_a + 2 and the index then moves on by max(H, W)
    p = 1 + n_a + 2
    assert seq.positions[i_img + 2 : i_img + 6].tolist() == [[p, p, p], [p, p, p + 1], [p, p + 1, p], [p, p + 1, p + 1]]
    assert seq.positions[i_img + 6].tolist() == [p + 2] * 3
    # audio: 25 tok/s at 25 units/s -> consecutive t
    q = seq.positions[i_aud, 0].item() + 1
    assert seq.positions[i_aud + 1 : i_aud + 1 + n_audio, 0].tolist() == list(range(q, q + n_audio))
    # a plain document trains on everything but <|bos|>
    assert seq.loss_weight[0] == 0 and seq.loss_weight[1:].eq(1).all()


def test_chat_template_weights_only_assistant(codec):
    doc = Document.chat(
        ("system", "be brief"), ("user", ["what is in the picture?", red_image()]), ("assistant", "a circle.")
    )
    seq = codec.encode(doc)
    names = token_names(codec, seq)
    start = names.index(V.ASSISTANT)
    ends = [i for i, n in enumerate(names) if n == V.END_OF_TURN]
    assert len(ends) == 3 and names[-1] == V.EOS
    weighted = seq.loss_weight.nonzero().flatten().tolist()
    # the assistant's text and its <|end|> (and the closing <|eos|>) carry the loss, nothing else
    assert weighted == list(range(start + 1, len(seq)))
    assert names.index(V.SYSTEM) == 1 and V.USER in names


def test_a_message_that_does_not_learn_is_context(codec):
    """``Message.learn=False``: a caption's picture is read, not trained; the ids are those of the plain
    document, only the loss moves to the caption (and the closing <|eos|>)."""
    plain = Document.of(red_image(), "a red square")
    context = Document((Message(None, (red_image(),), learn=False), Message(None, ("a red square",))))
    seq, ctx = codec.encode(plain), codec.encode(context)
    assert torch.equal(seq.ids, ctx.ids) and torch.equal(seq.positions, ctx.positions)
    names = token_names(codec, ctx)
    caption = names.index(V.IMAGE_END) + 1
    assert ctx.loss_weight[:caption].eq(0).all() and ctx.loss_weight[caption:].eq(1).all()
    # in a chat, learn=True trains a user turn too (its text and <|end|>; role tokens never)
    chat = codec.encode(Document((Message("user", ("hi",), learn=True), Message("assistant", ("hello",)))))
    untrained = {n for n, w in zip(token_names(codec, chat), chat.loss_weight.tolist(), strict=True) if w == 0}
    assert untrained == {V.BOS, V.USER, V.ASSISTANT}


def test_generation_prompt(codec):
    doc = Document.chat(("user", "what is in the picture?"))
    seq = codec.encode(doc, add_generation_prompt=True)
    assert codec.vocab.describe(seq.ids[-1].item()) == V.ASSISTANT
    assert seq.loss_weight.sum() == 0
    with pytest.raises(PolymodalError, match="chat document"):
        codec.encode(Document.of("x"), add_generation_prompt=True)


def test_round_trip_back_to_a_document(codec):
    doc = Document.chat(("user", ["look: ", red_image(), " and listen ", beep(0.4)]), ("assistant", "a red circle."))
    back = codec.decode(codec.encode(doc))
    assert back.is_chat and [m.role for m in back.messages] == ["user", "assistant"]
    parts = back.messages[0].parts
    assert parts[0] == Text("look: ") and parts[2] == Text(" and listen ")
    assert isinstance(parts[1], Image) and parts[1].size == (2, 2)
    assert tuple(parts[1].to_array()[0, 0]) == (224, 32, 32)  # red survives the toy code
    assert isinstance(parts[3], Audio) and parts[3].duration == pytest.approx(0.4)
    assert back.messages[1].parts == (Text("a red circle."),)
    plain = codec.decode(codec.encode(Document.of("just text")))
    assert not plain.is_chat and plain.parts == (Text("just text"),)


def test_decode_rejects_broken_structure(codec):
    img_start = codec.vocab.special_id(V.IMAGE_START)
    with pytest.raises(PolymodalError, match="never closed"):
        codec.decode([img_start, codec.vocab.grid_id(2, 2), codec.vocab.range("image").start])
    with pytest.raises(PolymodalError, match="outside a media span"):
        codec.decode([codec.vocab.range("image").start])


def test_truncation_never_splits_media(codec):
    doc = Document.of("a red circle", red_image(), "beep")
    full = codec.encode(doc)
    names = token_names(codec, full)
    i_img, i_end = names.index(V.IMAGE_START), names.index(V.IMAGE_END)
    with pytest.raises(SequenceTooLongError, match=f"{len(full)} tokens"):
        codec.encode(doc, max_length=len(full) - 1)
    # a right cut inside the image drops the whole image span
    right = codec.encode(doc, max_length=i_img + 3, truncation="right")
    assert len(right) == i_img and torch.equal(right.ids, full.ids[:i_img])
    # a right cut just after the image keeps it whole
    assert len(codec.encode(doc, max_length=i_end + 1, truncation="right")) == i_end + 1
    # a left cut inside the image starts after it
    left = codec.encode(doc, max_length=len(full) - i_img - 2, truncation="left")
    assert torch.equal(left.ids, full.ids[i_end + 1 :])
    assert len(codec.encode(doc, max_length=len(full), truncation="right")) == len(full)


def test_lazy_loading_text_only_never_loads_media(tmp_path, codec):
    codec.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / "tokenizers").iterdir()) == ["audio", "image", "text"]
    toys.LOADS.clear()
    # a text-only user: the media tokenizer folders may even be gone
    (tmp_path / "tokenizers" / "image" / "tokenizer_config.json").unlink()
    reloaded = DocumentTokenizer.load(tmp_path)
    seq = reloaded.encode(Document.of("a red circle"))
    assert reloaded.loaded_modalities == ("text",) and toys.LOADS == []
    assert torch.equal(seq.ids, codec.encode(Document.of("a red circle")).ids)
    # audio loads when first needed; the image folder was broken, which is a clear error
    reloaded.encode(Document.of(beep()))
    assert toys.LOADS == ["toy-audio"] and "audio" in reloaded.loaded_modalities
    with pytest.raises(ConfigError, match="not a saved tokenizer"):
        reloaded.encode(Document.of(red_image()))


def test_missing_modality_is_a_clear_error(text_tokenizer):
    text_only = DocumentTokenizer.from_tokenizers([text_tokenizer])
    with pytest.raises(TokenizerNotAvailableError, match="no image tokenizer .*covers: text"):
        text_only.encode(Document.of("x", red_image()))
    video = Video(frames=(VideoFrame(0.0, red_image()),), audio=None, duration=1.0)
    with pytest.raises(TokenizerNotAvailableError, match="no image tokenizer"):
        text_only.encode(Document.of(video))


def test_mismatched_tokenizer_and_vocab(tmp_path, text_tokenizer):
    codec = DocumentTokenizer.from_tokenizers([text_tokenizer])
    codec.save(tmp_path)
    TextTokenizer.train(CORPUS, vocab_size=300).save(tmp_path / "tokenizers" / "text")
    with pytest.raises(ConfigError, match="not saved together"):
        DocumentTokenizer.load(tmp_path).encode(Document.of("x"))


def test_batched_sequences_pad_without_moving_positions(codec):
    a = codec.encode(Document.of("a red circle", red_image()))
    b = codec.encode(Document.of("beep"))
    batch = pad_batch([a, b], codec.vocab.pad_id, side="left")
    assert torch.equal(batch.positions[1, -len(b) :], b.positions)
    assert batch.ids[1, : len(a) - len(b)].eq(codec.vocab.pad_id).all()


def tone_video(seconds: int = 3) -> Video:
    """Frames at 0, 1, 2 s (red, green, blue) and a track that is silent then loud from 1.0 s."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = tuple(VideoFrame(float(k), Image(PILImage.new("RGB", (8, 8), colours[k]))) for k in range(seconds))
    t = np.arange(16_000 * seconds) / 16_000
    wave = np.where(t >= 1.0, 0.4 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    return Video(frames=frames, audio=Audio(wave, 16_000), duration=float(seconds))


def test_video_interleaves_frames_and_sound_on_one_clock(codec):
    seq = codec.encode(Document.of(tone_video()), add_bos=False, add_eos=False)
    names = token_names(codec, seq)
    assert names[0] == V.VIDEO_START and names[-1] == V.VIDEO_END
    frames = [i for i, n in enumerate(names) if n == V.FRAME]
    assert len(frames) == 3 and all(names[i + 1] == "<|grid:2x2|>" for i in frames)
    audio_before = [sum(n.startswith("audio:") for n in names[:i]) for i in frames]
    assert audio_before == [0, 25, 50]  # 25 tokens/s: each frame follows the sound up to its second
    assert sum(n.startswith("audio:") for n in names) == 75
    origin = seq.positions[0, 0].item() + 1
    # the frame at 1.0 s and the audio code at 1.0 s (the 25th) share t = origin + 25
    frame_t = seq.positions[frames[1] + 2 : frames[1] + 6, 0]
    first_loud = [i for i, n in enumerate(names) if n.startswith("audio:")][25]
    assert frame_t.eq(origin + 25).all() and seq.positions[first_loud, 0].item() == origin + 25
    assert seq.positions[frames[2], 0].item() == origin + 50
    assert seq.positions[-1, 0].item() == int(seq.positions[:-1].max()) + 1


def test_video_round_trip(codec):
    back = codec.decode(codec.encode(Document.of("watch", tone_video())))
    video = back.parts[1]
    assert isinstance(video, Video)
    assert [f.time for f in video.frames] == [0.0, 1.0, 2.0]
    assert [tuple(f.image.to_array()[0, 0]) for f in video.frames] == [(224, 32, 32), (32, 224, 32), (32, 32, 224)]
    assert video.audio.duration == pytest.approx(3.0)
    loud = np.abs(video.audio.waveform[0])
    assert loud[: 16_000 - 640].max() == 0 and loud[16_000 + 640 :].min() > 0


def test_video_without_track_and_cost_check(codec, text_tokenizer):
    silent = tone_video()
    silent = Video(frames=silent.frames, audio=None, duration=silent.duration)
    back = codec.decode(codec.encode(Document.of(silent)))
    assert [f.time for f in back.parts[0].frames] == [0.0, 1.0, 2.0] and back.parts[0].audio is None
    # 3 frames cost at least 3 x (2 + 4) + 2 = 20 tokens: refused before any frame is encoded
    toys.ToyImageTokenizer.encoded = 0
    with pytest.raises(SequenceTooLongError, match="sample fewer frames"):
        codec.encode(Document.of(silent), max_length=19)
    assert toys.ToyImageTokenizer.encoded == 0
    image_only = DocumentTokenizer.from_tokenizers([text_tokenizer, toys.ToyImageTokenizer()])
    with pytest.raises(TokenizerNotAvailableError, match="no audio tokenizer"):
        image_only.encode(Document.of(tone_video()))
    assert len(image_only.encode(Document.of(silent))) == 2 + 2 + 3 * 6


def test_video_frame_times_survive_uneven_sampling_and_short_tracks(codec):
    frames = tuple(VideoFrame(t, red_image()) for t in (0.0, 0.5, 1.0, 1.5))
    silent = Video(frames=frames, audio=None, duration=2.0)
    back = codec.decode(codec.encode(Document.of(silent))).parts[0]
    # times come back on the positions' clock: to within half a time unit (1 / 50 s)
    assert [f.time for f in back.frames] == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=0.021)
    assert back.duration == pytest.approx(2.0, abs=0.05)
    short_track = Video(frames=frames, audio=beep(0.6), duration=2.0)
    back = codec.decode(codec.encode(Document.of(short_track))).parts[0]
    assert [f.time for f in back.frames] == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=0.021)
    assert back.audio.duration == pytest.approx(0.6)


def test_decode_of_empty_documents_and_generation_prompts(codec):
    assert codec.decode(codec.encode(Document.of(""))).parts == (Text(""),)
    prompt = Document.chat(("user", "what is in the picture?"))
    back = codec.decode(codec.encode(prompt, add_generation_prompt=True))
    assert [m.role for m in back.messages] == ["user"] and back.parts == (Text("what is in the picture?"),)
