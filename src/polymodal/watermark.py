"""Keyed, invisible watermarks on the images and audio a model generates, and their detection.

Both are zero-bit spread-spectrum marks: a pseudo-random ±1 pattern drawn from a secret key is added
faintly to the media, and detection correlates the media with the key's pattern. The score is a
z-score (under "not marked with this key" it is close to a standard normal); a file is called marked
above :data:`THRESHOLD`, set from the false-positive measurements in ``docs/watermark.md``.

* Images: the pattern is a grid of 4 × 4-pixel cells of ±``strength`` added to the luma (chroma
  untouched), anchored at the top-left corner of a fixed 256 × 256 canvas. Detection takes a
  high-passed luma (the picture's own shapes removed), and correlates it with the pattern at every
  offset up to a quarter of the picture (so a crop is found) and at scales ×1 and ×2 (so a picture
  resized to half is found), all offsets at once through the FFT; the score is the best z-score.
* Audio: the magnitudes of the 500 Hz – 4 kHz band of a 16 kHz STFT are multiplied by
  ``1 ± strength`` following a pattern over frequency and a 16-block time period (a block = 2 hops of
  16 ms); detection whitens the log-magnitudes and correlates them with the pattern at every cyclic
  time shift, so a clip cut anywhere, or re-encoded, is still found.

No library does this job here: ``invisible-watermark`` needs OpenCV and is not robust to resizing, and
audio marks (AudioSeal) are neural models to download. These marks are not cryptographically secure:
anyone who knows the key can find and remove the pattern, and a strong enough edit removes it without
the key. What survives which edit, and at what cost in quality, is measured in ``docs/watermark.md``.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image as PILImage
from scipy.ndimage import uniform_filter

from polymodal.content import Audio, Image

THRESHOLD = 5.0  # z-score above which media is called marked (see docs/watermark.md)
DEFAULT_KEY = "polymodal"  # a public key: set your own (ServeConfig.watermark_key) so only you can detect
CELL = 4  # image pattern cell, pixels
CANVAS = 256  # image pattern size, pixels (larger pictures repeat it)
RATE = 16_000
N_FFT, HOP, BLOCK, PERIOD = 512, 256, 2, 16  # audio STFT, frames per pattern block, blocks per period
BAND = (16, 128)  # STFT bins 500 Hz – 4 kHz


def _rng(key: str, kind: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"polymodal-watermark/{kind}/{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _image_pattern(key: str, height: int, width: int) -> np.ndarray:
    """±1 cells of CELL pixels, tiled from a CANVAS × CANVAS pattern, cropped to ``height × width``."""
    cells = _rng(key, "image").choice([-1.0, 1.0], size=(CANVAS // CELL, CANVAS // CELL))
    canvas = np.kron(cells, np.ones((CELL, CELL)))
    reps = (-(-height // CANVAS), -(-width // CANVAS))
    return np.tile(canvas, reps)[:height, :width]


def mark_image(image: Image, key: str = DEFAULT_KEY, strength: float = 3.0) -> Image:
    """``image`` with the key's pattern added to its luma (±``strength`` of 255 per pixel)."""
    rgb = np.asarray(image.pixels, dtype=np.float32)
    pattern = _image_pattern(key, *rgb.shape[:2])[..., None] * strength
    marked = np.clip(np.round(rgb + pattern), 0, 255).astype(np.uint8)  # equal RGB shift = luma only
    return Image(PILImage.fromarray(marked), source=image.source, detail=image.detail)


def _high_pass(x: np.ndarray) -> np.ndarray:
    return x - uniform_filter(x, 2 * CELL + 1, mode="reflect")


def _luma_residual(pixels: PILImage.Image) -> np.ndarray:
    """Luma minus its local mean, over its local spread: the picture's own shapes and shading mostly
    removed, and textured or edged areas weighing no more than flat ones."""
    r = _high_pass(np.asarray(pixels.convert("L"), dtype=np.float32))
    return r / np.sqrt(uniform_filter(r * r, 4 * CELL + 1, mode="reflect") + 4.0)


