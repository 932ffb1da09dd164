"""Evaluate theta(alpha) = (1 - alpha) theta_zs + alpha theta_ft for every alpha on the
validation splits, choose alpha (`mtmg.engine.select`), and report the test splits at alpha 0,
the chosen alpha and 1."""

from __future__ import annotations

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
    """Metrics of theta(alpha) on splits of the sets, each split's decoded batches kept up to
    `--eval-cache-gb` (shared evenly by the sets) for the next alpha."""

    def __init__(self, cfg, ctx, bundle, theta_zs, theta_ft, head_weights, sets: Sets) -> None:
        self.cfg, self.ctx, self.bundle, self.sets = cfg, ctx, bundle, sets
        self.thetas, self.head_weights = (theta_zs, theta_ft), head_weights
        self.visual = bundle.model.visual.to(ctx.device).eval()
        self.amp = loop.amp_dtype(cfg.precision, ctx.device)
        self.shard_sets = [loader.ShardSet.open(path) for _, path, _ in sets]
        self.budget = cfg.eval_cache_gb * 2**30 / len(sets)
        self.cached: dict[tuple[int, str], Any] = {}

    def batches(self, i: int, split: str) -> Any:
        if (i, split) not in self.cached:
            ds, nomen, b = self.shard_sets[i], self.sets[i][2], self.bundle
            targets = loader.Targets.of(ds, nomen)
            dec = loader.Decoder.of(ds, "rgb", targets, b.image_size, mean=b.mean, std=b.std)
            batch_loader = skeleton.eval_loader(self.cfg, self.ctx, ds, split, dec)
            cached = evaluate.materialize(batch_loader, self.budget)
            self.cached[(i, split)] = cached or batch_loader
        return self.cached[(i, split)]

    def rows(self, a: float, jobs: Jobs) -> list[dict[str, Any]]:
        """One row per (set, split) of `jobs` with theta(a) in the image tower."""
        weights.load_image_state(self.bundle.model, weights.interpolate(*self.thetas, a))
        out = []
        for i, split in jobs:
            ds = self.shard_sets[i]
            head = heads.ZeroShotHead.from_weights(self.head_weights[i]).to(self.ctx.device)
            m = evaluate.classification(
                self.ctx,
                lambda b, h=head: h(self.visual(b["rgb"])),
                self.batches(i, split),
                ds.task,
                self.amp,
            )
            if m is not None:
                main = "mAP" if ds.task == "multi-label" else "top1"
                nomen = ds.nomenclature(self.sets[i][2])
                out.append(
                    {
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
                )
        return out


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
