"""Evaluation: predictions over a split on every rank, gathered on rank 0 into metrics.

Each rank scores its own part of the split (see `mtmg.data.loader`); rank 0 gathers and orders the
predictions by sample key, so 1 and N workers give the same numbers on the same weights.
Decoded batches can be kept in memory and reused, since an alpha sweep evaluates one split
many times with different weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from mtmg.engine import metrics
from mtmg.engine.context import WorkerContext

Batch = dict[str, Any]


def materialize(loader: Iterable[Batch], max_bytes: float) -> list[Batch] | None:
    """The loader's batches as a list, or None once they would exceed `max_bytes`."""
    out, size = [], 0
    for batch in loader:
        size += sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))
        if size > max_bytes:
            return None
        out.append(batch)
    return out


@torch.no_grad()
def predict(
    fn: Callable[[Batch], torch.Tensor],
    batches: Iterable[Batch],
    device: torch.device,
    amp: torch.dtype | None = None,
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, outputs, targets) of `fn` over the batches, outputs as float32 on the CPU."""
    keys, outs, targets = [], [], []
    for batch in batches:
        batch = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = fn(batch)
        keys.extend(batch["__key__"])
        outs.append(out.float().cpu())
        targets.append(batch["target"].cpu())
    if not outs:
        return [], torch.empty(0), torch.empty(0)
    return keys, torch.cat(outs), torch.cat(targets)


def gather(
    ctx: WorkerContext, keys: list[str], outs: torch.Tensor, targets: torch.Tensor
) -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
    """All ranks' predictions on rank 0, sorted by key (None on other ranks)."""
    parts = ctx.all_gather((keys, outs, targets))
    if not ctx.is_main:
        return None
    parts = [p for p in parts if p[0]]
    all_keys = [k for p in parts for k in p[0]]
    if len(set(all_keys)) != len(all_keys):
        raise RuntimeError("a sample was evaluated twice: shard parts overlap")
    order = sorted(range(len(all_keys)), key=all_keys.__getitem__)
    outs = torch.cat([p[1] for p in parts])[order]
    targets = torch.cat([p[2] for p in parts])[order]
    return [all_keys[i] for i in order], outs, targets


def classification(
    ctx: WorkerContext,
    fn: Callable[[Batch], torch.Tensor],
    batches: Iterable[Batch],
    task: str,
    amp: torch.dtype | None = None,
) -> dict[str, Any] | None:
    """Classification metrics of `fn` (logits) over a split, with the per-class values and
    support (`metrics.per_class`) as "per_class" and "support"; on rank 0, None elsewhere."""
    got = gather(ctx, *predict(fn, batches, ctx.device, amp))
    if got is None:
        return None
    keys, logits, targets = got
    out = metrics.classification_metrics(logits, targets, task)
    out["per_class"], out["support"] = metrics.per_class(logits, targets, task)
    out["n"] = len(keys)
    return out


def class_values(classes: list[str], m: dict[str, Any]) -> list[tuple[str, float | None, int]]:
    """(class, value, support) of every class from `classification`'s metrics `m`: what a
    metrics row keeps under "per_class" (`mtmg.report.tables.write_metrics` writes them)."""
    return list(zip(classes, m["per_class"], m["support"], strict=True))
