import json

import pytest
import torch

from needs import require

transformers = require("transformers")

from polymodal.errors import ConfigError  # noqa: E402
from polymodal.model.hf_import import import_llama  # noqa: E402
from polymodal.vocab import Vocabulary  # noqa: E402

HF_VOCAB = 128


def save_tiny_llama(directory, *, tie: bool, seed: int = 0) -> "transformers.LlamaForCausalLM":
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=HF_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=tie,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("experts", [False, True])
def test_imported_weights_match_transformers_on_text(tmp_path, tie, experts):
    reference = save_tiny_llama(tmp_path, tie=tie)
    vocab = Vocabulary.build({"text": HF_VOCAB, "image": 40, "audio": 24})
    model = import_llama(tmp_path, vocab, modality_experts=experts).eval()
    text = vocab.range("text")
    hf_ids = torch.randint(0, HF_VOCAB, (2, 17), generator=torch.Generator().manual_seed(1))
    ids = hf_ids + text.start
    positions = torch.arange(17).view(1, 17, 1).expand(2, 17, 3)
    modality = vocab.modality_of(ids)
    with torch.no_grad():
        expected = reference(hf_ids).logits
        ours = model(ids, positions, modality)
    assert ours.shape == (2, 17, vocab.size)
    torch.testing.assert_close(ours[..., text.start : text.stop], expected, atol=1e-4, rtol=1e-4)


def test_media_rows_are_added_and_trainable(tmp_path):
    save_tiny_llama(tmp_path, tie=False)
    vocab = Vocabulary.build({"text": HF_VOCAB, "image": 40})
    model = import_llama(tmp_path, vocab)
    image = vocab.range("image")
    rows = model.embed.weight[image.start : image.stop]
    assert torch.isfinite(rows).all() and rows.std() > 0
    assert model.head.weight.shape[0] == vocab.size


def test_bad_checkpoints_are_clear_errors(tmp_path):
    vocab = Vocabulary.build({"text": HF_VOCAB})
    with pytest.raises(ConfigError, match="no config.json"):
        import_llama(tmp_path, vocab)
    save_tiny_llama(tmp_path, tie=True)
    with pytest.raises(ConfigError, match="holds 100"):
        import_llama(tmp_path, Vocabulary.build({"text": 100}))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="not a Llama-family"):
        import_llama(tmp_path, vocab)
    (tmp_path / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    with pytest.raises(ConfigError, match="attention_bias"):
        import_llama(tmp_path, vocab)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 8)
    with pytest.raises(ConfigError, match="cannot read weights"):
        import_llama(tmp_path, vocab)
