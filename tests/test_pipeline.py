import pytest
import torch
from PIL import Image as PILImage

import toys
from polymodal.content import Document, Image, Text
from polymodal.errors import ConfigError
from polymodal.generation import SamplingConfig, generate
from polymodal.model import Transformer, preset
from polymodal.pipeline import Pipeline
from polymodal.run import Run
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.text import TextTokenizer


@pytest.fixture(scope="module")
def codec() -> DocumentTokenizer:
    text = TextTokenizer.train(["a red square. what colour is it? red."] * 30, vocab_size=290)
    return DocumentTokenizer.from_tokenizers([text, toys.ToyImageTokenizer(), toys.ToyAudioTokenizer()])


def make(codec, directions, seed):
    torch.manual_seed(seed)
    return Run(Transformer(preset("debug", codec.vocab.size)).eval(), codec, directions)


def test_media_become_descriptions_and_the_reasoner_reads_text_only(codec):
    captioner = make(codec, ("image+text->text",), 1)
    reasoner = make(codec, ("text->text",), 2)
    pipeline = Pipeline({"image": captioner}, reasoner)
    square = Image(PILImage.new("RGB", (8, 8), (255, 0, 0)))
    prompt = Document.chat(("user", ["what colour is it?", square]))
    textual = pipeline.to_text(prompt)
    assert all(isinstance(p, Text) for p in textual.parts)
    caption = pipeline.describe(square)
    assert textual.parts[1] == Text(f"[image: {caption}]")
    greedy = SamplingConfig(temperature=0, max_new_tokens=6)
    answer = pipeline.generate(prompt, sampling=greedy)[0]
    assert answer.ids == generate(reasoner, textual, sampling=greedy)[0].ids


def test_missing_specialists_and_directions_are_clear(codec):
    reasoner = make(codec, ("text->text",), 2)
    with pytest.raises(ConfigError, match="image specialist does not declare"):
        Pipeline({"image": make(codec, ("text->text",), 1)}, reasoner)
    with pytest.raises(ConfigError, match="reasoner does not declare"):
        Pipeline({}, make(codec, ("image->text",), 3))
    pipeline = Pipeline({}, reasoner)
    with pytest.raises(ConfigError, match="no image specialist"):
        pipeline.to_text(Document.of(Image(PILImage.new("RGB", (8, 8)))))
