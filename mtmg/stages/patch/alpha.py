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
    visual = bundle.model.visual.to(ctx.device).eval()
    amp = loop.amp_dtype(cfg.precision, ctx.device)
    shard_sets = [loader.ShardSet.open(path) for _, path, _ in sets]
    budget = cfg.eval_cache_gb * 2**30 / len(sets)
    cached: dict[tuple[int, str], Any] = {}

    def batches(i: int, split: str) -> Any:
        if (i, split) not in cached:
            ds, nomen = shard_sets[i], sets[i][2]
            dec = loader.Decoder(
                tuple(ds.manifest["bands"]),
                ds.manifest["modality"],
                "rgb",
                loader.Targets.of(ds, nomen),
                bundle.image_size,
                bundle.image_size,
                bundle.mean,
                bundle.std,
            )
            batch_loader = skeleton.eval_loader(cfg, ctx, ds, split, dec)
            cached[(i, split)] = evaluate.materialize(batch_loader, budget) or batch_loader
        return cached[(i, split)]

    def run(a: float, jobs: list[tuple[int, str]]) -> list[dict]:
        weights.load_image_state(bundle.model, weights.interpolate(theta_zs, theta_ft, a))
        out = []
        for i, split in jobs:
            ds = shard_sets[i]
            head = heads.ZeroShotHead.from_weights(head_weights[i]).to(ctx.device)
            m = evaluate.classification(
                ctx, lambda b, h=head: h(visual(b["rgb"])), batches(i, split), ds.task, amp
            )
            if m is not None:
                main = "mAP" if ds.task == "multi-label" else "top1"
                out.append(
                    {
                        "dataset": ds.name,
                        "path": sets[i][1],
                        "role": sets[i][0],
                        "split": split,
                        "alpha": a,
                        "metric": main,
                        "value": m[main],
                        "n": m["n"],
                        "device": ctx.device.type,
                        "amp": "bf16" if amp else "fp32",
                    }
                )
        return out

    val_jobs = [
        (i, "val")
        for i, (role, _, _) in enumerate(sets)
        if role in ("patching", "supported") and shard_sets[i].count("val")
    ]
    rows = [r for a in cfg.alphas for r in run(float(a), val_jobs)]
    base = None  # constrained rule: supported at alpha 0 bounds it, a candidate or not
    if cfg.selection == "constrained" and all(float(a) != 0.0 for a in cfg.alphas):
        zero = run(0.0, [(i, s) for i, s in val_jobs if sets[i][0] == "supported"])
        base = select.curves(zero).get("supported", {}).get(0.0)
    chosen = None
    if ctx.is_main:
        chosen = select.select_alpha(rows, cfg.selection, cfg.tolerance, base=base)
    chosen = ctx.broadcast(chosen)
    cached.clear()
    test_jobs = [(i, "test" if ds.count("test") else "val") for i, ds in enumerate(shard_sets)]
    for a in sorted({0.0, chosen, 1.0}):
        rows += [{**r, "selected": a == chosen} for r in run(a, test_jobs)]
    weights.load_image_state(bundle.model, theta_ft)
    return rows, chosen
