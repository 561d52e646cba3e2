import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.model import KVCache, ModelConfig, Transformer, list_presets, preset
from polymodal.model import config as C
from polymodal.model.transformer import MultiAxisRotary, interleave_axes

VOCAB = 300


def batch(B: int = 2, L: int = 12, vocab: int = VOCAB, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, L), generator=g)
    pos = torch.arange(L).view(1, L, 1).expand(B, L, 3).clone()
    modality = torch.randint(0, 4, (B, L), generator=g)
    return ids, pos, modality


@pytest.mark.parametrize("experts", [False, True])
def test_debug_preset_forward_backward_every_parameter_gets_a_gradient(experts):
    torch.manual_seed(0)
    model = Transformer(preset("debug", VOCAB, modality_experts=experts))
    ids, pos, modality = batch()
    logits = model(ids, pos, modality)
    assert logits.shape == (2, 12, VOCAB) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert missing == []


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_with_its_documented_size(name):
    config = preset(name, 49_152)
    # count analytically (building 1b on a CI machine is slow but the formula is the model's own)
    d, f, layers, kv = config.dim, config.ffn_dim, config.n_layers, config.n_kv_heads * config.head_dim
    per_layer = d * d * 2 + 2 * d * kv + 3 * d * f + 2 * d
    total = config.vocab_size * d + layers * per_layer + d
    expected = {
        "debug": (0, 5e6),
        "tiny": (10e6, 25e6),
        "small": (125e6, 145e6),
        "base": (330e6, 380e6),
        "1b": (1.0e9, 1.3e9),
    }
    low, high = expected[name]
    assert low <= total <= high, f"{name}: {total / 1e6:.1f}M parameters"
    if name in ("debug", "tiny"):
        assert Transformer(config).num_parameters() == total


def test_preset_and_config_errors():
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("huge", VOCAB)
    with pytest.raises(ConfigError, match="unknown keys"):
        preset("debug", VOCAB, n_expertz=3)
    with pytest.raises(ConfigError, match="not divisible"):
        ModelConfig(vocab_size=10, dim=65, n_heads=4, n_kv_heads=2)
    with pytest.raises(ConfigError, match="rope_sections"):
        ModelConfig(vocab_size=10, dim=64, n_heads=4, n_kv_heads=2, rope_sections=(4, 4, 4))
    with pytest.raises(ConfigError, match="unknown keys"):
        ModelConfig.from_dict({**C.debug(VOCAB).to_dict(), "dropout": 0.1})
    assert ModelConfig.from_dict(C.debug(VOCAB).to_dict()) == C.debug(VOCAB)


def test_multi_axis_rotary_reduces_to_1d_rope_on_text():
    rotary = MultiAxisRotary(16, 10_000.0, (4, 2, 2))
    text = torch.arange(5).view(1, 5, 1).expand(1, 5, 3)
    cos, sin = rotary(text)
    inv = 10_000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    freqs = torch.arange(5, dtype=torch.float64)[:, None] * inv
    expected = torch.cat([freqs, freqs], -1)
    torch.testing.assert_close(cos[0, 0].double(), expected.cos(), atol=1e-6, rtol=0)
    # an image token: each pair turns with its own axis, and every axis has fast and slow pairs
    axis = interleave_axes((4, 2, 2))
    assert axis.tolist().count(0) == 4 and axis.tolist().count(1) == 2 and axis.tolist().count(2) == 2
    assert {int(axis[0]), int(axis[1])} >= {0} and set(axis[:4].tolist()) == {0, 1, 2}
    cos_img, _ = rotary(torch.tensor([[[3, 5, 7]]]))
    position = torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64)[axis]
    assert torch.allclose(cos_img[0, 0, 0, :8], (position * inv).cos().float())


def test_positions_matter_beyond_order():
    torch.manual_seed(0)
    model = Transformer(preset("debug", VOCAB)).eval()
    ids, pos, _ = batch(B=1)
    moved = pos.clone()
    moved[0, 5:, 1] += 3  # same order, different h of later tokens
    with torch.no_grad():
        a, b = model(ids, pos), model(ids, moved)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("experts", [False, True])