def image_score(image: Image, key: str = DEFAULT_KEY) -> float:
    """The best z-score of the key's pattern in ``image`` over offsets (crops) and scales ×1, ×2."""
    best = -np.inf
    for scale in (1, 2):
        pixels = image.pixels
        if scale != 1:
            pixels = pixels.resize((pixels.width * scale, pixels.height * scale), PILImage.BICUBIC)
        r = _luma_residual(pixels)
        h, w = r.shape
        if h < 4 * CELL or w < 4 * CELL:
            continue
        shift_h, shift_w = h // 4 + 1, w // 4 + 1  # a crop may have removed up to a quarter
        pattern = _image_pattern(key, h + shift_h, w + shift_w)
        # the high-passed pattern, as detection sees a marked picture's
        filtered = _high_pass(pattern)
        size = (h + shift_h + h, w + shift_w + w)
        spectrum = np.fft.rfft2(filtered, size) * np.conj(np.fft.rfft2(r - r.mean(), size))
        corr = np.fft.irfft2(spectrum, size)[:shift_h, :shift_w]  # corr[dy, dx] = Σ r · pattern[dy:, dx:]
        energy = np.sqrt(np.sum((r - r.mean()) ** 2) * np.mean(filtered**2) * h * w)
        cells = h * w / CELL**2  # independent samples: one per pattern cell
        best = max(best, float((corr / energy).max() * np.sqrt(cells)))
    return best if np.isfinite(best) else 0.0


def _stft(wave: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    return torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).numpy()


def _istft(spectrum: np.ndarray, length: int) -> np.ndarray:
    import torch

    s = torch.from_numpy(spectrum)
    return torch.istft(s, N_FFT, HOP, window=torch.hann_window(N_FFT), length=length).numpy()


def _audio_pattern(key: str) -> np.ndarray:
    return _rng(key, "audio").choice([-1.0, 1.0], size=(BAND[1] - BAND[0], PERIOD))


def _mono16k(audio: Audio) -> np.ndarray:
    from polymodal.tokenizers.spectral import to_16k_mono

    return to_16k_mono(audio).numpy()


def mark_audio(audio: Audio, key: str = DEFAULT_KEY, strength: float = 0.1, *, offset: int = 0) -> Audio:
    """``audio`` (as 16 kHz mono) with the key's pattern on its 500 Hz – 4 kHz magnitudes. ``offset``:
    where this piece starts in a longer clip (samples at 16 kHz), so that pieces marked one by one as they
    are streamed carry the pattern of the whole clip."""
    wave = _mono16k(audio)
    if len(wave) < N_FFT:
        return Audio(wave[None], RATE, source=audio.source)
    spectrum = _stft(wave)
    blocks = (offset // HOP + np.arange(spectrum.shape[1])) // BLOCK % PERIOD
    gain = 1 + strength * _audio_pattern(key)[:, blocks]
    spectrum[BAND[0] : BAND[1]] *= gain
    marked = np.clip(_istft(spectrum, len(wave)), -1, 1).astype(np.float32)
    return Audio(marked[None], RATE, source=audio.source)


def audio_score(audio: Audio, key: str = DEFAULT_KEY) -> float:
    """The best z-score of the key's pattern in ``audio`` over cyclic time shifts (cuts)."""
    wave = _mono16k(audio)
    if len(wave) < N_FFT * 2:
        return 0.0
    magnitude = np.abs(_stft(wave)[BAND[0] : BAND[1]])
    power = (magnitude**2).mean(axis=0)
    heard = power > 1e-4 * power.max()  # frames louder than -40 dB of the loudest: silence holds no mark
    if heard.sum() < 2 * BLOCK:
        return 0.0
    band = np.log(magnitude + 1e-4)
    band -= uniform_filter(band, size=(7, 1), mode="reflect")  # the spectral envelope and harmonics, mostly
    band -= band.mean(axis=0, keepdims=True)
    band[:, ~heard] = 0.0
    band /= band[:, heard].std() + 1e-9
    cells = band.shape[0] * int(heard.sum())
    pattern, frames = _audio_pattern(key), band.shape[1]
    best = -np.inf
    for start in range(BLOCK):  # the cut may fall inside a block
        for shift in range(PERIOD):
            index = ((np.arange(frames) + start) // BLOCK + shift) % PERIOD
            z = float(np.sum(band * pattern[:, index]) / np.sqrt(cells))
            best = max(best, z)
    return best


def score(part: Image | Audio, key: str = DEFAULT_KEY) -> float:
    return image_score(part, key) if isinstance(part, Image) else audio_score(part, key)


def mark(part: Image | Audio, key: str = DEFAULT_KEY) -> Image | Audio:
    return mark_image(part, key) if isinstance(part, Image) else mark_audio(part, key)


__all__ = ["DEFAULT_KEY", "THRESHOLD", "audio_score", "image_score", "mark", "mark_audio", "mark_image", "score"]
