"""What the learned (autoencoder) tokenizers share: saving, loading, strict configs, data cycling.

A saved neural tokenizer is a folder with ``tokenizer_config.json`` (registry type, modality and
the typed config) and ``model.safetensors`` (the EMA weights). Knows nothing of images or audio.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from polymodal.errors import ConfigError
from polymodal.files import write_bytes_atomic
from polymodal.tokenizers import read_tokenizer_config, write_tokenizer_config

WEIGHTS_FILENAME = "model.safetensors"
T = TypeVar("T")
Self = TypeVar("Self", bound="NeuralTokenizer")


def config_from_dict(config_cls: type[T], data: dict, what: str) -> T:
    """Build a config dataclass from saved JSON; unknown keys are an error, never ignored."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} config: expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - set(config_cls.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{what} config: unknown keys {sorted(unknown)}")
    try:
        return config_cls(**data)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{what} config: invalid value ({exc})") from exc


def cycle_examples(items: Iterable[T], rng: np.random.Generator, what: str) -> Iterator[T]:
    """A list is reshuffled and repeated every epoch; any other iterable is read once, as a stream."""
    if isinstance(items, Sequence):
        if not items:
            raise ConfigError(f"{what} training got no examples")
        while True:
            for index in rng.permutation(len(items)):
                yield items[int(index)]
    yield from items
    raise ConfigError(f"the {what} stream ran out before training ended: pass a list, or a longer stream")


ADAPT_PARTS = ("all", "encoder")


class NeuralTokenizer:
    """Base of the image and audio tokenizers: a typed config plus an autoencoder with an FSQ quantizer."""

    name: ClassVar[str]
    modality: ClassVar[str]
    config_cls: ClassVar[type]
    model_cls: ClassVar[type[nn.Module]]

    def __init__(self, config: Any, model: nn.Module | None = None) -> None:
        self.config = config
        self.model = (model or self.model_cls(config)).eval()

    @property
    def vocab_size(self) -> int:
        return self.model.quantizer.codebook_size

    @property
    def device(self) -> torch.device:
        """Where the autoencoder runs: move it with ``tokenizer.model.to(...)``. Parts and spans stay on
        the CPU whatever it is (inputs go over, codes and media come back)."""
        return next(self.model.parameters()).device

    def trainable_copy(self, adapt: str = "all") -> nn.Module:
        """A copy of the autoencoder to continue training on new data (a new domain or resolution): the
        vocabulary never changes (FSQ's codebook is a fixed grid). ``adapt="encoder"`` trains the
        encoder alone, so that every code still decodes to exactly what it did and a model's embeddings
        of this range keep their meaning; ``"all"`` also trains the decoder (better reconstructions,
        codes whose look or sound drifts a little)."""
        if adapt not in ADAPT_PARTS:
            raise ConfigError(f"{self.modality} tokenizer: adapt must be one of {ADAPT_PARTS}, got {adapt!r}")
        model = copy.deepcopy(self.model).train()
        for name, p in model.named_parameters():
            p.requires_grad_(adapt == "all" or name.startswith("encoder."))
        return model

    @torch.no_grad()
    def code_latents(self) -> torch.Tensor:
        """``[codes, channels]``: the latent vector the decoder reads for each code (codes alike, latents alike)."""
        n = self.vocab_size
        return self.model.quantizer.decode_codes(torch.arange(n, device=self.device).view(1, n))[0].T.cpu()

    def code_appearance(self) -> torch.Tensor:
        """``[codes, features]``: what each code looks or sounds like once decoded (pixels of its
        patch, the spectrum of its frame). The FSQ latents order codes by a few scalar channels that
        mix colour, edges and texture nonlinearly; this is the code as a reader of the picture or
        the sound meets it, so codes of one colour or one timbre land close together."""
        raise NotImplementedError(f"{type(self).__name__} does not say what its codes look like")

    def save(self, directory: str | os.PathLike) -> None:
        """Write the weights, then the config (each atomically); the config names the weights' shape."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        write_bytes_atomic(directory / WEIGHTS_FILENAME, save_safetensors(state))
        write_tokenizer_config(directory, self.name, {"modality": self.modality, "config": asdict(self.config)})

    @classmethod
    def load(cls: type[Self], directory: str | os.PathLike) -> Self:
        directory = Path(directory)
        saved = read_tokenizer_config(directory)
        if saved["type"] != cls.name:
            raise ConfigError(f"{directory}: holds a {saved['type']!r} tokenizer, not {cls.name!r}")
        config = config_from_dict(cls.config_cls, saved.get("config", {}), f"{directory} {cls.modality} tokenizer")
        try:
            model = cls.model_cls(config)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{directory}: the saved {cls.modality} tokenizer config is invalid ({exc})") from exc
        try:
            model.load_state_dict(load_file(str(directory / WEIGHTS_FILENAME)))
        except (OSError, RuntimeError, SafetensorError) as exc:
            raise ConfigError(
                f"{directory / WEIGHTS_FILENAME}: cannot load {cls.modality} tokenizer weights ({exc})"
            ) from exc
        return cls(config, model)
