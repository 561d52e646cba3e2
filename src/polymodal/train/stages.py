"""Recipes: the model to build and the stages to train it through, as typed, strict configs.

A :class:`Recipe` names the architecture (``early`` native, ``late`` fusion), a model preset, the
vocabulary, the directions the finished run declares, and a list of :class:`StageConfig`. A stage
says what it reads (a mixture of tokenized folders with weights), its objective (``next_token``, or
``align``: contrastive alignment of media + text pairs), how long and how fast it trains, and what
is frozen. The usual curriculum is ``align`` → ``pretrain`` → ``instruct``; the image/audio/text
tokenizers are trained before a recipe runs (``polymodal tokenizer train``; ``polymodal quickstart``
does all of it).

Recipes are Python functions in a registry (:func:`list_recipes`, :func:`get_recipe`) or JSON/TOML
files (:func:`load_recipe`). Unknown keys are errors, never silently ignored. Data paths in a file
are relative to the file. Knows nothing of models' internals or of the loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from polymodal.errors import ConfigError
from polymodal.train.lora import LoRAConfig

OBJECTIVES = ("next_token", "align")
ARCHITECTURES = ("early", "late")
PRECISIONS = ("auto", "fp32", "bf16")
MEDIA_EMBEDDINGS = ("appearance", "codes", "random")


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    name: str
    data: Mapping[str, float]  # tokenized folder -> sampling weight
    steps: int
    objective: str = "next_token"
    batch_size: int = 8  # rows (align: pairs) per optimizer step, over all processes
    micro_batch_size: int | None = None  # rows per forward pass and process; None: the whole step at once
    seq_len: int = 512  # packed row length (next_token)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decay ends at lr · min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0: off
    freeze: tuple[str, ...] = ()  # parameter-name prefixes left untouched (e.g. "embed", "encoder")
    loss_weights: Mapping[str, float] = field(default_factory=dict)  # per modality: text, image, audio, special
    cond_dropout: float = 0.0  # chance of training a media-generating document without its conditioning (CFG)
    # True: every document's loss tokens share one unit of weight (its weighted mean counts once), so that
    # a one-token answer weighs as much as a 64-code drawing; False: every loss token counts once.
    loss_per_document: bool = False
    eval_data: Mapping[str, float] = field(default_factory=dict)  # held-out mixture; empty: no evaluation
    eval_every: int = 0  # steps between evaluations (0: at the end of the stage only)
    eval_batches: int = 4

    def __post_init__(self) -> None:
        where = f"stage {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("every stage needs a name")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"{where}: objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for key in ("steps", "batch_size", "seq_len", "eval_batches"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer, got {getattr(self, key)!r}")
        micro = self.micro_batch_size
        if micro is not None and (micro < 1 or self.batch_size % micro):
            raise ConfigError(f"{where}: micro_batch_size {micro} must divide batch_size {self.batch_size}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError(f"{where}: lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0, grad_clip >= 0 needed")
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError(f"{where}: cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not self.data:
            raise ConfigError(f"{where}: data is empty; give tokenized folders with weights")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"{where}: warmup_steps {self.warmup_steps} must be fewer than steps {self.steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas) or self.weight_decay < 0:
            raise ConfigError(f"{where}: betas must be two numbers in [0, 1) and weight_decay >= 0")
        if isinstance(self.freeze, str) or not all(isinstance(x, str) for x in self.freeze):
            raise ConfigError(f"{where}: freeze is a list of parameter-name prefixes, e.g. ['embed']")
        if self.eval_every < 0:
            raise ConfigError(f"{where}: eval_every must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    stages: tuple[StageConfig, ...]
    directions: tuple[str, ...]  # what the finished run declares, e.g. "image->text"
    architecture: str = "early"
    model: str = "tiny"  # a preset of polymodal.model.list_presets()
    model_overrides: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"modality_experts": true}
    vocab: str | None = None  # a vocabulary folder (vocab.json + tokenizers/); None: the built-in one
    init: str | None = None  # a run folder whose weights start training (else random, seeded)
    # How image/audio code embeddings start (without `init`), so that codes alike start alike: a random
    # projection of each code decoded alone ("appearance": its pixels, its spectrum) or of the latent its
    # tokenizer's decoder reads ("codes"); "random" = N(0, 0.02).
    media_embeddings: str = "appearance"
    seed: int = 0
    checkpoint_every: int = 100  # optimizer steps; checkpoints are also written at the end of each stage
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the model (applied from train/parallelize.py)
    activation_checkpointing: bool = False
    workers: int = 2  # DataLoader processes per training process
    tensorboard: bool = False  # also write metrics as TensorBoard events in OUT/tensorboard (pip install tensorboard)
    # Low-rank adapters instead of full fine-tuning, e.g. {"rank": 8, "alpha": 16} (train/lora.py): only the
    # adapters train; the run is saved with them merged, and the adapters alone beside it.
    lora: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"recipe {self.name!r}: architecture must be one of {ARCHITECTURES}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"recipe {self.name!r}: precision must be one of {PRECISIONS}")
        if self.media_embeddings not in MEDIA_EMBEDDINGS:
            raise ConfigError(f"recipe {self.name!r}: media_embeddings must be one of {MEDIA_EMBEDDINGS}")
        if not self.stages:
            raise ConfigError(f"recipe {self.name!r} has no stages")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"recipe {self.name!r}: stage names repeat: {names}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.workers < 0:
            raise ConfigError("checkpoint_every >= 1, keep_checkpoints >= 1 and workers >= 0 are required")
        if self.lora is not None:
            if not isinstance(self.lora, Mapping):
                raise ConfigError(f"recipe {self.name!r}: lora is a table, e.g. {{rank = 8, alpha = 16}}")
            LoRAConfig.from_dict(self.lora)
            if self.architecture != "early":
                raise ConfigError(f"recipe {self.name!r}: lora adapts the native (early) architecture")
        if not self.directions or isinstance(self.directions, str):
            raise ConfigError(f"recipe {self.name!r}: list the directions the run learns, e.g. ['image->text']")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> Recipe:
        """A recipe from plain data (a parsed file); relative paths are taken from ``base_dir``."""
        data = dict(_strict(data, cls, "recipe"))
        stages = data.get("stages")
        if not isinstance(stages, list) or not stages:
            raise ConfigError("recipe: 'stages' must be a non-empty list of stage tables")
        built = []
        for k, stage in enumerate(stages):
            stage = dict(_strict(stage, StageConfig, f"recipe stage {k}"))
            for key in ("data", "eval_data"):
                if key in stage:
                    stage[key] = _mixture(stage[key], base_dir, f"stage {stage.get('name', k)!r} {key}")
            for key in ("freeze", "betas"):
                if key in stage:
                    if isinstance(stage[key], str) or not isinstance(stage[key], (list, tuple)):
                        raise ConfigError(f"recipe stage {k}: {key} must be a list, got {stage[key]!r}")
                    stage[key] = tuple(stage[key])
            built.append(_construct(StageConfig, stage, f"recipe stage {k}"))
        data["stages"] = tuple(built)
        directions = data.get("directions", ())
        if isinstance(directions, str) or not isinstance(directions, (list, tuple)):
            raise ConfigError(f"recipe: directions must be a list such as ['image->text'], got {directions!r}")
        data["directions"] = tuple(directions)
        for key in ("vocab", "init"):
            if data.get(key) is not None:
                data[key] = _resolve(data[key], base_dir)
        return _construct(cls, data, "recipe")

    def with_(self, **changes: Any) -> Recipe:
        return replace(self, **changes)


def _strict(data: Any, cls: type, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
    return data


def _construct(cls: type, data: dict, where: str):
    try:
        return cls(**data)
    except TypeError as exc:  # a missing required key
        raise ConfigError(f"{where}: {exc}") from None


def _resolve(path: str, base_dir: str | os.PathLike | None) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or base_dir is None else Path(base_dir) / p)


def _mixture(data: Any, base_dir: str | os.PathLike | None, where: str) -> dict[str, float]:
    if isinstance(data, str):
        data = {data: 1.0}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a folder or a table {{folder: weight}}")
    try:
        return {_resolve(p, base_dir): float(w) for p, w in data.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: weights must be numbers, got {dict(data)}") from None


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe from a ``.json`` or ``.toml`` file (strict: unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: a recipe file is .json or .toml")
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"{path}: cannot parse the recipe ({exc})") from exc
    try:
        return Recipe.from_dict(data, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# -- built-in recipes -----------------------------------------------------------------------------


# What a resumed run may change: how it is run, not what it computes.
_RESUMABLE_RECIPE_KEYS = frozenset(
    {"name", "directions", "checkpoint_every", "keep_checkpoints", "compile", "activation_checkpointing", "workers",
     "tensorboard",
     "media_embeddings"}  # the weights come from the checkpoint: how they started no longer matters
)  # fmt: skip
_RESUMABLE_STAGE_KEYS = frozenset({"micro_batch_size", "eval_data", "eval_every", "eval_batches"})


def resume_conflicts(saved: Mapping[str, Any], now: Mapping[str, Any], begun: int) -> list[str]:
    """What ``now`` (a recipe's ``to_dict()``) changes, against the recipe of a checkpoint taken in
    stage ``begun``, that would make the resumed run differ from one never stopped: the model, the
    data, the seed, or any setting of a stage already begun. Stages after it may be changed, added
    or removed; how the run is executed (checkpointing, workers, compile, micro-batches,
    evaluation) may change too."""
    conflicts = sorted(k for k in set(saved) | set(now) - {"stages"}
                       if k not in _RESUMABLE_RECIPE_KEYS | {"stages"} and saved.get(k) != now.get(k))  # fmt: skip
    old, new = saved.get("stages", []), now.get("stages", [])
    for i in range(begun + 1):
        if i >= len(new):
            conflicts.append(f"stage {i} ({old[i].get('name')!r}) was removed")
            continue
        keys = set(old[i]) | set(new[i])
        changed = sorted(k for k in keys - _RESUMABLE_STAGE_KEYS if old[i].get(k) != new[i].get(k))
        conflicts += [f"stages[{i}].{k}" for k in changed]
    return conflicts


def quickstart(data: str | os.PathLike, *, vocab: str | None = None, scale: float = 1.0) -> Recipe:
    """The CPU recipe of ``polymodal quickstart`` on the shapes-world folders it prepares under ``data``
    (one tokenized folder per corpus kind). ``scale`` multiplies every stage's steps."""
    d = Path(data)
    kinds = lambda *names: {str(d / name): 1.0 for name in names}  # noqa: E731
    steps = lambda n: max(2, int(n * scale))  # noqa: E731
    warmup = lambda n, total: min(n, steps(total) - 1)  # noqa: E731
    pairs = kinds("image_caption", "speech_transcript", "sound_label")
    every = kinds(
        "image_caption", "caption_image", "speech_transcript", "transcript_speech", "sound_label", "interleaved",
        "digit_caption",
    )  # fmt: skip
    chats = {str(d / "image_qa"): 3.0, str(d / "spoken_image_qa"): 2.0, str(d / "sound_qa"): 1.0,
             str(d / "video_qa"): 3.0}  # fmt: skip
    directions = (
        "image->text", "text->image", "audio->text", "text->audio", "image+text->text", "image+audio->text",
        "audio+text->text", "video+text->text", "text->text",
    )  # fmt: skip
    align = StageConfig(
        name="align", objective="align", data=pairs, steps=steps(40), batch_size=32, lr=1e-3,
        warmup_steps=warmup(5, 40),
    )  # fmt: skip
    pretrain = StageConfig(
        name="pretrain", data={**every, **chats}, steps=steps(140), batch_size=8, seq_len=512, lr=2e-3,
        warmup_steps=warmup(15, 140), loss_weights={"image": 0.5, "audio": 0.5}, cond_dropout=0.1,
    )  # fmt: skip
    # Answers are a few tokens among hundreds of media codes: weigh the media down so they keep their share.
    instruct = StageConfig(
        name="instruct", data={**every, **{p: 4 * w for p, w in chats.items()}}, steps=steps(200), batch_size=8,
        seq_len=512, lr=1.5e-3, warmup_steps=warmup(10, 200), loss_weights={"image": 0.25, "audio": 0.25},
    )  # fmt: skip
    return Recipe(
        name="quickstart", model="tiny", model_overrides={"modality_experts": True, "max_seq_len": 1024},
        vocab=vocab, directions=directions, stages=(align, pretrain, instruct), checkpoint_every=50, workers=1,
    )  # fmt: skip


def small(data: str | os.PathLike, *, vocab: str | None = None, scale: float = 1.0) -> Recipe:
    """The one-GPU recipe: the ``small`` preset (≈135M parameters) in bf16 on the same folders."""
    base = quickstart(data, vocab=vocab, scale=scale * 25)
    stages = []
    for s in base.stages:
        if s.objective == "align":  # one forward pass per step: every pair is a negative of every other
            stages.append(replace(s, batch_size=s.batch_size * 4, lr=s.lr / 3))
        else:
            stages.append(replace(s, batch_size=s.batch_size * 8, micro_batch_size=s.batch_size * 2, seq_len=2048,
                                  lr=s.lr / 3))  # fmt: skip
    return base.with_(name="small", model="small", model_overrides={"modality_experts": True}, stages=tuple(stages),
                      checkpoint_every=500, compile=True, workers=4)  # fmt: skip


_RECIPES: dict[str, Callable[..., Recipe]] = {"quickstart": quickstart, "small": small}


def list_recipes() -> list[str]:
    return list(_RECIPES)


def get_recipe(name: str, data: str | os.PathLike, **kwargs: Any) -> Recipe:
    """A built-in recipe over the tokenized corpus folders under ``data``."""
    try:
        return _RECIPES[name](data, **kwargs)
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; built in: {list_recipes()} (or give a .json/.toml file)") from None
