"""Evaluate theta(alpha) = (1 - alpha) theta_zs + alpha theta_ft for every alpha on the
validation splits, choose alpha (`mtmg.engine.select`), and report the test splits at alpha 0,
the chosen alpha and 1."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from mtmg.data import loader
from mtmg.engine import evaluate, loop, select
from mtmg.engine.context import WorkerContext
from mtmg.models import clip, heads, weights
from mtmg.stages import skeleton
from mtmg.stages.patch.config import PatchConfig, Sets

Jobs = list[tuple[int, str]]  # (index into the sets, split)


class _Evaluator:
    """Metrics of theta(alpha) on splits of the sets. A shard set's split is decoded once, in
    its stored nomenclature, for every set of that path (one set in several nomenclatures or
    roles), and run through the image tower once for all their heads; its decoded batches are
    kept up to `--eval-cache-gb` (shared evenly by the paths) for the next alpha."""

    def __init__(self, cfg, ctx, bundle, theta_zs, theta_ft, head_weights, sets: Sets) -> None:
        self.cfg, self.ctx, self.bundle, self.sets = cfg, ctx, bundle, sets
        self.thetas, self.head_weights = (theta_zs, theta_ft), head_weights
        self.visual = bundle.model.visual.to(ctx.device).eval()
        self.amp = loop.amp_dtype(cfg.precision, ctx.device)
        self.shard_sets = [loader.ShardSet.open(path) for _, path, _ in sets]
        self.budget = cfg.eval_cache_gb * 2**30 / len({path for _, path, _ in sets})
        self.cached: dict[tuple[str, str], Any] = {}  # (path, split) -> batches

    def batches(self, i: int, split: str) -> Iterable[evaluate.Batch]:
        """The split of set `i`, targets in its nomenclature (for a caller scoring one set:
        `mtmg.zeroshot`), from the decoding its path's sets share."""
        decoded, tm = self._decoded(i, split), self._target_map(i)
        return decoded if tm.mapping is None else _Mapped(decoded, tm)

    def _target_map(self, i: int) -> evaluate.TargetMap:
        targets = loader.Targets.of(self.shard_sets[i], self.sets[i][2])
        return evaluate.TargetMap(targets.mapping, targets.n_classes)

    def _decoded(self, i: int, split: str) -> Any:
        """The split of set `i`'s shard set, targets in its stored nomenclature: decoded once
        for every set of that path."""
        key = (self.sets[i][1], split)
        if key not in self.cached:
            ds, b = self.shard_sets[i], self.bundle
            targets = loader.Targets.of(ds, ds.manifest["label_nomenclature"])
            dec = loader.Decoder.of(ds, "rgb", targets, b.image_size, mean=b.mean, std=b.std)
            batch_loader = skeleton.eval_loader(self.cfg, self.ctx, ds, split, dec)
            cached = evaluate.materialize(batch_loader, self.budget)
            self.cached[key] = cached or batch_loader
        return self.cached[key]

    def rows(self, a: float, jobs: Jobs) -> list[dict[str, Any]]:
        """One row per (set, split) of `jobs`, in their order, with theta(a) in the image tower
        (on rank 0; none elsewhere)."""
        weights.load_image_state(self.bundle.model, weights.interpolate(*self.thetas, a))
        got = {}
        for (_, split), group in evaluate.group_jobs(jobs, [p for _, p, _ in self.sets]).items():
            ds = self.shard_sets[group[0]]
            scored = [
                (
                    heads.ZeroShotHead.from_weights(self.head_weights[i]).to(self.ctx.device),
                    self._target_map(i),
                )
                for i in group
            ]
            ms = evaluate.classification_by_heads(
                self.ctx,
                lambda b: self.visual(b["rgb"]),
                scored,
                self._decoded(group[0], split),
                ds.task,
                self.amp,
            )
            if ms is None:  # not rank 0
                continue
            for i, m in zip(group, ms, strict=True):
                got[(i, split)] = self._row(i, split, a, m)
        return [got[j] for j in jobs if j in got]

    def _row(self, i: int, split: str, a: float, m: dict[str, Any]) -> dict[str, Any]:
        ds = self.shard_sets[i]
        main = "mAP" if ds.task == "multi-label" else "top1"
        nomen = ds.nomenclature(self.sets[i][2])
        return {
            "dataset": ds.name,
            "nomenclature": nomen,
            "path": self.sets[i][1],
            "role": self.sets[i][0],
            "split": split,
            "alpha": a,
            "metric": main,
            "value": m[main],
            "n": m["n"],
            "device": self.ctx.device.type,
            "amp": "bf16" if self.amp else "fp32",
            "per_class": evaluate.class_values(ds.classes(nomen), m),
        }


class _Mapped:
    """Batches with their targets mapped (`evaluate.TargetMap`), as often as iterated."""

    def __init__(self, batches: Iterable[evaluate.Batch], tm: evaluate.TargetMap) -> None:
        self.batches, self.tm = batches, tm

    def __iter__(self) -> Iterator[evaluate.Batch]:
        return ({**b, "target": self.tm(b["target"])} for b in self.batches)


def search(
    cfg: PatchConfig,
    ctx: WorkerContext,
    bundle: clip.ClipBundle,
    theta_zs: dict[str, torch.Tensor],
    theta_ft: dict[str, torch.Tensor],
    head_weights: list[torch.Tensor],
    sets: Sets,
) -> tuple[list[dict[str, Any]], float]:
    """Validation metrics for every alpha, the chosen alpha, test metrics at {0, chosen, 1}."""
    ev = _Evaluator(cfg, ctx, bundle, theta_zs, theta_ft, head_weights, sets)
    val_jobs = [
        (i, "val")
        for i, (role, _, _) in enumerate(sets)
        if role in ("patching", "supported") and ev.shard_sets[i].count("val")
    ]
    rows = [r for a in cfg.alphas for r in ev.rows(float(a), val_jobs)]
    base = None  # constrained rule: supported at alpha 0 bounds it, a candidate or not
    if cfg.selection == "constrained" and all(float(a) != 0.0 for a in cfg.alphas):
        zero = ev.rows(0.0, [(i, s) for i, s in val_jobs if sets[i][0] == "supported"])
        base = select.curves(zero).get("supported", {}).get(0.0)
    chosen = None
    if ctx.is_main:
        chosen = select.select_alpha(rows, cfg.selection, cfg.tolerance, base=base)
    chosen = ctx.broadcast(chosen)
    ev.cached.clear()
    test_jobs = [(i, "test" if ds.count("test") else "val") for i, ds in enumerate(ev.shard_sets)]
    for a in sorted({0.0, chosen, 1.0}):
        rows += [{**r, "selected": a == chosen} for r in ev.rows(a, test_jobs)]
    weights.load_image_state(bundle.model, theta_ft)
    return rows, chosen