def test_cached_decoding_matches_full_forward(experts):
    torch.manual_seed(0)
    model = Transformer(preset("debug", VOCAB, modality_experts=experts)).eval()
    ids, pos, modality = batch(B=2, L=10)
    with torch.no_grad():
        full = model(ids, pos, modality)
        cache = KVCache(model.config, batch_size=2, max_len=16)
        prefix = model(ids[:, :6], pos[:, :6], modality[:, :6], cache=cache)
        steps = [model(ids[:, i : i + 1], pos[:, i : i + 1], modality[:, i : i + 1], cache=cache) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 10
    with pytest.raises(ValueError, match="KV cache holds 16"):
        model(torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 7, 3, dtype=torch.long), modality[:, :7], cache=cache)


def test_left_padded_batch_equals_one_by_one():
    torch.manual_seed(0)
    model = Transformer(preset("debug", VOCAB)).eval()
    short_ids, short_pos, _ = batch(B=1, L=5, seed=1)
    long_ids, long_pos, _ = batch(B=1, L=9, seed=2)
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short_ids], 1), long_ids])
    pos = torch.cat([torch.cat([torch.zeros(1, 4, 3, dtype=torch.long), short_pos], 1), long_pos])
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :4] = False
    with torch.no_grad():
        together = model(ids, pos, attention_mask_BL=mask)
        alone_short, alone_long = model(short_ids, short_pos), model(long_ids, long_pos)
        # and the same when decoding one more token through the cache
        cache = KVCache(model.config, batch_size=2, max_len=12)
        model(ids, pos, attention_mask_BL=mask, cache=cache)
        nxt = torch.tensor([[7], [8]])
        step = model(nxt, torch.stack([short_pos[0, -1] + 1, long_pos[0, -1] + 1]).view(2, 1, 3), cache=cache)
        ref_short = model(torch.cat([short_ids, nxt[:1]], 1), torch.cat([short_pos, (short_pos[:, -1:] + 1)], 1))
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together[0, 4:], alone_short[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1], alone_long[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[0, 0], ref_short[0, -1], atol=1e-5, rtol=1e-5)


def test_experts_route_by_modality():
    torch.manual_seed(0)
    model = Transformer(preset("debug", VOCAB, modality_experts=True)).eval()
    ids, pos, modality = batch(B=1)
    changed = modality.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 4
    with torch.no_grad():
        a, b = model(ids, pos, modality), model(ids, pos, changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])  # causal: earlier tokens unaffected
    assert not torch.allclose(a[:, -1], b[:, -1])
    with pytest.raises(ValueError, match="modality"):
        model(ids, pos)


def test_tied_and_untied_heads():
    tied = Transformer(preset("debug", VOCAB))
    untied = Transformer(preset("debug", VOCAB, tie_embeddings=False))
    assert tied.head is None and untied.head is not None
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * tied.config.dim


def test_embed_scale_multiplies_the_input_embeddings_not_the_tied_head():
    torch.manual_seed(0)
    plain = Transformer(preset("debug", VOCAB))
    scaled = Transformer(preset("debug", VOCAB, embed_scale=8.0))
    scaled.load_state_dict(plain.state_dict())  # same weights: the scale is not a parameter
    ids, pos, modality = batch()
    assert torch.allclose(scaled.embed(ids), 8.0 * plain.embed(ids))
    # The tied head reads the table itself: identical hidden states give identical logits.
    x = torch.randn(2, 12, plain.config.dim)
    assert torch.equal(scaled.logits(x), plain.logits(x))
    assert not torch.allclose(scaled(ids, pos, modality), plain(ids, pos, modality), atol=1e-3)
    # The decoding path applies the scale too: a cached step equals the full forward.
    cache = scaled.new_cache(2, 16)
    full = scaled(ids, pos, modality)
    scaled(ids[:, :-1], pos[:, :-1], modality[:, :-1], cache=cache)
    step = scaled(ids[:, -1:], pos[:, -1:], modality[:, -1:], cache=cache)
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-4)
    with pytest.raises(ConfigError, match="embed_scale"):
        preset("debug", VOCAB, embed_scale=0.0)


