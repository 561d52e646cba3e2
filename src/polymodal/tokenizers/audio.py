"""The audio tokenizer: log-mel features → convolutional encoder → FSQ codes → STFT head → waveform.

Input is resampled to 16 kHz mono. Features are 80 log-mel bands on a 20 ms hop (50 frames/s);
the encoder halves that to **25 tokens per second** (one code per 40 ms, ``tokens_per_second``)
and quantizes each to one of ``prod(levels)`` codes. The decoder is Vocos-style: it predicts the
STFT magnitude and phase of every 20 ms frame and inverts them with ``torch.istft``, trained with a
multi-resolution STFT loss and a mel loss, so that codes come back as a waveform one can listen to.

Audio is padded with silence to a whole number of tokens (640 samples each); decoding ``n`` codes
gives exactly ``n × 640`` samples. This module knows nothing of the vocabulary or positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.content import Audio
from polymodal.errors import ConfigError, EmptyMediaError
from polymodal.tokenizers.base import Timed, TokenSpan
from polymodal.tokenizers.neural import NeuralTokenizer, config_from_dict, cycle_examples
from polymodal.tokenizers.quantizers import FSQuantizer
from polymodal.tokenizers.spectral import (
    SAMPLE_RATE,
    log_mel,
    mel_filterbank,
    multi_resolution_stft_loss,
    to_16k_mono,
)
from polymodal.tokenizers.training import TrainConfig, TrainResult, train_autoencoder


@dataclass(frozen=True, kw_only=True)
class AudioTokenizerConfig:
    n_mels: int = 80
    hop: int = 320  # samples per feature frame: 20 ms at 16 kHz
    n_fft: int = 1024  # window of the mel features
    stride: int = 2  # feature frames per token: 50 frames/s → 25 tokens/s
    width: int = 256
    blocks: int = 3  # ConvNeXt blocks on each side of the encoder's and decoder's resampling
    latent_channels: int = 16
    levels: tuple[int, ...] = (8, 5, 5, 5)
    head_n_fft: int = 1280  # the STFT the decoder predicts and inverts (4 × hop, as in Vocos)
    segment_seconds: float = 1.0  # training crop length

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        if self.stride not in (1, 2):
            raise ConfigError(f"audio tokenizer: stride must be 1 or 2, got {self.stride}")
        if self.head_n_fft < self.hop or self.n_fft < self.hop:
            raise ConfigError("audio tokenizer: n_fft and head_n_fft must be at least the hop")
        if self.width < 8 or self.latent_channels < 1 or self.n_mels < 8:
            raise ConfigError("audio tokenizer: width >= 8, latent_channels >= 1 and n_mels >= 8 are required")

    @property
    def samples_per_token(self) -> int:
        return self.hop * self.stride

    @property
    def tokens_per_second(self) -> float:
        return SAMPLE_RATE / self.samples_per_token

    @classmethod
    def from_dict(cls, data: dict) -> AudioTokenizerConfig:
        return config_from_dict(cls, data, "audio tokenizer")


def debug() -> AudioTokenizerConfig:
    """For tests: trains in seconds."""
    return AudioTokenizerConfig(width=64, blocks=1, latent_channels=8)


def tiny() -> AudioTokenizerConfig:
    """The CPU size: 25 tokens/s, 1,000 codes."""
    return AudioTokenizerConfig(width=128, blocks=2)


def base() -> AudioTokenizerConfig:
    """The GPU size: 25 tokens/s, 12,800 codes, a wider network."""
    return AudioTokenizerConfig(width=512, blocks=6, latent_channels=32, levels=(8, 8, 8, 5, 5))


_PRESETS = {"debug": debug, "tiny": tiny, "base": base}


def list_presets() -> list[str]:
    return list(_PRESETS)


def preset(name: str) -> AudioTokenizerConfig:
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown audio tokenizer preset {name!r}; available: {list_presets()}") from None


# -- the network ----------------------------------------------------------------------------------


class ConvNeXt1d(nn.Module):
    """Depthwise conv (k=7) → LayerNorm → 4× pointwise MLP, residual: the Vocos backbone block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, F]
        y = self.norm(self.depthwise(x).transpose(1, 2))
        return x + self.mlp(y).transpose(1, 2)


