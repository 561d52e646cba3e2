"""The training loop, kept visible: :func:`train_step`, :func:`evaluate`, and :class:`Trainer`, which
walks a recipe's stages.

One optimizer step = the step's rows split into micro-batches (gradient accumulation), each
process taking every W-th row (data parallelism). Losses are weighted sums divided by the weight
of the *whole* step over all processes, so 2 processes give the same update as 1 process with the
same global batch, and accumulation gives the same update as one big batch.

AdamW (fused on GPU; no weight decay on gains, biases and gates), linear warmup then cosine decay,
gradient clipping, bf16 autocast on GPU and fp32 on CPU. A checkpoint every ``checkpoint_every``
steps and at the end of each stage; ``resume=True`` continues from the newest one exactly — same
rows, same optimizer state, same schedule — so the losses equal those of a run never stopped.

Output folder::

    OUT/train.json          the recipe and where training stands
    OUT/metrics.jsonl       one line per step and per evaluation
    OUT/checkpoints/        step-NNNNNNNN/ (see checkpoint.py)
    OUT/run/                the run so far (updated after every stage): `polymodal generate OUT`
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors
from torch import nn
from tqdm.auto import tqdm

from polymodal.errors import ConfigError, TokenizerNotAvailableError
from polymodal.files import write_bytes_atomic, write_text_atomic
from polymodal.model.config import preset
from polymodal.model.fusion import LateFusion, late_preset
from polymodal.model.transformer import Transformer
from polymodal.run import Run, check_directions
from polymodal.tokenizers.document import DocumentTokenizer
from polymodal.tokenizers.presets import default_vocabulary_dir
from polymodal.train import data as D
from polymodal.train.checkpoint import Checkpoint, TrainerState, latest_checkpoint, save_checkpoint
from polymodal.train.lora import LoRAConfig, adapter_state, apply_lora, has_lora, merge_lora
from polymodal.train.objectives import Align, NextToken
from polymodal.train.parallelize import (
    Distributed,
    default_device,
    full_model_state,
    init_distributed,
    is_sharded,
    load_optimizer_state,
    optimizer_state,
    parallelize,
)
from polymodal.train.stages import Recipe, StageConfig, resume_conflicts

TRAIN_FILENAME = "train.json"
RUN_DIRNAME = "run"
ADAPTER_FILENAME = "adapter.safetensors"  # beside a run fine-tuned with LoRA: the adapters alone


# -- one step, one evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class StepStats:
    loss: float
    grad_norm: float
    lr: float
    tokens: int  # over all processes
    skipped: bool = False  # the gradient was not finite: no update was made
    by_modality: dict[str, float] = field(default_factory=dict)  # mean loss of each modality's tokens


def train_step(model: nn.Module, objective: nn.Module, micro_batches: Sequence, optimizer: torch.optim.Optimizer,
               scheduler, *, grad_clip: float, autocast, distributed: Distributed) -> StepStats:  # fmt: skip
    """One optimizer step over ``micro_batches`` (this process's share of the step's rows)."""
    weight = distributed.sum(torch.stack([objective.weight(b) for b in micro_batches]).sum().to(_device(model)))
    weight = weight.clamp(min=1e-8)
    total, tally = torch.zeros((), device=weight.device), None
    for k, batch in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        with nullcontext() if last else _no_grad_sync(model):
            with autocast:
                loss_sum, part = objective(model, batch)
            # DDP averages gradients over processes: scale so that the result is Σ loss / Σ weight.
            (loss_sum * distributed.world / weight).backward()
        total += loss_sum.detach().float()
        if part is not None:
            tally = part if tally is None else tally + part
    if distributed.world > 1:  # objective parameters (the align temperature) live outside DDP
        distributed.average_grads(objective.parameters())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    skipped = not bool(torch.isfinite(grad_norm))  # a non-finite gradient would poison the weights
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    tokens = distributed.sum(torch.tensor(sum(b.tokens for b in micro_batches), device=weight.device))
    return StepStats(float(distributed.sum(total) / weight), float(grad_norm), lr, int(tokens), skipped,
                     _by_modality(tally, distributed, getattr(objective, "modalities", ())))  # fmt: skip


def _by_modality(tally: torch.Tensor | None, distributed: Distributed, names: Sequence[str]) -> dict[str, float]:
    if tally is None:
        return {}
    tally = distributed.sum(tally).tolist()
    return {name: total / count for name, (total, count) in zip(names, tally, strict=True) if count > 0}


@contextmanager
def _no_grad_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate this micro-batch's gradients locally: DDP's ``no_sync``, FSDP2's switch."""
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


