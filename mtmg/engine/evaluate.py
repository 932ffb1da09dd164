"""Evaluation: predictions over a split on every rank, gathered on rank 0 into metrics.

Each rank scores its own part of the split (see `mtmg.data.loader`); rank 0 gathers and orders the
predictions by sample key, so 1 and N workers give the same numbers on the same weights.
Decoded batches can be kept in memory and reused, since an alpha sweep evaluates one split
many times with different weights. A set scored in several nomenclatures (BigEarthNet in 5, 19
and 43 classes) is decoded once in its stored one and run through the model once:
`classification_by_heads` applies every nomenclature's head to the same features and maps the
targets (`TargetMap`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from mtmg.data.labels import TargetMap
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
    return _scores(logits, targets, task, len(keys))


def _scores(logits: torch.Tensor, targets: torch.Tensor, task: str, n: int) -> dict[str, Any]:
    out = metrics.classification_metrics(logits, targets, task)
    out["per_class"], out["support"] = metrics.per_class(logits, targets, task)
    out["n"] = n
    return out


def classification_by_heads(
    ctx: WorkerContext,
    features: Callable[[Batch], torch.Tensor],
    heads: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], TargetMap]],
    batches: Iterable[Batch],
    task: str,
    amp: torch.dtype | None = None,
) -> list[dict[str, Any]] | None:
    """`classification` of every (head, target map) in `heads` over one pass of the batches:
    `features` once per batch, every head's logits from them (in the same autocast), each
    scored against the batches' targets through its map. One metrics dict per head, on rank
    0; None elsewhere. The metrics equal scoring each head in a pass of its own."""
    widths = [m.n_classes for _, m in heads]

    def fn(batch: Batch) -> torch.Tensor:
        f = features(batch)
        return torch.cat([h(f) for h, _ in heads], dim=1)

    got = gather(ctx, *predict(fn, batches, ctx.device, amp))
    if got is None:
        return None
    keys, logits, targets = got
    if not keys:  # nothing scored: what `classification` makes of an empty split
        return [_scores(logits, targets, task, 0) for _ in heads]
    if logits.shape[1] != sum(widths):
        raise ValueError(f"the heads give {logits.shape[1]} logits, their maps {widths}")
    parts = logits.split(widths, dim=1)
    return [_scores(p, m(targets), task, len(keys)) for p, (_, m) in zip(parts, heads, strict=True)]


def group_jobs(
    jobs: Iterable[tuple[int, str]], paths: Sequence[str]
) -> dict[tuple[str, str], list[int]]:
    """(set index, split) jobs grouped by (shard set path, split), in the order they first
    occur: the sets of a group are one set in several nomenclatures (or roles), scored in one
    pass by `classification_by_heads`."""
    out: dict[tuple[str, str], list[int]] = {}
    for i, split in jobs:
        out.setdefault((paths[i], split), []).append(i)
    return out


def class_values(classes: list[str], m: dict[str, Any]) -> list[tuple[str, float | None, int]]:
    """(class, value, support) of every class from `classification`'s metrics `m`: what a
    metrics row keeps under "per_class" (`mtmg.report.tables.write_metrics` writes them)."""
    return list(zip(classes, m["per_class"], m["support"], strict=True))
