"""The training loop: siamese hinge (the paper) or in-batch objectives, validation, checkpoints.

Resumable at any point: ``last.pt`` (written atomically at the end of every epoch and every
``train.checkpoint_minutes`` within one) holds the weights, the optimiser, the epoch, the step within it
and the negative sampler's random state; the epoch's caption order is a pure function of the seed
and the epoch, so a resumed run continues with exactly the batches the killed one would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from itm.checkpoint import save_atomic
from itm.config import Config, TrainConfig
from itm.data.types import Captions
from itm.devices import model_device, on_device, precision_context
from itm.distributed import is_main, shard, world_size
from itm.errors import ItmError
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.metrics import retrieval_metrics
from itm.models.base import Matcher
from itm.models.objectives import OBJECTIVES, TrainingBatch
from itm.pipeline import PreparedSplit
from itm.registry import Registry
from itm.training.augment import drop_regions, drop_words
from itm.training.averaging import WeightAverage

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum),
               "SGD with momentum (the paper: lr 0.01, momentum 0.9)")
OPTIMIZERS.add("adam", lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr), "Adam")


def scheduled_lr(cfg: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` in [0, 1] of the planned steps (train.epochs epochs):
    constant, or a cosine from train.lr down to 0. A function of the step, so a resumed run
    continues on the same curve."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr


class TrainingDiverged(ItmError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LoopState:
    """What a resumed run needs besides weights and optimiser."""

    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # batches of that epoch already done
    best_rsum: float = -1.0
    epochs_without_gain: int = 0
    elapsed: float = 0.0  # training seconds before this process
    loss_sum: float = 0.0  # running sum over the epoch in progress
    sampler_state: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The caption order of one epoch: depends only on (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_captions(captions: Captions, index: torch.Tensor) -> Captions:
    """Selected captions with the padding trimmed to the batch's longest."""
    picked = captions.select(index)
    steps = int(picked.lengths.max())
    vectors = None if picked.vectors is None else picked.vectors[:, :steps]
    return Captions(picked.ids[:, :steps], picked.lengths, vectors)


def training_inputs(model: Matcher, split: PreparedSplit, images: torch.Tensor, caps: torch.Tensor,
                    cfg: TrainConfig, gen: torch.Generator,
                    also: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], Captions]:
    """The image streams the model reads (and ``also``: the teachers' streams) and the captions of
    one step, with train.region_drop / train.word_drop applied (the whole-image vector stays that of
    the full grid), on the model's device. Augmentation draws on the CPU from the loop's generator,
    so a run's random stream is the same on every device."""
    streams = split.features.streams(tuple(dict.fromkeys(model.image_streams + tuple(also))), images)
    if "regions" in streams:
        streams["regions"] = drop_regions(streams["regions"], cfg.region_drop, gen)  # (B, D', M)
    captions = drop_words(batch_captions(split.captions, caps), cfg.word_drop, gen)
    device = model_device(model)
    return {k: v.to(device) for k, v in streams.items()}, on_device(captions, device)


def step_view(split: PreparedSplit, gen: torch.Generator) -> PreparedSplit:
    """The split whose photos one step reads: with other sizes extracted (``split.views``,
    train.image_sizes), one of the sizes drawn uniformly from the loop's generator; else the split."""
    if not split.views:
        return split
    k = int(torch.randint(len(split.views) + 1, (1,), generator=gen))
    return dataclasses.replace(split, features=(split.features, *split.views)[k], views=())


def training_batch(model: Matcher, split: PreparedSplit, caps: torch.Tensor, owner: torch.Tensor,
                   cfg: TrainConfig, gen: torch.Generator, teacher=None, grounding=None) -> TrainingBatch:
    split = step_view(split, gen)

    def inputs(images: torch.Tensor, captions: torch.Tensor):
        return training_inputs(model, split, images, captions, cfg, gen, teacher.image_streams if teacher else ())

    share = shard(len(caps)) if world_size() > 1 else None
    return TrainingBatch(caps, owner, cfg, gen, inputs, share, teacher, grounding)