class AudioAutoencoder(nn.Module):
    """waveform [B, S] (S a multiple of samples_per_token) → codes [B, S / samples_per_token] → waveform."""

    def __init__(self, config: AudioTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        c, s = config.width, config.stride
        self.register_buffer("mel", mel_filterbank(config.n_fft, config.n_mels), persistent=False)
        resample_down = nn.Conv1d(c, c, 2 * s, stride=s, padding=s // 2) if s > 1 else nn.Identity()
        resample_up = nn.ConvTranspose1d(c, c, 2 * s, stride=s, padding=s // 2) if s > 1 else nn.Identity()
        self.encoder = nn.Sequential(
            nn.Conv1d(config.n_mels, c, 3, padding=1),
            *[ConvNeXt1d(c) for _ in range(config.blocks)],
            resample_down,
            *[ConvNeXt1d(c) for _ in range(config.blocks)],
            nn.Conv1d(c, config.latent_channels, 1),
        )
        self.quantizer = FSQuantizer(config.levels, config.latent_channels)
        self.decoder = nn.Sequential(
            nn.Conv1d(config.latent_channels, c, 3, padding=1),
            *[ConvNeXt1d(c) for _ in range(config.blocks)],
            resample_up,
            *[ConvNeXt1d(c) for _ in range(config.blocks)],
        )
        self.head = nn.Conv1d(c, 2 * (config.head_n_fft // 2 + 1), 1)  # log-magnitude and phase per bin
        self.register_buffer("window", torch.hann_window(config.head_n_fft), persistent=False)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, M, F]`` with exactly ``stride`` frames per token (the last centred frame dropped)."""
        return log_mel(wave, self.mel, self.config.n_fft, self.config.hop)[..., :-1]

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.encoder(self.features(wave)))[1]

    def synthesize(self, latents: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``[B, D, T]`` → waveform ``[B, T × samples_per_token]``."""
        hidden = self.decoder(latents)
        log_magnitude, phase = self.head(hidden).chunk(2, dim=1)
        # exp of a clamped log keeps the magnitude finite early in training (as Vocos does)
        spectrum = torch.polar(torch.exp(log_magnitude.clamp(max=8.0)), phase)
        length = latents.shape[-1] * self.config.samples_per_token
        cfg = self.config
        return torch.istft(spectrum, cfg.head_n_fft, cfg.hop, window=self.window, center=True, length=length)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.synthesize(self.quantizer.decode_codes(codes))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.synthesize(self.quantizer(self.encoder(self.features(wave)))[0])


# -- the tokenizer ----------------------------------------------------------------------------------


class AudioTokenizer(NeuralTokenizer):
    """Audio ⇄ a stream of FSQ codes at ``tokens_per_second``; local ids ``0 .. prod(levels)-1``."""

    name: ClassVar[str] = "audio-fsq"
    modality: ClassVar[str] = "audio"
    config_cls = AudioTokenizerConfig
    model_cls = AudioAutoencoder

    @property
    def tokens_per_second(self) -> float:
        return self.config.tokens_per_second

    def prepare(self, audio: Audio) -> torch.Tensor:
        """16 kHz mono samples padded with silence to a whole number of tokens: ``[S]``."""
        wave = to_16k_mono(audio)
        if wave.numel() == 0:
            raise EmptyMediaError("audio has no samples after resampling", source=audio.source)
        step = self.config.samples_per_token
        return F.pad(wave, (0, -wave.numel() % step))

    @torch.no_grad()
    def encode(self, part: Audio) -> TokenSpan:
        if not isinstance(part, Audio):
            raise TypeError(f"the audio tokenizer encodes Audio parts, got {type(part).__name__}")
        codes = self.model.encode(self.prepare(part).unsqueeze(0).to(self.device))[0].cpu()
        return TokenSpan("audio", codes, Timed(self.tokens_per_second))

    @torch.no_grad()
    def decode(self, span: TokenSpan) -> Audio:
        if len(span) == 0:
            raise EmptyMediaError("cannot decode an audio span with no codes")
        wave = self.model.decode(span.ids.reshape(1, -1).to(self.device))[0].cpu()
        return Audio(wave.clamp(-1, 1).numpy(), SAMPLE_RATE)

    @torch.no_grad()
    def code_appearance(self) -> torch.Tensor:
        """``[codes, n_mels]``: the log-mel spectrum of each code, decoded in a run of five of itself
        (the middle token's frames, so that the decoder's context is the code alone)."""
        n = self.vocab_size
        codes = torch.arange(n, device=self.device).view(n, 1).expand(n, 5)
        waves = torch.cat([self.model.decode(chunk) for chunk in codes.split(256)])
        mel = self.model.features(waves)  # [n, M, 5 · stride]
        s = self.config.stride
        return mel[:, :, 2 * s : 3 * s].mean(-1).cpu()

    def stream(self, context: int | None = None) -> AudioStream:
        """An incremental decoder: codes go in as they are generated, samples come out in chunks."""
        return AudioStream(self, context)

    def decoder_context(self) -> int:
        """How many codes on each side can change a code's samples: the decoder's receptive field (its
        convolutions at the code rate, then at the frame rate, then the inverse STFT's window)."""
        c = self.config
        at_codes = 1 + 3 * c.blocks + (1 if c.stride > 1 else 0)  # a k=3 conv, k=7 blocks, the upsampler
        at_frames = 3 * c.blocks + c.head_n_fft // (2 * c.hop) + 1  # k=7 blocks, the STFT window's half
        return at_codes + -(-at_frames // c.stride)

    # -- training ---------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        clips: Iterable[Audio],
        *,
        config: AudioTokenizerConfig | str = "tiny",
        train: TrainConfig | None = None,
        held_out: Sequence[Audio] = (),
        init: AudioTokenizer | None = None,
        adapt: str = "all",
    ) -> tuple[AudioTokenizer, TrainResult]:
        """Train on random crops of ``clips`` (a list is cycled; a stream is read once).

        With ``init``, continue training that tokenizer (its config, its vocabulary) on these clips:
        ``adapt`` is what trains (see :meth:`NeuralTokenizer.trainable_copy`)."""
        config = init.config if init is not None else preset(config) if isinstance(config, str) else config
        train = train or TrainConfig()
        torch.manual_seed(train.seed)  # the seed fixes the initial weights too
        tokenizer = cls(config, init.trainable_copy(adapt)) if init is not None else cls(config)
        batches = _batches(tokenizer, clips, train.batch_size, seed=train.seed)
        mel = tokenizer.model.mel

        def loss_fn(net: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            recon = net(batch)
            mel_l1 = torch.mean(
                torch.abs(log_mel(recon, mel, config.n_fft, config.hop) - log_mel(batch, mel, config.n_fft, config.hop))
            )
            stft = multi_resolution_stft_loss(recon, batch)
            loss = mel_l1 + stft
            return loss, {"loss": loss.item(), "mel": mel_l1.item()}

        evaluate = (lambda net: evaluate_mel_distance(cls(config, net), held_out)) if held_out else None
        result = train_autoencoder(
            tokenizer.model.train(), batches, loss_fn, train, evaluate=evaluate, description="audio tokenizer"
        )
        return cls(config, result.model), result

    def held_out_figures(self, clips: Sequence[Audio]) -> dict[str, float]:
        return evaluate_mel_distance(self, clips)


class AudioStream:
    """Decodes a growing list of codes a chunk at a time. :meth:`take` returns the samples of every
    code that has ``context`` codes after it (the decoder's receptive field), decoded over a window with
    ``context`` codes of history, so the chunks put together are the whole clip's decode (to float
    rounding); :meth:`take` with ``final`` returns the rest once the clip has ended."""

    sample_rate = SAMPLE_RATE

    def __init__(self, tokenizer: AudioTokenizer, context: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.context = tokenizer.decoder_context() if context is None else context
        self.codes: list[int] = []
        self.sent = 0  # codes whose samples were returned

    def add(self, code: int) -> None:
        self.codes.append(int(code))

    @property
    def ready(self) -> int:
        """Codes whose samples :meth:`take` would return now."""
        return max(0, len(self.codes) - self.context - self.sent)

    @torch.no_grad()
    def take(self, *, final: bool = False) -> np.ndarray:
        end = len(self.codes) if final else len(self.codes) - self.context
        if end <= self.sent:
            return np.zeros(0, np.float32)
        start = max(0, self.sent - self.context)
        codes = torch.tensor(self.codes[start:], device=self.tokenizer.device).view(1, -1)
        wave = self.tokenizer.model.decode(codes)[0].clamp(-1, 1).cpu().numpy()
        step = self.tokenizer.config.samples_per_token
        chunk = wave[(self.sent - start) * step : (end - start) * step]
        self.sent = end
        return chunk


def evaluate_mel_distance(tokenizer: AudioTokenizer, clips: Sequence[Audio]) -> dict[str, float]:
    """Mean absolute log-mel difference (nats) of reconstructions on held-out clips, beside a baseline.

    The baseline is a fixed, non-learned code at the same rate: each token keeps only its loudness
    (the mean log-mel of its frames, unquantized), drawn over one average spectral shape pooled
    from all the held-out clips. A tokenizer that learned nothing about timbre scores no better.
    """
    model, cfg = tokenizer.model, tokenizer.config
    with torch.no_grad():
        references = [model.features(tokenizer.prepare(clip).unsqueeze(0))[0] for clip in clips]
        recons = [model.features(model(tokenizer.prepare(clip).unsqueeze(0)))[0] for clip in clips]
        pooled = torch.cat(references, dim=1).mean(dim=1, keepdim=True)  # [M, 1]
        shape = pooled - pooled.mean()
        ours, baseline = [], []
        for reference, recon in zip(references, recons, strict=True):
            ours.append(torch.mean(torch.abs(recon - reference)).item())
            loudness = reference.mean(dim=0, keepdim=True).unflatten(1, (-1, cfg.stride)).mean(dim=2)
            envelope = shape + loudness.repeat_interleave(cfg.stride, dim=1)
            baseline.append(torch.mean(torch.abs(envelope - reference)).item())
    return {"mel_distance": float(np.mean(ours)), "envelope_mel_distance": float(np.mean(baseline))}


def _batches(
    tokenizer: AudioTokenizer, clips: Iterable[Audio], batch_size: int, *, seed: int
) -> Iterator[torch.Tensor]:
    """Endless batches of random ``segment_seconds`` crops (zero-padded when a clip is shorter)."""
    rng = np.random.default_rng(seed)
    length = (
        int(round(tokenizer.config.segment_seconds * tokenizer.tokens_per_second)) * tokenizer.config.samples_per_token
    )
    waves = _waves(tokenizer, clips, rng)
    while True:
        batch = []
        for _ in range(batch_size):
            wave = next(waves)
            if wave.numel() < length:
                wave = F.pad(wave, (0, length - wave.numel()))
            start = int(rng.integers(0, wave.numel() - length + 1))
            batch.append(wave[start : start + length])
        yield torch.stack(batch)


def _waves(tokenizer: AudioTokenizer, clips: Iterable[Audio], rng: np.random.Generator) -> Iterator[torch.Tensor]:
    if isinstance(clips, Sequence):
        clips = [tokenizer.prepare(c) for c in clips]  # resample once, not every epoch
        return cycle_examples(clips, rng, "audio")
    return (tokenizer.prepare(c) for c in cycle_examples(clips, rng, "audio"))


__all__ = [
    "AudioStream",
    "AudioTokenizer",
    "AudioTokenizerConfig",
    "base",
    "debug",
    "evaluate_mel_distance",
    "list_presets",
    "preset",
    "tiny",
]