@torch.no_grad()
def evaluate(model: nn.Module, objective: nn.Module, batches: Iterator, *, autocast,
             distributed: Distributed) -> tuple[float, dict[str, float]]:  # fmt: skip
    """The weighted mean loss over ``batches`` (all processes together), in eval mode, and the mean
    loss of each modality's tokens."""
    was_training = model.training
    model.eval()
    device = _device(model)
    total, weight, tally = torch.zeros((), device=device), torch.zeros((), device=device), None
    for batch in batches:
        batch = batch.to(device)
        with autocast:
            loss_sum, part = objective(model, batch)
        total += loss_sum.float()
        weight += objective.weight(batch).to(device)
        if part is not None:
            tally = part if tally is None else tally + part
    model.train(was_training)
    names = getattr(objective, "modalities", ())
    return float(distributed.sum(total) / distributed.sum(weight).clamp(min=1e-8)), _by_modality(tally, distributed,
                                                                                                 names)  # fmt: skip


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# -- building blocks ----------------------------------------------------------------------------------


def build_model(recipe: Recipe, vocab_size: int) -> Transformer | LateFusion:
    overrides = dict(recipe.model_overrides)
    if recipe.architecture == "late":
        return LateFusion(late_preset(recipe.model, vocab_size, **overrides))
    return Transformer(preset(recipe.model, vocab_size, **overrides))


@torch.no_grad()
def init_media_embeddings(model: nn.Module, tokenizer: DocumentTokenizer, source: str = "appearance") -> list[str]:
    """Start each image/audio code's embedding (in every unified-vocabulary embedding of ``model``) as a
    fixed random projection of what its tokenizer says about the code, plus a little noise, at the
    scale the rows had: ``"appearance"``, the code decoded alone (its patch's pixels, its frame's
    spectrum), or ``"codes"``, the latent vector its decoder reads. Codes that look or sound alike then
    start alike, so the model need not learn a thousand codes one by one. Returns the modalities done: a
    tokenizer that says neither (a toy, a user's own) keeps its random rows."""
    vocab, done = tokenizer.vocab, []
    embeddings = [getattr(m, "embed", None) for m in model.modules()]
    tables = [e.weight for e in embeddings if isinstance(e, nn.Embedding) and e.num_embeddings == vocab.size]
    for modality in ("image", "audio"):
        if not vocab.has_modality(modality):
            continue
        try:
            describe = getattr(tokenizer.tokenizer(modality), _CODE_FEATURES[source], None)
        except TokenizerNotAvailableError:
            continue
        if describe is None:
            continue
        try:
            z = describe().float()
        except NotImplementedError:
            continue
        z = (z - z.mean(0)) / z.std(0).clamp_min(1e-6)  # every channel counts alike
        rows = vocab.range(modality)
        for table in tables:
            target = table[rows.start : rows.start + len(z)]
            scale = float(target.std())
            projection = torch.randn(z.shape[1], table.shape[1]) / z.shape[1] ** 0.5
            structured = z @ projection  # unit variance per entry
            noisy = structured + 0.25 * torch.randn_like(structured)  # so that no two codes start equal
            target.copy_(noisy * scale / math.sqrt(1 + 0.25**2))
        done.append(modality)
    return done


_CODE_FEATURES = {"appearance": "code_appearance", "codes": "code_latents"}