class LossModule(torch.nn.Module):
    """The model's training hook as a forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: Matcher):
        super().__init__()
        self.model = model

    def forward(self, batch: TrainingBatch) -> torch.Tensor:
        return self.model.training_loss(batch)


def loss_function(model: Matcher) -> Callable[[TrainingBatch], torch.Tensor]:
    """The model's loss, wrapped in DistributedDataParallel (gradients averaged across processes)
    under torchrun; every process holds the whole global batch and scores its share of it."""
    if world_size() == 1:
        return lambda batch: model.training_loss(batch)  # looked up per call: tests replace it
    from torch.nn.parallel import DistributedDataParallel

    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        print("note: batch norms see each process's share of the pairs (no SyncBatchNorm)", flush=True)
    return DistributedDataParallel(LossModule(model))


def validate(model: Matcher, split: PreparedSplit, config: Config) -> dict[str, Any]:
    scores = score_all_pairs(model, split.features, split.captions, config.eval.memory_budget_mb,
                             config.eval.caption_tile, precision=config.eval.precision)
    return retrieval_metrics(scores, split.caption_to_image)


class Trainer:
    """Runs epochs over a prepared train split, validates, checkpoints into ``run_dir``. Computes on
    the model's device (move the model before building the Trainer): the optimiser and the weight
    average are created there."""

    def __init__(self, model: Matcher, config: Config, run_dir: Path, meta: Callable[[], dict[str, Any]]):
        self.model = model
        self.config = config
        self.cfg = config.train
        self.run_dir = Path(run_dir)
        self.meta = meta  # -> the plain-data checkpoint payload of the current weights
        if self.cfg.loss not in OBJECTIVES:
            raise ItmError(f"train.loss: '{self.cfg.loss}' is not one of {', '.join(OBJECTIVES.names())}")
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS.get(self.cfg.optimizer)(params, self.cfg)
        self.state = LoopState()
        self.average = WeightAverage(model, self.cfg.ema_decay) if self.cfg.ema_decay else None
        self.loss = loss_function(model)
        self.teacher = None  # itm.training.distill.Teachers when train.distill_from names checkpoints
        self.grounding = None  # itm.training.grounding.ConceptGrounding when train.concept_weight > 0

    # -- checkpoints ------------------------------------------------------------------------------
    def last_good(self) -> str:
        last = self.run_dir / "last.pt"
        return f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"

    def check_finite_weights(self, when: str) -> None:
        """TrainingDiverged if a weight or buffer is NaN/inf: such weights never reach a checkpoint."""
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise TrainingDiverged(f"weights became non-finite ({name}) {when}; {self.last_good()} "
                                       "(try a lower train.lr)")

    def save_last(self) -> None:
        self.check_finite_weights(f"at epoch {self.state.epoch + 1} step {self.state.step}")
        if not is_main():
            return  # one writer: every process holds the same weights
        payload = self.meta()
        payload["optimizer"] = self.optimizer.state_dict()
        payload["loop"] = {k: v for k, v in vars(self.state).items()}
        if self.average is not None:
            payload["average"] = self.average.state_dict()
        save_atomic(payload, self.run_dir / "last.pt")

    def evaluated_weights(self) -> AbstractContextManager:
        """The weights validation scores and best.pt keeps: the averaged ones when averaging is on."""
        return nullcontext() if self.average is None else self.average.swapped_in(self.model)

    def restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = LoopState(**payload["loop"])
        if self.average is not None:  # a run that turns averaging on when resumed starts it here
            if "average" in payload:
                self.average.load_state_dict(payload["average"])
            else:
                self.average = WeightAverage(self.model, self.cfg.ema_decay)

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, train: PreparedSplit, val: PreparedSplit, progress: bool = True) -> dict[str, Any]:
        owner = torch.as_tensor(train.caption_to_image)
        n_caps = len(owner)
        steps_per_epoch = math.ceil(n_caps / self.cfg.batch_size)
        started = time.time() - self.state.elapsed
        last_save = time.time()
        out_of_time = False
        while self.state.epoch < self.cfg.epochs:
            epoch = self.state.epoch
            order = epoch_order(n_caps, self.cfg.seed, epoch)
            gen = torch.Generator().manual_seed(self.cfg.seed * 7 + epoch)
            if self.state.sampler_state is not None:
                gen.set_state(self.state.sampler_state)
            self.model.train()
            bar = tqdm(total=steps_per_epoch, initial=self.state.step, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                       unit="batch", disable=not progress or not is_main(), dynamic_ncols=True)
            out_of_time = False
            while self.state.step < steps_per_epoch:
                s = self.state.step
                caps = order[s * self.cfg.batch_size : (s + 1) * self.cfg.batch_size]
                with precision_context(model_device(self.model), self.cfg.precision):
                    loss = self.loss(training_batch(self.model, train, caps, owner, self.cfg, gen, self.teacher,
                                                           self.grounding))
                loss = loss.float()  # the backward pass runs outside autocast, as torch recommends
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1} step {s + 1}; "
                                           f"{self.last_good()} (try a lower train.lr)")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = scheduled_lr(self.cfg, (epoch * steps_per_epoch + s) / (self.cfg.epochs * steps_per_epoch))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                # the total gradient norm (clipped to grad_clip when set); NaN/inf must not reach the weights
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
                if not torch.isfinite(grad_norm):
                    raise TrainingDiverged(f"gradient became {grad_norm.item()} at epoch {epoch + 1} step {s + 1}; "
                                           f"{self.last_good()} (try a lower train.lr)")
                self.optimizer.step()
                if self.average is not None:
                    self.average.update(self.model)
                self.state.step += 1
                self.state.loss_sum += loss.item()
                self.state.sampler_state = gen.get_state()
                bar.update(1)
                bar.set_postfix(loss=f"{self.state.loss_sum / self.state.step:.4f}")
                self.state.elapsed = time.time() - started
                if time.time() - last_save >= self.cfg.checkpoint_minutes * 60:
                    self.save_last()
                    last_save = time.time()
                if self.cfg.max_minutes and self.state.elapsed > self.cfg.max_minutes * 60:
                    out_of_time = True
                    break
            bar.close()
            self.end_epoch(val, steps_done=self.state.step)
            last_save = time.time()
            if out_of_time or self.state.epochs_without_gain >= self.cfg.patience:
                break
        return {"best_rsum": self.state.best_rsum, "epochs": self.state.epoch,
                "seconds": self.state.elapsed, "history": self.state.history,
                "time_limit_hit": out_of_time and self.state.epoch < self.cfg.epochs}

    def end_epoch(self, val: PreparedSplit, steps_done: int) -> None:
        self.check_finite_weights(f"in epoch {self.state.epoch + 1}")
        t0 = time.time()
        # with averaging on, selection uses the averaged weights and the raw ones are logged beside them
        raw = None if self.average is None else validate(self.model, val, self.config)["rsum"]
        with self.evaluated_weights():
            metrics = validate(self.model, val, self.config)
        record = {"epoch": self.state.epoch + 1, "steps": steps_done,
                  "train_loss": self.state.loss_sum / max(steps_done, 1),
                  "val": metrics, "rsum": metrics["rsum"], "val_seconds": round(time.time() - t0, 2),
                  "elapsed": round(self.state.elapsed, 2)}
        if raw is not None:
            record["raw_rsum"] = raw
        improved = metrics["rsum"] > self.state.best_rsum
        if improved:
            self.state.best_rsum = metrics["rsum"]
            self.state.epochs_without_gain = 0
            if is_main():
                with self.evaluated_weights():
                    save_atomic(self.meta(), self.run_dir / "best.pt")
        else:
            self.state.epochs_without_gain += 1
        record["best"] = improved
        self.state.history.append(record)
        if is_main():
            write_metrics_log(self.state.history, self.run_dir / "metrics.jsonl")
        raw_text = "" if raw is None else f" (raw weights {raw:.1f})"
        print_main(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  val rsum {metrics['rsum']:.1f}{raw_text}"
                   f"{'  (best)' if improved else ''}")
        self.state.epoch += 1
        self.state.step = 0
        self.state.loss_sum = 0.0
        self.state.sampler_state = None
        self.save_last()


def print_main(text: str) -> None:
    if is_main():
        print(text, flush=True)


def write_metrics_log(history: list[dict[str, Any]], path: Path) -> None:
    """Rewrite the per-epoch JSONL log from the saved history (a resumed run never duplicates lines)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    tmp.replace(path)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
