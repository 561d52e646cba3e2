"""Seeds and splits: what makes a shapes-world sample reproducible, and what keeps eval apart.

Every sample's random generator is derived from four things and nothing else::

    numpy.random.SeedSequence(entropy=seed, spawn_key=(SALT, split, kind, index))

where ``split`` is the position of the split in :data:`SPLITS`, ``kind`` a stable checksum of the
kind's name and ``index`` the sample's number *within its kind*. So sample ``i`` of a kind is the
same whatever else is generated, however many workers run and however the shards are cut.

Splits: ``train``, ``valid`` and ``test`` use disjoint spawn keys, so for the same ``seed`` their
random streams never coincide — evaluate on ``split="test"`` (or ``"valid"``) of the seed you
trained on and no sample was seen in training. The scene space is finite (a single red circle on
a plain background exists in every split), so disjoint *streams* do not mean disjoint *content*
for the smallest scenes; the real handwritten digits are different: each split owns its own
images (see :mod:`~polymodal.data.shapes.digits`).

This module knows nothing about what a sample contains.
"""

from __future__ import annotations

import zlib

import numpy as np

from polymodal.errors import ConfigError

#: Bumped whenever any sample of a given (seed, split, kind, index) would come out different.
GENERATOR_VERSION = "1"

SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Keeps shapes-world streams apart from anything else seeded with SeedSequence(seed).
_SALT = 0x5A4E5


def check_split(split: str) -> int:
    """The split's number; a ConfigError naming the known splits if ``split`` is not one."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    return SPLITS.index(split)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


def kind_code(kind: str) -> int:
    """A stable number for a kind name (CRC-32: the same in every process and Python version)."""
    return zlib.crc32(kind.encode("utf-8"))


def sample_rng(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
    """The random generator of sample ``index`` of ``kind`` in ``split`` under ``seed``."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    sequence = np.random.SeedSequence(
        entropy=check_seed(seed), spawn_key=(_SALT, check_split(split), kind_code(kind), int(index))
    )
    return np.random.default_rng(sequence)


def child_seed(rng: np.random.Generator) -> int:
    """A 63-bit seed drawn from ``rng``, for sub-generators whose seed is kept in the ground truth."""
    return int(rng.integers(0, 2**63 - 1))
