"""The training skeleton every stage's worker runs: its start, the optimiser and schedule, resume
from the last epoch checkpoint, the epochs with their statistics and checkpoints, and the
loaders. Plain PyTorch; a stage supplies its model, its step and its evaluation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import torch

from mtmg import faults, tracking
from mtmg.data import loader
from mtmg.engine import loop
from mtmg.engine.context import WorkerContext
from mtmg.stages.config import StageConfig

log = logging.getLogger(__name__)
C = TypeVar("C", bound=StageConfig)
State = dict[str, Any]  # the loop's progress, saved as state.json with every epoch checkpoint
Tensors = dict[str, torch.Tensor]


def start(
    cls: type[C], conf: dict[str, Any], ctx: WorkerContext | None
) -> tuple[C, WorkerContext, faults.Faults]:
    """A worker's config, its context (a plain process's by default; rank 0's tracks the run
    where `conf["tracking"]` says) and the test faults, with torch seeded from the config."""
    cfg = cls(**conf["cfg"])
    torch.manual_seed(cfg.seed)
    ctx = ctx or WorkerContext()
    if ctx.is_main and conf.get("tracking") is not None:
        ctx = replace(ctx, tracker=tracking.resume(conf["tracking"]))
    return cfg, ctx, conf.get("faults", faults.NONE)


class Run:
    """One worker's training: AdamW on `params` with linear warm-up and cosine decay over
    `total_steps`, and the epoch checkpoints whose weights file is `<name>.safetensors`."""

    def __init__(
        self,
        cfg: StageConfig,
        ctx: WorkerContext,
        name: str,
        params: list[torch.nn.Parameter],
        total_steps: int,
        hooks: faults.Faults = faults.NONE,
    ) -> None:
        self.cfg, self.ctx, self.name, self.params, self.hooks = cfg, ctx, name, params, hooks
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = loop.lr_lambda(cfg.warmup_steps, total_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.amp = loop.amp_dtype(cfg.precision, ctx.device)

    def resume(
        self, state: State, load: Callable[[Tensors], None], finished: Callable[[State], bool]
    ) -> tuple[State, bool]:
        """`state` updated from the latest epoch checkpoint, its weights given to `load`, the
        optimiser and schedule restored; and whether that checkpoint ends the training."""
        saved = loop.load_epoch(self.ctx, self.name, self.opt, self.sched)
        if not saved:
            return state, False
        tensors, progress = saved
        load(tensors)
        state = {**state, **progress}
        if finished(state):
            return state, True
        log.info("resuming at epoch %d, step %d", state["epoch"], state["step"])
        return state, False

    def step(self, loss: torch.Tensor, step: int, parts: Mapping[str, float] | None = None) -> int:
        """Backward and one optimiser step at global `step`; returns the next step. The loss,
        the learning rate and the loss's `parts` go to the run's trackers as train/..."""
        lr = self.opt.param_groups[0]["lr"]
        loop.optimizer_step(loss, self.opt, self.sched, self.params, self.cfg.grad_clip, step)
        if self.ctx.tracker is not None:
            logged = {"train/loss": loss.item(), "train/lr": lr}
            logged.update({f"train/loss_{k}": v for k, v in (parts or {}).items()})
            self.ctx.tracker.log_metrics(step + 1, logged)
        self.hooks.at_step(step + 1)
        return step + 1

    def epochs(
        self,
        state: State,
        one_epoch: Callable[[int], dict[str, Any]],
        weights: Callable[[], Tensors],
        after_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        """Run the epochs from `state["epoch"]` on: `one_epoch(epoch)` trains and returns the
        epoch's statistics, `after_epoch(epoch, stats)` may add to them, then a checkpoint of
        `weights()` and `state`."""
        for epoch in range(state["epoch"], self.cfg.epochs):
            stats = one_epoch(epoch)
            state["stats"].append(stats)
            state["epoch"] = epoch + 1
            log.info("epoch %d: %s", epoch + 1, stats)
            if after_epoch is not None:
                after_epoch(epoch, stats)
            if self.ctx.tracker is not None:
                self.ctx.tracker.log_metrics(state["step"], {"epoch": stats})
            loop.save_epoch(self.ctx, self.name, weights(), state, stats, self.opt, self.sched)

    def finish(self, tensors: Tensors, state: State, metrics: dict[str, Any]) -> None:
        """The last checkpoint: the trained weights and the final state, no optimiser; rank 0's
        tracking of the run ends here (the driver closes the run)."""
        loop.save_epoch(self.ctx, self.name, tensors, state, metrics)
        if self.ctx.tracker is not None:
            self.ctx.tracker.close()


class EpochTotals:
    """A training epoch's loss, samples and (optionally) per-part losses on this rank, summed
    over all ranks at the end."""

    def __init__(self, device: torch.device, parts: int = 0) -> None:
        self.sum = torch.zeros(2 + parts, device=device)  # loss * samples, samples, parts
        self.steps, self.meter = 0, loop.ThroughputMeter(device)

    def add(self, loss: torch.Tensor, size: int, parts: torch.Tensor | None = None) -> None:
        self.steps += 1
        self.meter.step(size)
        row = [loss.detach().reshape(1) * size, self.sum.new_tensor([size])]
        self.sum += torch.cat(row if parts is None else [*row, parts.detach()])

    def stats(self, ctx: WorkerContext, epoch: int, step: int) -> dict[str, Any]:
        """The epoch's statistics, summed over all ranks (every rank calls this once)."""
        if ctx.world > 1:
            torch.distributed.all_reduce(self.sum)
        return {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(self.sum[0] / self.sum[1]),
            "samples_per_s": self.meter.rate(),
        }

    def part_means(self, world: int) -> list[float]:
        """Each part's mean loss per step over all ranks (after `stats`)."""
        return [float(v) / (self.steps * world) for v in self.sum[2:]]


def train_loader(
    cfg: StageConfig,
    ctx: WorkerContext,
    ds: loader.ShardSet,
    decoder: loader.Decoder,
    epoch: int,
    batch_size: int,
    num_workers: int,
) -> loader.Loader:
    """This rank's shuffled training batches of `epoch` (its augmentation drawn for it)."""
    return loader.make_loader(
        ds,
        "train",
        replace(decoder, epoch=epoch),
        batch_size=batch_size,
        train=True,
        rank=ctx.rank,
        world=ctx.world,
        num_workers=num_workers,
        seed=cfg.seed,
        epoch=epoch,
    )


def eval_loader(
    cfg: StageConfig, ctx: WorkerContext, ds: loader.ShardSet, split: str, decoder: loader.Decoder
) -> loader.Loader:
    """This rank's part of `split`, in order, in evaluation batches."""
    return loader.make_loader(
        ds,
        split,
        decoder,
        batch_size=cfg.eval_batch_size,
        train=False,
        rank=ctx.rank,
        world=ctx.world,
        num_workers=cfg.loader_workers,
    )
