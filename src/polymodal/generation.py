"""Any-to-any generation: prompts of any mix of parts in, text, an image or audio out.

``generate(run, prompts, output=...)`` tokenizes the prompts, decodes with a KV cache, and masks
every step's logits with a *modality grammar* so that the output always decodes:

* ``text``: text ids only, until ``<|end|>`` / ``<|eos|>``, a stop string or the token limit;
* ``image``: ``<|image|>``, one of the vocabulary's grid tokens, exactly H×W image codes, ``<|/image|>``;
* ``audio``: ``<|audio|>``, at least one audio code, more until ``<|/audio|>`` or the length cap.

Image and audio can use classifier-free guidance: the prompt with and without its conditioning run
as one batch and the logits are mixed ``uncond + scale · (cond − uncond)``. Positions of generated
tokens follow the same rules as :mod:`polymodal.positions`, so the output re-encodes identically.

``stream(...)`` yields events (text deltas, a finished image or audio clip, the end) for servers.
Knows nothing of HTTP or files: it returns content parts.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from polymodal import positions as P
from polymodal import vocab as V
from polymodal.content import Document, Message, Part, Text
from polymodal.content.document import drop_conditioning
from polymodal.errors import ConfigError, PolymodalError
from polymodal.model.fusion import LateFusion, MediaInputs, late_fusion_batch
from polymodal.model.transformer import KVCache, Transformer
from polymodal.run import Run
from polymodal.tokenizers.base import Timed, TokenSpan
from polymodal.tokenizers.document import part_modality
from polymodal.tokenizers.sequence import TokenBatch, TokenSequence, pad_batch
from polymodal.tokenizers.spectral import SAMPLE_RATE
from polymodal.train.losses import next_token_losses
from polymodal.vocab import Vocabulary

Output = Literal["text", "image", "audio"]


class DirectionNotSupportedError(PolymodalError):
    """The run never learned to produce this output from these inputs."""


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    max_new_tokens: int = 256  # text: new tokens; image: ignored (the grid fixes it); audio: see below
    max_audio_seconds: float = 10.0
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    guidance_scale: float = 1.0  # classifier-free guidance for image/audio; 1: off
    grid: tuple[int, int] | None = None  # force an image grid (else the model chooses among the vocabulary's)
    stop: tuple[str, ...] = ()  # text stop strings (not included in the output)
    audio_chunk: int = 0  # audio: with N > 0, stream() also yields the clip as it is written, every N codes

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or self.guidance_scale < 0:
            raise ConfigError("sampling: max_new_tokens >= 1, temperature >= 0 and guidance_scale >= 0 are required")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling: top_p must be in (0, 1], got {self.top_p}")
        if self.audio_chunk < 0:
            raise ConfigError(f"sampling: audio_chunk must be >= 0, got {self.audio_chunk}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"sampling: top_k must be >= 1, got {self.top_k}")


@dataclass
class Generation:
    part: Part
    ids: list[int]  # the generated ids, delimiters included
    finish_reason: str  # "stop", "length" or "complete" (a media span closed)
    prompt_tokens: int = 0
    # The mean log-probability of the chosen tokens under the model's distribution (temperature 1, what
    # the output grammar allows): how sure the model was of what it wrote (a cascade's confidence).
    mean_logprob: float = 0.0


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True)
class PartDone:
    index: int
    part: Part


@dataclass(frozen=True, eq=False)
class AudioDelta:
    """The next samples of a clip still being written (``SamplingConfig.audio_chunk``); the deltas of a
    row put together are its finished clip (the :class:`PartDone` that follows them)."""

    index: int
    samples: Any  # float32 numpy array, mono
    sample_rate: int


@dataclass(frozen=True)
class Finished:
    index: int
    generation: Generation


Event = TextDelta | AudioDelta | PartDone | Finished


# -- the modality grammar ----------------------------------------------------------------------------


@dataclass
class _Row:
    """Per-prompt decoding state: what the grammar allows next, and where the next token sits."""

    output: Output
    index: int  # running position index for the next token
    ids: list[int] = field(default_factory=list)
    grid: tuple[int, int] | None = None
    media_start: int = 0  # position of the first code of the current media span
    codes: int = 0
    done: bool = False
    finish_reason: str = "length"
    logprob: float = 0.0  # sum over the chosen tokens


class Grammar:
    """Which ids may come next for each output kind; positions of the tokens that do."""

    def __init__(self, vocab: Vocabulary, sampling: SamplingConfig, audio_rate: float | None) -> None:
        self.vocab, self.sampling = vocab, sampling
        self.audio_rate = audio_rate
        size = vocab.size
        self.text_mask = torch.zeros(size, dtype=torch.bool)
        if vocab.has_modality("text"):
            r = vocab.range("text")
            self.text_mask[r.start : r.stop] = True
        self.text_mask[[vocab.special_id(V.END_OF_TURN), vocab.eos_id]] = True
        self.grid_ids = {vocab.grid_id(*g): g for g in vocab.grids}
        if sampling.grid is not None:
            if sampling.grid not in vocab.grids:
                raise ConfigError(f"grid {sampling.grid} has no grid token in this vocabulary ({vocab.grids})")
            self.grid_ids = {vocab.grid_id(*sampling.grid): sampling.grid}

        # Every mask a step can need, built once (allowed() runs for every row at every step).
        special = vocab.special_id
        self.masks = {
            "image_start": self._only([special(V.IMAGE_START)]),
            "grid": self._only(list(self.grid_ids)),
            "image_end": self._only([special(V.IMAGE_END)]),
            "audio_start": self._only([special(V.AUDIO_START)]),
            "audio_end": self._only([special(V.AUDIO_END)]),
        }
        for modality in ("image", "audio"):
            if vocab.has_modality(modality):
                r = vocab.range(modality)
                self.masks[modality] = self._only(range(r.start, r.stop))
        if "audio" in self.masks:
            self.masks["audio_or_end"] = self.masks["audio"] | self.masks["audio_end"]
        self.audio_cap = max(1, int(sampling.max_audio_seconds * (audio_rate or 25.0)))

    def max_tokens(self, output: Output) -> int:
        """The most tokens an output can take: text's limit, or a whole media span with its delimiters."""
        if output == "image":
            return 3 + max(h * w for h, w in self.grid_ids.values())
        if output == "audio":
            return 2 + self.audio_cap
        return self.sampling.max_new_tokens

    def _only(self, ids: Sequence[int]) -> torch.Tensor:
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        mask[list(ids)] = True
        return mask

    def allowed(self, row: _Row) -> torch.Tensor:
        if row.output == "text":
            return self.text_mask
        if row.output == "image":
            if not row.ids:
                return self.masks["image_start"]
            if row.grid is None:
                return self.masks["grid"]
            return self.masks["image"] if row.codes < row.grid[0] * row.grid[1] else self.masks["image_end"]
        if not row.ids:
            return self.masks["audio_start"]
        if row.codes >= self.audio_cap:
            return self.masks["audio_end"]
        return self.masks["audio_or_end"] if row.codes > 0 else self.masks["audio"]

    def position(self, row: _Row, token: int) -> list[int]:
        """The (t, h, w) of ``token`` placed next in ``row`` (before the row is advanced)."""
        if row.output == "image" and row.grid is not None and row.codes < row.grid[0] * row.grid[1]:
            h, w = divmod(row.codes, row.grid[1])
            p = row.media_start
            return [p, p + h, p + w]
        if row.output == "audio" and row.ids and token != self.vocab.special_id(V.AUDIO_END):
            t = row.media_start + int(
                P.seconds_to_units(row.codes / (self.audio_rate or 25.0), self.vocab.time_units_per_second)
            )
            return [t, t, t]
        return [row.index] * 3

    def advance(self, row: _Row, token: int, position: list[int]) -> None:
        row.ids.append(token)
        row.index = max(row.index, max(position) + 1)
        if row.output == "text":
            if token in (self.vocab.eos_id, self.vocab.special_id(V.END_OF_TURN)):
                row.done, row.finish_reason = True, "stop"
            return
        if token in self.grid_ids:
            row.grid = self.grid_ids[token]
            row.media_start = row.index
        elif token == self.vocab.special_id(V.AUDIO_START):
            row.media_start = row.index
        elif token in (self.vocab.special_id(V.IMAGE_END), self.vocab.special_id(V.AUDIO_END)):
            row.done, row.finish_reason = True, "complete"
        elif row.ids[0] != token:
            row.codes += 1


