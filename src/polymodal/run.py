"""A run directory: everything needed to use a trained model, saved and loaded as one unit.

Layout::

    RUN/
      run.json            architecture, model config, the directions the run supports, format version
      vocab.json          the unified vocabulary
      tokenizers/<mod>/   each modality tokenizer
      model.safetensors   the weights

Saving is atomic for the whole folder: it is written beside the target and renamed into place, so
an interrupted save leaves the previous run intact. A run declares its *directions* (e.g.
``"image->text"``); generation refuses the directions a run never learned instead of producing
garbage. The architecture is ``early`` (the native :class:`Transformer`) or ``late`` (the
:class:`~polymodal.model.fusion.LateFusion` rival, which writes text only).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from polymodal.errors import ConfigError
from polymodal.files import staging_directory, swap_directory, write_bytes_atomic, write_text_atomic
from polymodal.model.config import ModelConfig
from polymodal.model.fusion import LateFusion, LateFusionConfig
from polymodal.model.transformer import Transformer
from polymodal.tokenizers.document import DocumentTokenizer

RUN_FILENAME = "run.json"
WEIGHTS_FILENAME = "model.safetensors"
FORMAT_VERSION = 1
MODALITIES = ("text", "image", "audio", "video")
ARCHITECTURES = {"early": (Transformer, ModelConfig), "late": (LateFusion, LateFusionConfig)}
Model = Transformer | LateFusion


def architecture_of(model: Model) -> str:
    return "late" if isinstance(model, LateFusion) else "early"


def build_model(architecture: str, config: dict) -> Model:
    """The model an architecture name and its config dict (as saved in run.json) describe."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}; available: {', '.join(ARCHITECTURES)}")
    model_cls, config_cls = ARCHITECTURES[architecture]
    return model_cls(config_cls.from_dict(config))


def parse_direction(direction: str) -> tuple[frozenset[str], str]:
    """``"image+text->text"`` → ({"image", "text"}, "text"), with clear errors for anything else."""
    inputs, sep, output = direction.partition("->")
    names = {name.strip() for name in inputs.split("+") if name.strip()}
    if not sep or not names or output.strip() not in MODALITIES or not names <= set(MODALITIES):
        raise ConfigError(
            f"direction {direction!r} must look like 'image->text' or 'audio+text->text' with modalities "
            f"from {', '.join(MODALITIES)}"
        )
    return frozenset(names), output.strip()


def covers(directions: Iterable[str], inputs: Iterable[str], output: str) -> bool:
    """Whether one of ``directions`` covers these input modalities and this output. Text beside media is
    always covered (an instruction or a question about them): ``image+audio->text`` takes a picture, a
    spoken question and a line of instructions."""
    wanted = set(inputs)
    media = wanted - {"text"}
    return any(out == output and (wanted <= ins or bool(media and media <= ins))
               for ins, out in map(parse_direction, directions))  # fmt: skip


def check_directions(architecture: str, directions: Iterable[str]) -> None:
    """Every direction parses, and a late-fusion run declares text outputs only."""
    parsed = {d: parse_direction(d) for d in directions}
    writes_media = [d for d, (_, output) in parsed.items() if output != "text"]
    if architecture == "late" and writes_media:
        raise ConfigError(f"a late-fusion run writes text only; it cannot declare {', '.join(writes_media)}")


@dataclass
class Run:
    model: Model
    tokenizer: DocumentTokenizer
    directions: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.directions = tuple(sorted(set(self.directions)))
        if self.model.config.vocab_size != self.tokenizer.vocab.size:
            raise ConfigError(
                f"the model has {self.model.config.vocab_size} ids but the vocabulary {self.tokenizer.vocab.size}"
            )
        check_directions(self.architecture, self.directions)

    @property
    def architecture(self) -> str:
        return architecture_of(self.model)

    def supports(self, inputs: Iterable[str], output: str) -> bool:
        """Whether some declared direction covers these input modalities and this output (:func:`covers`)."""
        return covers(self.directions, inputs, output)

    def save(self, directory: str | os.PathLike) -> Path:
        if getattr(self.model, "quantized", None):
            raise ConfigError("a quantized model is for generation and serving: save the run before quantizing it")
        directory = Path(directory).absolute()
        if directory.exists() and not (directory / RUN_FILENAME).exists():
            raise ConfigError(f"{directory} exists and is not a polymodal run: refusing to replace it")
        staging = staging_directory(directory)
        try:
            self.tokenizer.write_into(staging)
            state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
            write_bytes_atomic(staging / WEIGHTS_FILENAME, save_safetensors(state))
            meta = {
                "format_version": FORMAT_VERSION,
                "architecture": self.architecture,
                "model": self.model.config.to_dict(),
                "directions": list(self.directions),
            }
            write_text_atomic(staging / RUN_FILENAME, json.dumps(meta, indent=2) + "\n")
            swap_directory(staging, directory, marker=RUN_FILENAME)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> Run:
        directory = Path(directory)
        if not (directory / RUN_FILENAME).exists() and (directory / "run" / RUN_FILENAME).exists():
            directory = directory / "run"  # a training folder: its latest exported run
        try:
            meta = json.loads((directory / RUN_FILENAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{directory}: not a polymodal run (no {RUN_FILENAME})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{directory / RUN_FILENAME}: not valid JSON ({exc})") from exc
        unknown = set(meta) - {"format_version", "architecture", "model", "directions"}
        if unknown or meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{directory / RUN_FILENAME}: unknown keys {sorted(unknown)} or unsupported format version"
            )
        model = build_model(meta.get("architecture", "early"), meta["model"])
        try:
            model.load_state_dict(load_file(str(directory / WEIGHTS_FILENAME), device=str(device)))
        except (OSError, RuntimeError, SafetensorError) as exc:
            raise ConfigError(f"{directory / WEIGHTS_FILENAME}: cannot load the weights ({exc})") from exc
        return cls(model.to(device).eval(), DocumentTokenizer.load(directory), tuple(meta.get("directions", ())))