def test_grid_embeddings_add_a_row_and_a_column_vector_to_image_codes_only():
    from polymodal.positions import image_positions, next_index, text_positions

    torch.manual_seed(0)
    plain = Transformer(preset("debug", VOCAB))
    gridded = Transformer(preset("debug", VOCAB, grid_embeddings=4))
    assert not any(name.startswith("grid.") for name, _ in plain.named_parameters())
    assert set(gridded.state_dict()) - set(plain.state_dict()) == {"grid.rows", "grid.cols"}
    gridded.load_state_dict(plain.state_dict(), strict=False)
    # Two text tokens, a 3x5 grid (wider than the table: columns 4+ share the last vector), two text tokens.
    grid = image_positions(2, 3, 5)
    after = next_index(2, grid)
    pos = torch.cat([text_positions(0, 2), grid, text_positions(after, 2)]).unsqueeze(0)
    ids = torch.randint(0, VOCAB, (1, pos.shape[1]))
    added = gridded.embed_inputs(ids, pos) - plain.embed_inputs(ids, pos)
    rows, cols = gridded.grid.rows.detach(), gridded.grid.cols.detach()
    assert rows[0].abs().sum() == 0 and cols[0].abs().sum() == 0 and rows[1].abs().sum() > 0
    expected = torch.zeros_like(added)
    for k in range(15):
        r, c = divmod(k, 5)
        expected[0, 2 + k] = rows[r] + cols[min(c, 3)]
    assert torch.allclose(added, expected)
    assert added[0, :3].abs().sum() == 0 and added[0, -2:].abs().sum() == 0  # text and the first code
    # Row and column 0 stay zero under training (no gradient reaches them); the others learn.
    gridded(ids, pos).logsumexp(-1).mean().backward()
    assert gridded.grid.rows.grad[0].abs().sum() == 0 and gridded.grid.rows.grad[1].abs().sum() > 0
    # Decoding one token at a time through the cache gives the full forward's logits.
    gridded.eval()
    with torch.no_grad():
        full = gridded(ids, pos)
        cache = gridded.new_cache(1, 32)
        gridded(ids[:, :10], pos[:, :10], cache=cache)
        steps = [gridded(ids[:, i : i + 1], pos[:, i : i + 1], cache=cache)[:, -1] for i in range(10, ids.shape[1])]
    assert torch.allclose(torch.stack(steps, 1), full[:, 10:], atol=1e-4)
    with pytest.raises(ConfigError, match="grid_embeddings"):
        preset("debug", VOCAB, grid_embeddings=-1)


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_larger_presets_forward_backward(name):
    # 1b (4 GB of fp32 weights, 8 with gradients) is left to GPU runs; its shape is checked above.
    torch.manual_seed(0)
    model = Transformer(preset(name, 512))
    ids, pos, modality = batch(B=1, L=8, vocab=512)
    logits = model(ids, pos, modality)
    assert torch.isfinite(logits).all()
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_packed_documents_do_not_see_each_other():
    torch.manual_seed(0)
    model = Transformer(preset("debug", VOCAB)).eval()
    a_ids, a_pos, _ = batch(B=1, L=5, seed=1)
    b_ids, b_pos, _ = batch(B=1, L=7, seed=2)
    packed_ids = torch.cat([a_ids, b_ids], 1)
    packed_pos = torch.cat([a_pos, b_pos], 1)  # each document's positions restart at 0
    documents = torch.tensor([[0] * 5 + [1] * 7])
    with torch.no_grad():
        packed = model(packed_ids, packed_pos, document_ids_BL=documents)
        alone_a, alone_b = model(a_ids, a_pos), model(b_ids, b_pos)
        leaky = model(packed_ids, packed_pos)
    torch.testing.assert_close(packed[:, :5], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 5:], alone_b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[:, 5:], alone_b, atol=1e-3)
    with pytest.raises(ValueError, match="packed documents"):
        model(packed_ids, packed_pos, document_ids_BL=documents, cache=KVCache(model.config, 1, 16))


