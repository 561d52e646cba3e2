"""``polymodal finetune RUN --data DATA --out OUT``: fine-tune a run on the user's own data, fully or
with low-rank adapters.

Every source is checked before any work (:func:`~polymodal.data.readers.check_source`: a missing
folder, a bad row, an unknown extension are errors that name the file and line), tokenized once with
the run's own vocabulary into ``OUT/data``, and trained from the run's weights by the ordinary trainer
(``OUT/train``: checkpoints, metrics, ``--resume``) through one stage. The new run (``OUT/run``)
declares the base run's directions plus every direction the data trains; with LoRA its weights are
the adapters merged into the base, and ``adapter.safetensors`` beside them holds the adapters alone.
``OUT/finetune.json`` records the base run and the directions the data trained, for
:func:`polymodal.eval.regression.check_finetune` (what ``polymodal finetune`` runs next).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from polymodal.content import Document
from polymodal.data.readers import LEARN, check_source, read_documents
from polymodal.data.tokenized import META_FILENAME, TokenizedDataset, write_tokenized
from polymodal.errors import ConfigError
from polymodal.files import write_text_atomic
from polymodal.run import Run, architecture_of
from polymodal.train.loop import TRAIN_FILENAME, Trainer
from polymodal.train.stages import Recipe, StageConfig

FINETUNE_FILENAME = "finetune.json"  # OUT/finetune.json: the base run and the directions the data trained


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 512
    lr: float | None = None  # default: 1e-3 with LoRA, 1e-4 for every weight
    warmup_steps: int = 10
    lora_rank: int | None = None  # None: full fine-tuning
    lora_alpha: float | None = None  # default: twice the rank
    lora_base: str = "full"  # "int8": the frozen weights under the adapters held as int8 (a quarter the memory)
    freeze: tuple[str, ...] = ()  # parameter-name prefixes left untouched (e.g. "embed", "layers.0")
    direction: str | None = None  # caption/transcript folders: e.g. text->image
    chat: bool = False  # caption/transcript folders: as user/assistant chats
    learn: str = "target"  # caption/transcript folders: train the output alone ("target") or the media too ("all")
    fps: float | None = None  # videos
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lora_base not in ("full", "int8"):
            raise ConfigError(f"lora_base must be 'full' or 'int8', got {self.lora_base!r}")
        if self.learn not in LEARN:
            raise ConfigError(f"learn must be one of {', '.join(LEARN)}, got {self.learn!r}")
        if self.lora_base == "int8" and not self.lora_rank:
            raise ConfigError("an int8 base is for LoRA: give a LoRA rank too (--lora-rank)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.lora_rank else 1e-4)


def _options(config: FinetuneConfig) -> dict:
    options = {"direction": config.direction, "as_chat": config.chat, "fps": config.fps,
               "learn": None if config.learn == "target" else config.learn}  # fmt: skip
    return {k: v for k, v in options.items() if v not in (None, False)}


def finetune(
    run_dir: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Run:
    """Fine-tune the run in ``run_dir`` on ``sources`` (caption/transcript folders, document JSONL files)
    into ``out``; returns the new run (also saved in ``out/run``)."""
    config = config or FinetuneConfig()
    out, run_dir = Path(out), Path(run_dir)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty: choose a new folder, or pass --resume to continue there")
    base = Run.load(run_dir)
    if architecture_of(base.model) != "early":
        raise ConfigError("fine-tuning reads native (early-fusion) runs; this one is late fusion")
    if not sources:
        raise ConfigError("give the data to fine-tune on: --data FOLDER_OR_JSONL (repeatable)")
    summaries = []
    for source in map(Path, sources):  # every source checked before anything is encoded
        if not source.exists():
            raise ConfigError(f"--data {source}: no such file or folder")
        summaries.append(check_source(source, **_options(config)))
        say(f"data: {summaries[-1]}")
    learned = sorted({d for s in summaries for d in s.directions})
    if not learned:
        raise ConfigError("the data trains no direction (nothing follows an input in any document)")
    data = out / "data"
    if not (data / META_FILENAME).is_file():
        write_tokenized(_documents(sources, config), base.tokenizer, data, max_length=config.seq_len,
                        progress=progress)  # fmt: skip
    if len(TokenizedDataset(data)) == 0:
        raise ConfigError(f"{data}: no document was left to learn from")
    lora = None
    if config.lora_rank:
        alpha = config.lora_alpha or 2.0 * config.lora_rank
        lora = {"rank": config.lora_rank, "alpha": alpha, "base": config.lora_base}
    stage = StageConfig(name="finetune", data={str(data): 1.0}, steps=config.steps, batch_size=config.batch_size,
                        seq_len=config.seq_len, lr=config.learning_rate,
                        warmup_steps=min(config.warmup_steps, config.steps - 1),
                        freeze=tuple(config.freeze))  # fmt: skip
    model_config = {k: v for k, v in asdict(base.model.config).items() if k != "vocab_size"}
    recipe = Recipe(
        name="finetune", stages=(stage,), directions=tuple(sorted(set(base.directions) | set(learned))),
        model="debug", model_overrides=model_config, vocab=str(run_dir), init=str(run_dir), seed=config.seed,
        lora=lora, workers=1, checkpoint_every=max(1, config.steps // 4),
    )  # fmt: skip
    what = f"LoRA rank {config.lora_rank}" + (" on an int8 base" if config.lora_base == "int8" else "")
    say(f"fine-tuning {what if lora else 'every weight'}: {config.steps} steps "
        f"of {config.batch_size} rows; directions learned: {', '.join(learned)}")  # fmt: skip
    trainer = Trainer(recipe, out / "train", resume=resume and (out / "train" / TRAIN_FILENAME).is_file(),
                      progress=progress, run_dir=out / "run")  # fmt: skip
    tuned = trainer.fit()
    record = {"base": str(run_dir.resolve()), "run": str((out / "run").resolve()), "learned": learned,
              "sources": [str(Path(source).resolve()) for source in sources]}  # fmt: skip
    write_text_atomic(out / FINETUNE_FILENAME, json.dumps(record, indent=2) + "\n")
    return tuned


def _documents(sources: Sequence[str | os.PathLike], config: FinetuneConfig) -> Iterator[Document]:
    for source in sources:
        yield from read_documents(source, **_options(config))