# -- sampling ----------------------------------------------------------------------------------------


def sample(logits_BV: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One id per row from masked logits (``-inf`` where not allowed)."""
    if sampling.temperature == 0:
        return logits_BV.argmax(dim=-1)
    logits = logits_BV / sampling.temperature
    if sampling.top_k is not None:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs > sampling.top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# -- the loop ----------------------------------------------------------------------------------------


def _check_direction(run: Run, prompt: Document, output: Output) -> None:
    inputs = {part_modality(p) for p in prompt.parts} or {"text"}
    if not run.supports(inputs, output):
        raise DirectionNotSupportedError(
            f"this run was not trained for {'+'.join(sorted(inputs))}->{output} "
            f"(it declares: {', '.join(run.directions) or 'nothing'}); pass check_direction=False to try anyway"
        )


def _prompt_sequence(run: Run, prompt: Document) -> TokenSequence:
    return run.tokenizer.encode(prompt, add_generation_prompt=prompt.is_chat, add_eos=False)


def _unconditional(run: Run, prompt: Document) -> TokenSequence:
    # What the model saw when conditioning was dropped in training (see drop_conditioning).
    empty = drop_conditioning(prompt, keep_last=False)
    return run.tokenizer.encode(empty, add_generation_prompt=prompt.is_chat, add_eos=False)


def stream(
    run: Run,
    prompts: Sequence[Document],
    *,
    output: Output = "text",
    sampling: SamplingConfig | None = None,
    check_direction: bool = True,
    use_cache: bool = True,
    compile: bool = False,
    cancelled: Container[int] = (),
    constraints: Sequence[Any | None] | None = None,
) -> Iterator[Event]:
    """Decode a batch of prompts, yielding text deltas as they come and each row's part and
    :class:`Finished` as soon as that row is done (rows that run out of budget finish last).

    ``cancelled`` holds the indices of rows whose output is no longer wanted; the caller may add to
    it while iterating (a server adds the requests whose clients went away): such a row stops at the
    next step and yields nothing more, and the batch stops once every row is done or cancelled.
    ``constraints`` gives text rows a :class:`polymodal.constrain.TextConstraint` each (or None): the
    tokens it allows are the only ones sampled (JSON that always parses, for instance).

    After the prompt, an early-fusion run decodes with :meth:`Transformer.decode_step`, whose shapes
    never change during a generation; ``compile=True`` runs it through ``torch.compile`` (a CUDA
    graph on a GPU): the first call of each batch size and cache bucket compiles (seconds), later
    ones reuse it — for servers and long or repeated generations."""
    sampling = sampling or SamplingConfig()
    if output not in ("text", "image", "audio"):
        raise ConfigError(f"output must be 'text', 'image' or 'audio', got {output!r}")
    if not prompts:
        return
    if constraints is not None and (len(constraints) != len(prompts) or output != "text" and any(constraints)):
        raise ConfigError("constraints: one per prompt (or None), for text outputs only")
    if isinstance(run.model, LateFusion) and output != "text":
        raise DirectionNotSupportedError(f"a late-fusion run writes text only, not {output}")
    if check_direction:
        for prompt in prompts:
            _check_direction(run, prompt, output)
    model, vocab = run.model, run.tokenizer.vocab
    device = next(model.parameters()).device
    audio_rate = run.tokenizer.tokenizer("audio").tokens_per_second if output == "audio" else None
    grammar = Grammar(vocab, sampling, audio_rate)
    sequences = [_prompt_sequence(run, p) for p in prompts]
    guided = output != "text" and sampling.guidance_scale != 1.0
    if guided:
        sequences += [_unconditional(run, p) for p in prompts]
    B = len(prompts)
    starts = [P.next_index(0, s.positions) for s in sequences]
    rows = [_Row(output, index=starts[b]) for b in range(B)]
    uncond_starts = starts[B:]
    budget = grammar.max_tokens(output)
    batch, media = _prompt_batch(run, sequences)
    batch = batch.to(device)
    media = media.to(device) if media is not None else None
    dtype = next(model.parameters()).dtype
    static = use_cache and isinstance(model, Transformer)  # one-token steps through decode_step
    capacity = batch.ids.shape[1] + budget + 1
    if static:  # a few cache sizes only, so that a compiled step is reused across generations
        capacity = -(-capacity // _CACHE_BUCKET) * _CACHE_BUCKET
    cache = _new_cache(model, len(sequences), capacity, device, dtype, reuse=compile) if use_cache else None
    decode_step = _decode_step(model, device, compile) if static else None
    generator = torch.Generator(device="cpu").manual_seed(sampling.seed) if sampling.seed is not None else None
    ids_all, pos_all, mask_all, mod_all = batch.ids, batch.positions, batch.attention_mask, batch.modality
    step_ids, step_pos, step_mask, step_mod = ids_all, pos_all, mask_all, mod_all
    slot = None  # the cache slot of a decode step's token (set with each step's inputs)
    text_sent = [""] * B
    finished = [False] * B
    audio_streams = None
    if output == "audio" and sampling.audio_chunk:
        audio_tokenizer = run.tokenizer.tokenizer("audio")
        incremental = hasattr(audio_tokenizer, "stream")
        audio_streams = [audio_tokenizer.stream() if incremental else _WholeClip(audio_tokenizer) for _ in range(B)]
        audio_first = vocab.range("audio").start
    try:
        with torch.no_grad():
            for _ in range(budget):
                if decode_step is not None and cache.length > 0:
                    cache.visible = None if compile else cache.length + 1
                    logits = decode_step(step_ids, step_pos, step_mod, step_mask, cache, slot)
                    cache.length += 1
                elif cache is not None:
                    extra = {"media": media} if media is not None and cache.length == 0 else {}
                    logits = model(step_ids, step_pos, step_mod, step_mask, cache=cache, **extra)[:, -1]
                else:
                    extra = {"media": _read_all(media, ids_all.shape[1])} if media is not None else {}
                    logits = model(ids_all, pos_all, mod_all, mask_all, **extra)[:, -1]
                logits = logits.float().cpu()
                if guided:
                    cond, uncond = logits[:B], logits[B:]
                    logits = uncond + sampling.guidance_scale * (cond - uncond)
                allowed = torch.stack([grammar.allowed(r) for r in rows])
                for b, constraint in enumerate(constraints or ()):
                    if constraint is not None and not rows[b].done:
                        keep = torch.zeros_like(allowed[b])
                        keep[list(constraint.allowed(rows[b].ids))] = True
                        allowed[b] &= keep
                        if not allowed[b].any():  # nothing the model may write fits: end the turn
                            allowed[b, vocab.special_id(V.END_OF_TURN)] = True
                allowed_logits = logits.masked_fill(~allowed, float("-inf"))
                tokens = sample(allowed_logits, sampling, generator)
                chosen = torch.log_softmax(allowed_logits, -1).gather(1, tokens[:, None])[:, 0].tolist()
                new_pos = []
                for b, row in enumerate(rows):
                    if not row.done and b in cancelled:
                        row.done, row.finish_reason, finished[b] = True, "cancelled", True
                    token = int(tokens[b]) if not row.done else vocab.pad_id
                    position = grammar.position(row, token) if not row.done else [row.index] * 3
                    if not row.done:
                        row.logprob += chosen[b]
                        grammar.advance(row, token, position)
                        if output == "text":
                            yield from _text_delta(run, b, row, text_sent, sampling)
                        if audio_streams is not None:
                            yield from _audio_delta(audio_streams[b], b, token - audio_first, row, sampling)
                        if row.done:
                            finished[b] = True
                            yield from _finished(run, b, row, text_sent[b], sampling, len(sequences[b]))
                    new_pos.append(position)
                if guided:  # the unconditional rows take the same tokens, shifted to their own positions
                    new_pos += [[v - starts[b] + uncond_starts[b] for v in new_pos[b]] for b in range(B)]
                    tokens = torch.cat([tokens, tokens])
                if all(r.done for r in rows):
                    break
                # The next step's inputs go to the device in one copy: [ids, t, h, w, modality, valid, slot].
                done = torch.tensor([r.done for r in rows] * (2 if guided else 1))
                slot_column = torch.full_like(tokens, cache.length if cache is not None else 0)
                columns = (
                    tokens,
                    *torch.tensor(new_pos, dtype=torch.long).T,
                    vocab.modality_of(tokens),
                    ~done,
                    slot_column,
                )
                step = torch.stack([c.long() for c in columns], 1).to(device)
                step_ids, step_pos, step_mod = step[:, :1], step[:, 1:4].view(-1, 1, 3), step[:, 4:5]
                step_mask, slot = step[:, 5:6].bool(), step[0, 6:7]
                if cache is None:  # without a cache every step re-reads the whole sequence
                    ids_all = torch.cat([ids_all, step_ids], 1)
                    pos_all = torch.cat([pos_all, step_pos], 1)
                    mask_all = torch.cat([mask_all, step_mask], 1)
                    mod_all = torch.cat([mod_all, step_mod], 1)
    finally:
        if cache is not None:
            cache.in_use = False  # free for the next generation
    for b, row in enumerate(rows):
        if not finished[b] and b not in cancelled:
            yield from _finished(run, b, row, text_sent[b], sampling, len(sequences[b]))


def _audio_delta(stream: Any, b: int, code: int, row: _Row, sampling: SamplingConfig) -> Iterator[AudioDelta]:
    """Feed a new audio code to the row's incremental decoder; yield its samples every ``audio_chunk``
    codes, and what is left when the clip closes."""
    if 0 <= code < stream.tokenizer.vocab_size:
        stream.add(code)
    if row.done or stream.ready >= sampling.audio_chunk:
        samples = stream.take(final=row.done)
        if len(samples):
            yield AudioDelta(b, samples, stream.sample_rate)


class _WholeClip:
    """For an audio tokenizer without an incremental decoder (``stream()``): one delta, the whole clip,
    when it closes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.codes, self.ready, self.sample_rate = tokenizer, [], 0, SAMPLE_RATE

    def add(self, code: int) -> None:
        self.codes.append(code)

    def take(self, *, final: bool = False) -> Any:
        if not final or not self.codes:
            return ()
        span = TokenSpan("audio", torch.tensor(self.codes), Timed(self.tokenizer.tokens_per_second))
        audio = self.tokenizer.decode(span)
        self.sample_rate = audio.sample_rate
        return audio.to_mono().waveform[0]


def _finished(run: Run, b: int, row: _Row, sent: str, sampling: SamplingConfig, prompt_tokens: int) -> Iterator[Event]:
    generation = _finish(run, row, sent, sampling, prompt_tokens)
    if row.output != "text":
        yield PartDone(b, generation.part)
    yield Finished(b, generation)


_CACHE_BUCKET = 128  # decode_step's caches hold a multiple of this many tokens


def _decode_step(model: Transformer, device: torch.device, compile: bool):  # noqa: ANN202
    """The model's decode step, with ``compile`` compiled once per model and kept on it."""
    if not compile:
        return model.decode_step
    compiled = model.__dict__.get("_compiled_decode_step")
    if compiled is None:
        # On a GPU the step becomes a CUDA graph: one replay per token instead of hundreds of launches.
        mode = "reduce-overhead" if device.type == "cuda" else None
        compiled = model.__dict__["_compiled_decode_step"] = torch.compile(model.decode_step, mode=mode, fullgraph=True)
    return compiled


def _new_cache(model: torch.nn.Module, rows: int, capacity: int, device: torch.device, dtype: torch.dtype, *,
               reuse: bool) -> KVCache:  # fmt: skip
    """A fresh KV cache; with ``reuse``, the model's previous one if it has the same size, emptied: its
    tensors keep their addresses, which a captured CUDA graph needs (new ones would mean capturing again)."""
    old = model.__dict__.get("_decode_cache") if reuse else None
    if old is not None and not old.in_use and old.valid.shape == (rows, capacity) and old.k[0].dtype == dtype:
        old.valid.zero_()
        old.length = 0
        old.in_use = True  # two generations interleaved (a server's streams) never share one
        return old
    cache = model.new_cache(rows, capacity, device=device, dtype=dtype)
    cache.in_use = True
    if reuse and (old is None or not old.in_use):
        if device.type == "cuda":
            for tensor in (*cache.k, *cache.v, cache.valid):
                torch._dynamo.mark_static_address(tensor)
        model.__dict__["_decode_cache"] = cache
    return cache


def _prompt_batch(run: Run, sequences: list[TokenSequence]) -> tuple[TokenBatch, MediaInputs | None]:
    """Left-padded prompts; for late fusion the text stream and its media stream."""
    if isinstance(run.model, LateFusion):
        text, media, _ = late_fusion_batch(sequences, run.tokenizer.vocab, side="left")
        return text, media
    return pad_batch(sequences, run.tokenizer.vocab.pad_id, side="left"), None


def _read_all(media: MediaInputs, length: int) -> MediaInputs:
    """Late fusion without a cache: generated tokens (past the prompt) read every media token of the prompt."""
    extra = length - media.visible.shape[1]
    if extra <= 0:
        return media
    everything = media.valid.sum(dim=1, keepdim=True).expand(-1, extra)
    return MediaInputs(media.ids, media.positions, media.valid, torch.cat([media.visible, everything], 1))


def _visible_text(run: Run, row: _Row, sampling: SamplingConfig) -> tuple[str, bool]:
    """The decoded text so far without special tokens, cut at the first stop string (and whether one hit)."""
    text_range = run.tokenizer.vocab.range("text")
    local = [i - text_range.start for i in row.ids if i in text_range]
    text = run.tokenizer.tokenizer("text").decode_ids(local) if local else ""
    cuts = [text.find(s) for s in sampling.stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _text_delta(run: Run, b: int, row: _Row, sent: list[str], sampling: SamplingConfig) -> Iterator[TextDelta]:
    text, stopped = _visible_text(run, row, sampling)
    if stopped:
        row.done, row.finish_reason = True, "stop"
    # Hold back a trailing U+FFFD (half a multi-byte character) and any text that could still
    # turn out to start a stop string.
    safe = text.rstrip("\ufffd")
    hold = max((len(s) - 1 for s in sampling.stop), default=0) if not row.done else 0
    ready = safe[: max(len(sent[b]), len(safe) - hold)] if not row.done else text
    if len(ready) > len(sent[b]) and ready.startswith(sent[b]):
        yield TextDelta(b, ready[len(sent[b]) :])
        sent[b] = ready


def _finish(run: Run, row: _Row, sent: str, sampling: SamplingConfig, prompt_tokens: int) -> Generation:
    if row.output == "text":
        text, _ = _visible_text(run, row, sampling)
        return Generation(Text(text), row.ids, row.finish_reason, prompt_tokens, _mean_logprob(row))
    if not row.done:
        raise PolymodalError(f"the {row.output} did not finish within its token budget")
    part = run.tokenizer.decode(row.ids).parts[0]
    return Generation(part, row.ids, row.finish_reason, prompt_tokens, _mean_logprob(row))


def _mean_logprob(row: _Row) -> float:
    return row.logprob / max(1, len(row.ids))


def generate(
    run: Run,
    prompts: Document | Sequence[Document],
    *,
    output: Output = "text",
    sampling: SamplingConfig | None = None,
    check_direction: bool = True,
    use_cache: bool = True,
    compile: bool = False,
) -> list[Generation]:
    """Generate one output per prompt (see the module docstring and :func:`stream`); returns them in
    prompt order."""
    prompts = [prompts] if isinstance(prompts, Document) else list(prompts)
    results: dict[int, Generation] = {}
    for event in stream(
        run, prompts, output=output, sampling=sampling, check_direction=check_direction, use_cache=use_cache,
        compile=compile,
    ):  # fmt: skip
        if isinstance(event, Finished):
            results[event.index] = event.generation
    return [results[i] for i in range(len(prompts))]


@torch.no_grad()
def option_scores(run: Run, prompts: Sequence[Document], options: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """For each prompt, the log-probability the run gives each of its options as the whole answer
    (answer tokens and ``<|end|>``), all options of all prompts in one batch: multiple choice scored
    by likelihood, as lm-evaluation-harness does. A chat prompt gets each option as the assistant's
    turn; a plain document gets it as its continuation (after a space when the prompt ends in text,
    directly after a picture or a sound, as a caption follows its picture)."""

    def answered(prompt: Document, option: str) -> Document:
        if prompt.is_chat:
            return Document([*prompt.messages, Message("assistant", (Text(option),))])
        last = prompt.parts[-1] if prompt.parts else None
        spaced = isinstance(last, Text) and last.text and not last.text[-1].isspace()
        return Document.of(*prompt.parts, Text(" " + option if spaced else option))

    chats = [answered(p, o) for p, opts in zip(prompts, options, strict=True) for o in opts]
    seqs = [run.tokenizer.encode(chat) for chat in chats]
    device = next(run.model.parameters()).device
    if isinstance(run.model, LateFusion):
        batch, media, _ = late_fusion_batch(seqs, run.tokenizer.vocab)
        batch, extra = batch.to(device), {"media": media.to(device)}
    else:
        batch, extra = pad_batch(seqs, run.tokenizer.vocab.pad_id).to(device), {}
    logits = run.model(batch.ids, batch.positions, batch.modality, batch.attention_mask, **extra)
    scores = -next_token_losses(logits, batch.ids, batch.loss_weight).cpu()
    return list(scores.split([len(o) for o in options]))


__all__ = [
    "AudioDelta", "DirectionNotSupportedError", "drop_conditioning", "Event", "Finished", "Generation", "Grammar",
    "PartDone", "SamplingConfig", "TextDelta", "generate", "option_scores", "sample", "stream",
]  # fmt: skip