def dense_band(B, L, window, valid=None, docs=None):
    """The sliding-window mask written out in full: what banded_attention must equal."""
    i = torch.arange(L)
    allowed = (i[:, None] >= i[None]) & (i[:, None] - i[None] < window)
    allowed = allowed.expand(B, L, L).clone()
    if valid is not None:
        allowed &= valid[:, None, :]
    if docs is not None:
        allowed &= docs[:, :, None] == docs[:, None, :]
    allowed[:, i, i] = True
    return allowed.unsqueeze(1)


@pytest.mark.parametrize(("L", "window"), [(37, 8), (32, 8), (9, 16), (20, 1)])
def test_banded_attention_equals_dense_banded_mask(L, window):
    from polymodal.model.transformer import BandedMask, banded_attention

    g = torch.Generator().manual_seed(L + window)
    B, N, K, H = 2, 4, 2, 8
    q, k, v = (torch.randn(B, n, L, H, generator=g) for n in (N, K, K))
    valid = torch.rand(B, L, generator=g) > 0.2
    docs = (torch.rand(B, L, generator=g) < 0.15).cumsum(1)
    both = {"keys_valid_BL": valid, "document_ids_BL": docs}
    for kwargs in ({}, {"keys_valid_BL": valid}, {"document_ids_BL": docs}, both):
        got = banded_attention(q, k, v, BandedMask(window, **kwargs))
        dense = dense_band(B, L, window, kwargs.get("keys_valid_BL"), kwargs.get("document_ids_BL"))
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sliding_window_model_forgets_beyond_its_window_and_decodes_as_it_trains():
    torch.manual_seed(0)
    window, L = 4, 16
    local = Transformer(preset("debug", VOCAB, sliding_window=window, modality_experts=True)).eval()
    full = Transformer(preset("debug", VOCAB, modality_experts=True)).eval()
    full.load_state_dict(local.state_dict())
    ids, pos, modality = batch(B=2, L=L)
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] + 1) % VOCAB
    with torch.no_grad():
        a, b = local(ids, pos, modality), local(changed, pos, modality)
        # a token 2 layers × 3 tokens past the change can no longer see it, through any path
        torch.testing.assert_close(a[:, 2 * (window - 1) + 1 :], b[:, 2 * (window - 1) + 1 :])
        assert not torch.allclose(a[:, 2 * (window - 1)], b[:, 2 * (window - 1)])
        f = full(ids, pos, modality)
        torch.testing.assert_close(a[:, :window], f[:, :window])  # inside the window: full attention
        assert not torch.allclose(a[:, window:], f[:, window:], atol=1e-4)
        # decoding through the cache (prefill, then one token at a time, then decode_step) gives the same
        cache = KVCache(local.config, batch_size=2, max_len=L)
        steps = [local(ids[:, :6], pos[:, :6], modality[:, :6], cache=cache)]
        for i in range(6, 10):
            steps.append(local(ids[:, i : i + 1], pos[:, i : i + 1], modality[:, i : i + 1], cache=cache))
        for i in range(10, L):
            logits = local.decode_step(ids[:, i : i + 1], pos[:, i : i + 1], modality[:, i : i + 1],
                                       torch.ones(2, 1, dtype=torch.bool), cache, torch.tensor([i]))  # fmt: skip
            cache.length += 1
            steps.append(logits[:, None])
    torch.testing.assert_close(torch.cat(steps, 1), a, atol=1e-5, rtol=1e-5)


def test_local_and_global_layers():
    config = preset("debug", VOCAB, n_layers=4, sliding_window=8, full_attention_every=2)
    assert [config.is_local(i) for i in range(4)] == [True, False, True, False]
    assert not preset("debug", VOCAB).is_local(0)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    ids, pos, modality = batch(B=1, L=40)
    changed = ids.clone()
    changed[:, 0] += 1
    with torch.no_grad():  # a global layer carries the first token to the last, which local layers cannot
        assert not torch.allclose(model(ids, pos)[:, -1], model(changed, pos)[:, -1])
        loss = model(ids, pos).logsumexp(-1).mean()
    model.train()
    model(ids, pos).logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="sliding_window"):
        preset("debug", VOCAB, sliding_window=0)
    with pytest.raises(ConfigError, match="only applies with a sliding_window"):
        preset("debug", VOCAB, full_attention_every=2)