def apply_freeze(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Train every parameter except those whose name starts with one of ``prefixes`` (with adapters:
    only the adapters, less those under ``prefixes``)."""
    _check_prefixes([name for name, _ in model.named_parameters()], prefixes, "freeze")
    if isinstance(model, LateFusion) and model.config.freeze_encoder:
        prefixes = (*prefixes, "encoder.")
    adapters = has_lora(model)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(tuple(prefixes)) and (not adapters or ".lora_" in f".{name}"))


def _check_prefixes(names: Sequence[str], prefixes: Sequence[str], where: str) -> None:
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            roots = sorted({name.split(".")[0] for name in names})
            raise ConfigError(f"{where}: no parameter name starts with {prefix!r} (top-level names: {roots})")


def build_optimizer(model: nn.Module, objective: nn.Module, stage: StageConfig, device: torch.device):
    """AdamW over the trainable parameters (no decay for 1-D ones) and its warmup + cosine schedule."""
    params = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": stage.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, stage))
    return optimizer, scheduler


def lr_factor(step: int, stage: StageConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at the last step."""
    if step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    span = max(1, stage.steps - stage.warmup_steps - 1)  # the last step (steps - 1) gets min_lr_ratio
    progress = min(1.0, (step - stage.warmup_steps) / span)
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_for(recipe: Recipe, device: torch.device):
    use_bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


# -- the trainer ----------------------------------------------------------------------------------------


@dataclass
class _StageData:
    train: torch.utils.data.Dataset
    collate: object
    eval: torch.utils.data.Dataset | None


class Trainer:
    """Runs a recipe into ``out``. Everything is checked in ``__init__``, before any work starts."""

    def __init__(
        self,
        recipe: Recipe,
        out: str | Path,
        *,
        resume: bool = False,
        device: str | None = None,
        progress: bool | None = None,
        strategy: str = "ddp",
        run_dir: str | Path | None = None,
    ) -> None:
        self.recipe, self.out = recipe, Path(out)
        self.run_dir = Path(run_dir) if run_dir is not None else self.out / RUN_DIRNAME
        self.device = default_device(device)
        self.distributed = init_distributed(self.device)
        self.progress = sys.stderr.isatty() if progress is None else progress
        if strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
        self.strategy = strategy
        self.tokenizer = DocumentTokenizer.load(recipe.vocab or default_vocabulary_dir())
        self.vocab = self.tokenizer.vocab
        self.checkpoint = self._check_out_dir(resume)
        check_directions(recipe.architecture, recipe.directions)
        self.mixtures = [self._check_stage(stage) for stage in recipe.stages]
        self.board = None
        if recipe.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard = true needs the tensorboard package: pip install tensorboard") from None
            self._summary_writer = SummaryWriter
        with torch.device("meta"):  # parameter names and shapes, for free
            meta = build_model(recipe, self.vocab.size)
        names = [name for name, _ in meta.named_parameters()]
        for stage in recipe.stages:
            _check_prefixes(names, stage.freeze, f"stage {stage.name!r}: freeze")
            self._check_batching(stage)
        self.init_run = self._check_init(recipe.init, meta) if recipe.init else None
        self.distributed.barrier()  # no process starts writing while another is still checking

    def _check_batching(self, stage: StageConfig) -> None:
        world, where = self.distributed.world, f"stage {stage.name!r}"
        if stage.batch_size % world:
            raise ConfigError(f"{where}: batch_size {stage.batch_size} is not divisible by {world} processes")
        local = stage.batch_size // world
        micro = stage.micro_batch_size or local
        if local % micro:
            raise ConfigError(f"{where}: micro_batch_size {micro} must divide the {local} rows of each process")
        if stage.objective == "align" and (stage.micro_batch_size or local < 2):
            # the negatives of a pair are the other pairs of its forward pass: accumulation would change the loss
            raise ConfigError(f"{where}: align needs >= 2 pairs per process and no micro_batch_size")

    def _check_init(self, init: str, meta: nn.Module) -> Run:
        start = Run.load(init)
        if start.architecture != self.recipe.architecture or start.tokenizer.vocab != self.vocab:
            raise ConfigError(f"init {init}: its architecture or vocabulary differs from the recipe's")
        shapes = {k: v.shape for k, v in meta.state_dict().items()}
        theirs = {k: v.shape for k, v in start.model.state_dict().items()}
        if shapes != theirs:
            differ = sorted(k for k in set(shapes) | set(theirs) if shapes.get(k) != theirs.get(k))[:4]
            raise ConfigError(f"init {init}: its weights do not fit the recipe's model (e.g. {differ})")
        return start

    def _check_out_dir(self, resume: bool) -> Checkpoint | None:
        marker = self.out / TRAIN_FILENAME
        if self.out.exists() and any(self.out.iterdir()) and not marker.is_file():
            raise ConfigError(f"{self.out} exists and is not a polymodal training folder: choose another --out")
        if not resume:
            if marker.is_file():
                raise ConfigError(f"{self.out} already holds a training run: pass --resume to continue it")
            return None
        checkpoint = latest_checkpoint(self.out)
        if checkpoint is None:
            if not marker.is_file():
                raise ConfigError(f"--resume: {self.out} holds no training run to resume")
            return None  # stopped before its first checkpoint: start again from the beginning
        conflicts = resume_conflicts(checkpoint.state.recipe, self.recipe.to_dict(), checkpoint.state.stage)
        if conflicts:
            raise ConfigError(f"--resume: {checkpoint.path} was made by a recipe that differs in {conflicts}; only "
                              "stages not yet begun and how the run is executed (checkpoint_every, workers, "
                              "micro_batch_size, evaluation ...) may change")  # fmt: skip
        return checkpoint

    def _check_stage(self, stage: StageConfig) -> tuple[D.Mixture, D.Mixture | None]:
        try:
            train = D.Mixture(stage.data, self.vocab)
            held_out = D.Mixture(stage.eval_data, self.vocab) if stage.eval_data else None
            for mixture in filter(None, (train, held_out)):
                if stage.objective == "align":
                    if self.recipe.architecture == "late":
                        raise ConfigError("the align objective is for the native (early) architecture")
                    D.check_pairs(mixture, self.vocab)
                mixture.check_fits(stage.seq_len)
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name!r}: {exc}") from None
        D.modality_weights(self.vocab, stage.loss_weights)
        return train, held_out

    # -- running --------------------------------------------------------------------------------------

    def fit(self) -> Run:
        torch.manual_seed(self.recipe.seed)
        model = build_model(self.recipe, self.vocab.size)
        if self.recipe.media_embeddings != "random" and self.init_run is None and not self.checkpoint:
            init_media_embeddings(model, self.tokenizer, self.recipe.media_embeddings)
        if self.init_run is not None:  # loaded and checked once, in __init__
            model.load_state_dict(self.init_run.model.state_dict())
        if self.recipe.lora is not None:  # before a checkpoint is loaded: it holds the adapters
            apply_lora(model, LoRAConfig.from_dict(self.recipe.lora))
        state = TrainerState(0, 0, 0, 0, self.recipe.to_dict())
        if self.checkpoint:  # where it stopped, under the recipe as it is now (see resume_conflicts)
            state = replace(self.checkpoint.state, recipe=self.recipe.to_dict())
        if self.checkpoint:
            model.load_state_dict(self.checkpoint.model_state())
        model.to(self.device).train()
        if self.distributed.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_status(state, "training")
            self._forget_metrics_after(state.global_step)
        for index, stage in enumerate(self.recipe.stages):
            if index < state.stage or (index == state.stage and state.step >= stage.steps):
                continue
            start = state.step if index == state.stage else 0
            state = self._fit_stage(model, index, stage, start, state)
            if index < len(self.recipe.stages) - 1:
                self.export(model)  # the run so far
        if is_sharded(model):  # every process gets the whole trained model, gathered once
            model = self._plain(full_model_state(model, everywhere=True)).to(self.device)
        adapters = adapter_state(model) if has_lora(model) else None
        model = merge_lora(model) if adapters is not None else model
        self.export(model, adapters)  # also when every stage was already done (a crash after the last checkpoint)
        if self.distributed.main:
            self._write_status(state, "done")
            if self.board is not None:
                self.board.close()
        self.distributed.barrier()
        return Run(model.eval(), self.tokenizer, self.recipe.directions)

    def _fit_stage(self, model: nn.Module, index: int, stage: StageConfig, start: int,
                   state: TrainerState) -> TrainerState:  # fmt: skip
        apply_freeze(model, stage.freeze)
        objective = (Align() if stage.objective == "align" else NextToken(self.vocab.modalities)).to(self.device)
        wrapped = parallelize(  # before the optimizer: FSDP replaces the parameters by shards
            model,
            self.distributed,
            device=self.device,
            strategy=self.strategy,
            compile=self.recipe.compile,
            activation_checkpointing=self.recipe.activation_checkpointing,
        )
        optimizer, scheduler = build_optimizer(model, objective, stage, self.device)
        if start > 0:
            saved = self.checkpoint.optimizer_state()
            objective.load_state_dict(saved["objective"])
            load_optimizer_state(model, objective, optimizer, saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            self.checkpoint.restore_rng()
        stage_data = self._stage_data(index, stage)
        autocast = autocast_for(self.recipe, self.device)
        steps = self._steps(stage, stage_data, start)
        bar = tqdm(total=stage.steps, initial=start, desc=stage.name, unit="step",
                   disable=not (self.progress and self.distributed.main))  # fmt: skip
        tic, tokens = time.perf_counter(), 0
        for step, micro_batches in enumerate(steps, start=start):
            stats = train_step(wrapped, objective, micro_batches, optimizer, scheduler, grad_clip=stage.grad_clip,
                               autocast=autocast, distributed=self.distributed)  # fmt: skip
            tokens += stats.tokens
            state = TrainerState(index, step + 1, state.global_step + 1, state.tokens + stats.tokens, state.recipe)
            rate = tokens / max(time.perf_counter() - tic, 1e-9)
            bar.set_postfix(loss=f"{stats.loss:.4f}", tok_s=f"{rate:,.0f}", lr=f"{stats.lr:.2e}")
            bar.update()
            self._log(
                {
                    "stage": stage.name,
                    "step": step + 1,
                    "global_step": state.global_step,
                    "loss": stats.loss,
                    "lr": stats.lr,
                    "grad_norm": stats.grad_norm,
                    "tokens": state.tokens,
                    "tokens_per_s": rate,
                    **{f"loss/{name}": value for name, value in stats.by_modality.items()},
                    **({"skipped": True} if stats.skipped else {}),
                }
            )
            if not self.progress and self.distributed.main and (step + 1) % max(1, stage.steps // 10) == 0:
                print(f"{stage.name} {step + 1}/{stage.steps}: loss {stats.loss:.4f}, {rate:,.0f} tokens/s",
                      file=sys.stderr, flush=True)  # fmt: skip
            done = step + 1 == stage.steps
            if stage_data.eval is not None and (done or (stage.eval_every and (step + 1) % stage.eval_every == 0)):
                loss, parts = evaluate(wrapped, objective, self._eval_batches(stage, stage_data), autocast=autocast,
                                       distributed=self.distributed)  # fmt: skip
                self._log({"stage": stage.name, "step": step + 1, "global_step": state.global_step, "eval_loss": loss,
                           **{f"eval_loss/{name}": value for name, value in parts.items()}})  # fmt: skip
                bar.write(f"{stage.name} step {step + 1}: held-out loss {loss:.4f}")
            if done or (step + 1) % self.recipe.checkpoint_every == 0:
                self._save(model, objective, optimizer, scheduler, state)
        bar.close()
        return state

    def _stage_data(self, index: int, stage: StageConfig) -> _StageData:
        train_mix, eval_mix = self.mixtures[index]
        seed = self.recipe.seed * 1000 + index
        late = self.recipe.architecture == "late"
        if stage.objective == "align":
            collate = _PairCollate(self.vocab, stage.seq_len)
            make = lambda mix, n, s: D.PairItems(mix, *D.plan_documents(mix, n, s), self.vocab)  # noqa: E731
        else:
            collate = _RowCollate(self.vocab, late, stage.seq_len)

            def make(mix, n, s):
                plan = D.plan_rows(mix, n, stage.seq_len, s)
                return D.PackedRows(mix, plan, stage.seq_len, self.vocab, loss_weights=stage.loss_weights,
                                    cond_dropout=stage.cond_dropout if mix is train_mix else 0.0,
                                    loss_per_document=stage.loss_per_document, seed=s)  # fmt: skip

        train = make(train_mix, stage.steps * stage.batch_size, seed)
        held_out = make(eval_mix, stage.eval_batches * stage.batch_size, seed + 500) if eval_mix else None
        return _StageData(train, collate, held_out)

    def _steps(self, stage: StageConfig, stage_data: _StageData, start: int) -> Iterator[list]:
        """This process's micro-batches for each step from ``start``, in order."""
        rank, world = self.distributed.rank, self.distributed.world
        local = stage.batch_size // world
        micro = stage.micro_batch_size or local
        indices = [i for i in range(start * stage.batch_size, stage.steps * stage.batch_size) if i % world == rank]
        batches = D.loader(stage_data.train, indices, micro, stage_data.collate, workers=self.recipe.workers,
                           pin_memory=self.device.type == "cuda")  # fmt: skip
        group: list = []
        for batch in batches:
            group.append(batch.to(self.device))
            if len(group) == local // micro:
                yield group
                group = []

    def _eval_batches(self, stage: StageConfig, stage_data: _StageData) -> Iterator:
        rank, world = self.distributed.rank, self.distributed.world
        indices = [i for i in range(len(stage_data.eval)) if i % world == rank]
        size = stage.micro_batch_size or stage.batch_size // world  # no larger than a training forward pass
        return iter(D.loader(stage_data.eval, indices, size, stage_data.collate))

    # -- output -----------------------------------------------------------------------------------------

    def _save(self, model: nn.Module, objective: nn.Module, optimizer, scheduler, state: TrainerState) -> None:
        weights = full_model_state(model)  # every process takes part when the model is sharded
        extra = {"optimizer": optimizer_state(model, objective, optimizer), "scheduler": scheduler.state_dict(),
                 "objective": objective.state_dict()}  # fmt: skip
        if self.distributed.main:
            save_checkpoint(self.out, state, weights, extra, keep=self.recipe.keep_checkpoints)
            self._write_status(state, "training")
        self.distributed.barrier()

    def export(self, model: nn.Module, adapters: dict[str, torch.Tensor] | None = None) -> Path | None:
        """Save the model as a run in ``run_dir`` (default ``OUT/run``): what generate, eval and serve
        read. Every process calls it (a sharded model is gathered first); the main one writes. Adapters
        are merged into the saved weights, and saved alone beside them (``adapter.safetensors``)."""
        if is_sharded(model):
            weights = full_model_state(model)
            model = self._plain(weights) if self.distributed.main else None
        if not self.distributed.main:
            return None
        if has_lora(model):
            adapters = adapter_state(model)
            model = merge_lora(copy.deepcopy(model))
        folder = Run(model, self.tokenizer, self.recipe.directions).save(self.run_dir)
        if adapters is not None:
            write_bytes_atomic(folder / ADAPTER_FILENAME, save_safetensors(adapters, metadata={
                "lora": json.dumps(self.recipe.lora), "init": str(self.recipe.init)}))  # fmt: skip
        return folder

    def _plain(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """An unsharded model holding ``weights``."""
        model = build_model(self.recipe, self.vocab.size)
        model.load_state_dict(weights)
        return model

    def _write_status(self, state: TrainerState, status: str) -> None:
        info = {"status": status, "stage": self.recipe.stages[min(state.stage, len(self.recipe.stages) - 1)].name,
                "global_step": state.global_step, "tokens": state.tokens, "processes": self.distributed.world,
                "strategy": self.strategy if self.distributed.world > 1 else None, "device": str(self.device),
                "recipe": self.recipe.to_dict()}  # fmt: skip
        write_text_atomic(self.out / TRAIN_FILENAME, json.dumps(info, indent=2) + "\n")

    def _forget_metrics_after(self, global_step: int) -> None:
        """On resume, drop the records of steps after the checkpoint: they are about to be redone."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("global_step", 0) <= global_step]  # fmt: skip
            write_text_atomic(path, "".join(line + "\n" for line in kept))

    def _log(self, record: dict) -> None:
        if not self.distributed.main:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.recipe.tensorboard:
            if self.board is None:
                self.board = self._summary_writer(log_dir=str(self.out / "tensorboard"))
            for key, value in record.items():
                if isinstance(value, float):
                    self.board.add_scalar(f"{record['stage']}/{key}", value, record["global_step"])


class _RowCollate:
    """Picklable collate for DataLoader workers."""

    def __init__(self, vocab, late: bool, seq_len: int) -> None:
        self.vocab, self.late, self.seq_len = vocab, late, seq_len

    def __call__(self, items):
        return D.collate_rows(items, self.vocab, late=self.late, seq_len=self.seq_len)


class _PairCollate:
    def __init__(self, vocab, row_len: int) -> None:
        self.vocab, self.row_len = vocab, row_len

    def __call__(self, items):
        return D.collate_pairs(items, self.vocab, self.row_len)
