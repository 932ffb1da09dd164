"""Pieces every training stage shares: schedule, precision, step counts, throughput, and the
per-epoch checkpoint (weights as safetensors, optimiser state, a JSON of the loop's progress).

Plain PyTorch; the checkpoint travels through the `WorkerContext` it is given.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mtmg.data import loader as data
from mtmg.engine.context import WorkerContext
from mtmg.errors import MtmgError


def lr_lambda(warmup: int, total: int):
    """Linear warm-up for `warmup` steps, then cosine decay to 0 at `total` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return f


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when asked, or on a GPU with "auto"; None means fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def train_steps(
    ds: data.ShardSet, batch_size: int, epochs: int, seed: int, world: int
) -> list[int]:
    """Steps of every epoch (known up front, for the schedule): the same on every rank;
    ValueError when a rank's share of the train split is less than one batch."""
    bs = max(1, batch_size // world)
    out = []
    for e in range(epochs):
        parts = data.partition(ds.shards("train"), 0, world, shuffle=True, seed=seed, epoch=e)
        out.append(data.full_batches(parts, bs, f"{ds.root} train"))
    return out


class NonFiniteError(MtmgError, ValueError):
    """A loss or weights that are NaN or infinite: nothing of it may reach a checkpoint."""


RECOVER = (
    "no checkpoint holds it. Check the shard sets (`python -m mtmg.verify SHARDS` names a bad "
    "shard; the loader names a non-finite sample), fix the data or lower --lr, and run the same "
    "command again: it resumes from the last good epoch checkpoint"
)


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop at the first non-finite loss, before it reaches the weights."""
    if not torch.isfinite(loss).all():
        raise NonFiniteError(f"training loss is {loss.item()} at step {step + 1}; " + RECOVER)


def _check_tensors(tensors: dict[str, torch.Tensor], where: str) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"{where}: non-finite values in {', '.join(bad[:5])}; " + RECOVER)


def optimizer_step(loss: torch.Tensor, opt, sched, params, grad_clip: float, step: int = 0) -> None:
    """Backward, gradient-norm clipping (when `grad_clip` > 0), optimiser and schedule step;
    a non-finite loss stops the run (`NonFiniteError`) before the weights change."""
    check_finite(loss, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()


class ThroughputMeter:
    """Training samples/s in steady state: from the end of the second step (start-up and the
    first batches of the data loader excluded) to the last, synchronised with the GPU."""

    def __init__(self, device: torch.device, skip: int = 2) -> None:
        self.device, self.skip, self.n, self.samples, self.t0 = device, skip, 0, 0, 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self, batch: int) -> None:
        self.n += 1
        if self.n == self.skip:
            self.t0 = self._now()
        elif self.n > self.skip:
            self.samples += batch

    def rate(self) -> float | None:
        if self.n <= self.skip:
            return None
        return self.samples / max(self._now() - self.t0, 1e-9)


def save_epoch(
    ctx: WorkerContext,
    name: str,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    metrics: dict[str, Any],
    opt: torch.optim.Optimizer | None = None,
    sched: Any = None,
) -> None:
    """Report `metrics` from every rank, with a checkpoint from rank 0: `<name>.safetensors`,
    `optim.pt` (optimiser and schedule) and `state.json` (the loop's progress)."""
    _check_tensors(tensors, f"epoch checkpoint {state.get('epoch')}")
    if not ctx.is_main:
        ctx.report(metrics)
        return
    with ctx.checkpoint_dir() as d:
        path = os.path.join(d, f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        if opt is not None:
            torch.save(
                {"opt": opt.state_dict(), "sched": sched.state_dict() if sched else None},
                os.path.join(d, "optim.pt"),
            )
        Path(d, "state.json").write_text(json.dumps(state))
        ctx.report(metrics, checkpoint=d)


def load_epoch(
    ctx: WorkerContext, name: str, opt: torch.optim.Optimizer | None = None, sched: Any = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, state) of the run's latest checkpoint, restoring `opt`/`sched`; None if none."""
    ckpt = ctx.load_checkpoint()
    if not ckpt:
        return None
    state = json.loads(Path(ckpt, "state.json").read_text())
    tensors = load_file(os.path.join(ckpt, f"{name}.safetensors"))
    _check_tensors(tensors, f"checkpoint {ckpt} (written by an earlier mtmg; delete OUT/ray)")
    extra = Path(ckpt, "optim.pt")
    if opt is not None and extra.exists():
        saved = torch.load(extra, weights_only=True)
        opt.load_state_dict(saved["opt"])
        if sched is not None and saved.get("sched") is not None:
            sched.load_state_dict(saved["sched"])
    return tensors, state
