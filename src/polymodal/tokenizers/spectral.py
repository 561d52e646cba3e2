"""Signal processing for the audio tokenizer: resampling, log-mel features and spectral losses.

Pure functions over tensors (legend: B = batch, S = samples, F = frames, M = mel bands); nothing
here knows about tokens or models.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from scipy.signal import resample_poly

from polymodal.content import Audio
from polymodal.errors import MediaError

SAMPLE_RATE = 16_000
MIN_INPUT_RATE = 4_000  # below this there is too little bandwidth left to call it audio


def to_16k_mono(audio: Audio) -> torch.Tensor:
    """Mix to mono and resample to 16 kHz (polyphase, anti-aliased): ``[S]`` float32."""
    if audio.sample_rate < MIN_INPUT_RATE:
        raise MediaError(
            f"sample rate {audio.sample_rate} Hz is too low to use (need at least {MIN_INPUT_RATE} Hz)",
            source=audio.source,
        )
    mono = audio.to_mono().waveform[0]
    if audio.sample_rate != SAMPLE_RATE:
        ratio = Fraction(SAMPLE_RATE, audio.sample_rate)
        mono = resample_poly(mono.astype(np.float64), ratio.numerator, ratio.denominator)
    return torch.from_numpy(np.clip(mono, -1.0, 1.0).astype(np.float32))


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int = SAMPLE_RATE, f_max: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale: ``[M, n_fft // 2 + 1]``, each row sums to 1."""
    f_max = f_max or sample_rate / 2

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mel_points = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(f_max)), n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bins[None] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[None]) / np.maximum(upper - centre, 1e-9)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters /= np.maximum(filters.sum(axis=1, keepdims=True), 1e-9)
    return torch.from_numpy(filters.astype(np.float32))


def stft_magnitude(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``[B, S]`` → magnitudes ``[B, n_fft // 2 + 1, F]`` (Hann window, centred frames)."""
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    # |z| has an undefined gradient at 0 (digital silence); the epsilon keeps training finite.
    return torch.sqrt(spec.real**2 + spec.imag**2 + 1e-10)


# Mel magnitudes are floored about 90 dB below a full-scale tone (whose peak is ~n_fft/4): quieter
# detail is inaudible, and a lower floor lets the difference between digital silence and faint
# noise dominate distances and losses.
MEL_FLOOR = 1e-2


def log_mel(wave: torch.Tensor, filters: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``[B, S]`` → natural-log mel magnitudes ``[B, M, F]`` (floored at ``MEL_FLOOR``)."""
    return torch.log(torch.clamp(filters @ stft_magnitude(wave, n_fft, hop), min=MEL_FLOOR))


def multi_resolution_stft_loss(
    estimate: torch.Tensor,
    target: torch.Tensor,
    resolutions: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512)),
) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over several STFT sizes."""
    total = estimate.new_zeros(())
    for n_fft, hop in resolutions:
        est, ref = stft_magnitude(estimate, n_fft, hop), stft_magnitude(target, n_fft, hop)
        convergence = torch.linalg.norm(ref - est) / torch.clamp(torch.linalg.norm(ref), min=1e-7)
        log_l1 = torch.mean(torch.abs(torch.log(est + 1e-5) - torch.log(ref + 1e-5)))
        total = total + convergence + log_l1
    return total / len(resolutions)


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = torch.sum((reference - estimate) ** 2).item()
    signal = torch.sum(reference**2).item()
    return float("inf") if noise == 0 else 10.0 * math.log10(max(signal, 1e-12) / noise)
