"""Real handwritten digits: scikit-learn's 1,797 8x8 scans (bundled with the package, no download).

Each image is grey levels 0-16 (16 = ink). :func:`render_digit` draws it as dark ink on white and
enlarges it without interpolation, so every 8x8 cell of the result is one original pixel
(``255 - round(level * 255 / 16)``) and the scan can be recovered exactly.

Splits own their images: a fixed permutation (independent of any user seed) gives 80 % of the
scans to ``train``, 10 % to ``valid`` and 10 % to ``test``, so evaluation never shows a digit
image seen in training.

This module knows nothing about scenes, speech or documents.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import PIL.Image

from polymodal.content import Image
from polymodal.data.shapes.seeds import SPLITS, check_split

DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_PERMUTATION_SEED = 0xD161  # fixed forever: changing it would move images between splits


@lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [1797, 8, 8] with levels 0-16, labels int64 [1797])``."""
    from sklearn.datasets import load_digits as sklearn_digits  # sklearn is slow to import

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)
    images.flags.writeable = False
    labels = bunch.target.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


@lru_cache(maxsize=len(SPLITS))
def split_indices(split: str) -> np.ndarray:
    """Indices (into :func:`load_digits`) of the scans that belong to ``split``, sorted."""
    part = check_split(split)
    n = len(load_digits()[1])
    order = np.random.default_rng(_PERMUTATION_SEED).permutation(n)
    bounds = np.rint(np.cumsum((0.0, *_SPLIT_FRACTIONS)) * n).astype(int)
    chosen = np.sort(order[bounds[part] : bounds[part + 1]])
    chosen.flags.writeable = False
    return chosen


def render_digit(index: int, *, size: int = 64) -> Image:
    """Scan ``index`` as a ``size`` x ``size`` RGB image, dark ink on white, enlarged by pixel
    replication."""
    levels = load_digits()[0][index]
    grey = np.rint(255.0 - levels.astype(np.float64) * 255.0 / 16.0).astype(np.uint8)
    pixels = PIL.Image.fromarray(grey, "L").resize((size, size), PIL.Image.Resampling.NEAREST)
    return Image(pixels.convert("RGB"), source=f"sklearn:digits[{index}]")
