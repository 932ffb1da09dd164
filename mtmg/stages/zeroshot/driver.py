"""Zero-shot rows of any CLIP:
`python -m mtmg.zeroshot --data SHARDS ... --out DIR --models NAME=MODEL:PRETRAINED ...`

The baselines of the paper's tables (RemoteCLIP, SkyCLIP, GeoRSCLIP, or any open_clip tag or
checkpoint) scored as the patching stage scores alpha 0: the RGB composite with the model's
evaluation preprocessing, each set's zero-shot head from its manifest's class names and
templates (`heads.dataset_heads`), the patching stage's evaluator (`stages.patch.alpha`) and
metrics. In this process (one model at a time, on the GPU when there is one): a zero-shot pass
is one read of each test split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from mtmg import config, rundir, tracking
from mtmg.data import evalsets, loader
from mtmg.engine import evaluate, metrics
from mtmg.engine.context import WorkerContext
from mtmg.errors import InputError, ModelLoadError
from mtmg.models import clip, configs, heads, pretrained, weights
from mtmg.report import tables
from mtmg.stages.patch.alpha import _Evaluator as Evaluator
from mtmg.stages.patch.config import Sets
from mtmg.stages.zeroshot.config import ModelSpec, ZeroShotConfig

__all__ = ["ZeroShotConfig", "resolve_inputs", "run", "score"]

Rows = list[dict[str, Any]]
MARKER = "zeroshot.md"  # the table; `mtmg.report` knows a zero-shot dir by it


def resolve_inputs(cfg: ZeroShotConfig) -> tuple[list[ModelSpec], Sets]:
    """Every spec's architecture and weights file, every shard set, checked before any model is
    built. Returns the specs and the (role, absolute path, nomenclature) of every set."""
    specs = cfg.specs()
    tracking.check(cfg.report_to)
    if cfg.model_config:
        configs.register_model_config(cfg.model_config)
    for s in specs:
        try:
            configs.check_model_name(s.model)
            pretrained.resolve_pretrained(s.model, s.pretrained, cache_dir=None)
        except ModelLoadError as e:
            raise ModelLoadError(f"--models {s.name}={s.model}:{s.pretrained}: {e}") from e
    sets: Sets = []
    for e in evalsets.check(cfg.data, "--data"):  # PATH or PATH:NOMENCLATURE
        ds = loader.ShardSet.open(e.path)
        if not ds.count("test") and not ds.count("val"):
            raise InputError(f"--data {e}: no test or val split to score")
        sets.append(("eval", e.path, e.nomenclature))
    return specs, sets


def run(cfg: ZeroShotConfig) -> dict[str, Any]:
    """Score every spec on every set; writes OUT (see `mtmg.zeroshot --help`), returns the
    summary also written to OUT/summary.json. With `cluster`: as one task on the
    running cluster."""
    specs, sets = resolve_inputs(cfg)
    if cfg.cluster:
        from mtmg.runtime import remote

        local = dataclasses.replace(cfg, cluster=False)
        reads = [p for _, p, _ in sets]
        return remote.on_cluster(run, local, reads=reads, writes=cfg.out, gpu=cfg.gpu)
    t0 = time.perf_counter()
    ctx = WorkerContext(device=_device(cfg.gpu))
    # a model that fails to load fails the run before any result: `claim` then frees OUT
    with rundir.claim("zeroshot", cfg, cfg.out, overwrite=cfg.overwrite):
        out = Path(cfg.out).resolve()
        tables.save_config(config.to_dict(cfg), out / "config.yaml")
        rows, per_class = [], []
        for spec in specs:
            got, classes = score(cfg, ctx, spec, sets)
            rows += got
            per_class += classes
        tables.write_table(rows, out / "metrics")
        tables.write_table(per_class, out / "per_class")
        md = markdown(rows)
        (out / MARKER).write_text(md + "\n")
        summary = {
            "stage": "zeroshot",
            "models": [vars(s) for s in specs],
            "data": [p for _, p, _ in sets],
            "table": md.splitlines(),
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1),
            "ran_on": {"host": socket.gethostname(), "pid": os.getpid()},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        names = ("model", "dataset", "nomenclature", "split", "metric")
        tracking.record_results(cfg.report_to, out, "zeroshot", config.to_dict(cfg), rows, names)
        return summary


def _device(gpu: bool | None) -> torch.device:
    if gpu and not torch.cuda.is_available():
        raise InputError("--gpu: no CUDA device here")
    use = gpu if gpu is not None else torch.cuda.is_available()
    return torch.device("cuda" if use else "cpu")


def score(
    cfg: ZeroShotConfig, ctx: WorkerContext, spec: ModelSpec, sets: Sets
) -> tuple[Rows, Rows]:
    """(metric rows, per-class rows) of one CLIP on the test (else val) split of every set."""
    torch.manual_seed(cfg.seed)  # a model without pretrained weights starts from the seed
    bundle = clip.load_clip(spec.model, spec.pretrained, model_config=cfg.model_config)
    shard_sets = [loader.ShardSet.open(p) for _, p, _ in sets]
    head_weights = heads.dataset_heads(
        bundle,
        spec.model,
        [(ds, n) for ds, (_, _, n) in zip(shard_sets, sets, strict=True)],
        cfg.cache_dir,
        cfg.templates,
    )
    theta = weights.image_state(bundle.model)
    ev = Evaluator(cfg, ctx, bundle, theta, theta, head_weights, sets)
    rows, per_class = [], []
    for i, ds in enumerate(shard_sets):
        split = "test" if ds.count("test") else "val"
        head = heads.ZeroShotHead.from_weights(head_weights[i]).to(ctx.device)
        keys, logits, targets = evaluate.gather(
            ctx,
            *evaluate.predict(
                lambda b, h=head: h(ev.visual(b["rgb"])), ev.batches(i, split), ctx.device, ev.amp
            ),
        )
        ev.cached.clear()
        m = metrics.classification_metrics(logits, targets, ds.task)
        main = metrics.MAIN_METRIC[ds.task]
        values, support = class_values(logits, targets, ds.task)
        row = {
            "model": spec.name,
            "arch": spec.model,
            "pretrained": spec.pretrained,
            "dataset": ds.name,
            "nomenclature": ds.nomenclature(sets[i][2]),
            "path": sets[i][1],
            "split": split,
            "metric": main,
            "value": m[main],
            "chance": chance(targets, ds.task, logits.shape[1]),
            "n": len(keys),
            "device": ctx.device.type,
            "amp": "bf16" if ev.amp else "fp32",
        }
        rows.append(row)
        keep = {k: v for k, v in row.items() if k not in ("metric", "value", "chance", "n")}
        metric = "AP" if ds.task == "multi-label" else "accuracy"
        per_class += [
            {**keep, "class": c, "metric": metric, "value": v, "n": n}
            for c, v, n in zip(ds.classes(sets[i][2]), values, support, strict=True)
        ]
    return rows, per_class


def class_values(
    logits: torch.Tensor, targets: torch.Tensor, task: str
) -> tuple[list[float | None], list[int]]:
    """Per-class AP (multi-label) or accuracy (single-label) in %, None for a class without
    samples; and each class's positives or samples."""
    if task == "multi-label":
        support = targets.bool().sum(dim=0).tolist()
        return metrics.multilabel_ap(logits, targets)["per_class_ap"], [int(n) for n in support]
    labels = targets.long()
    hit = (logits.argmax(dim=1) == labels).double()
    count = torch.bincount(labels, minlength=logits.shape[1])
    right = torch.bincount(labels, weights=hit, minlength=logits.shape[1])
    values = [100.0 * float(r) / int(c) if c else None for r, c in zip(right, count, strict=True)]
    return values, [int(c) for c in count]


def chance(targets: torch.Tensor, task: str, classes: int) -> float:
    """The metric of a guess that knows nothing (%): 1/classes for top-1; for mAP the mean
    prevalence of the classes with positives (a random ranking's expected AP)."""
    if task == "single-label":
        return 100.0 / classes
    prevalence = targets.float().mean(dim=0)
    present = prevalence > 0
    return float(prevalence[present].mean()) * 100.0 if bool(present.any()) else math.nan


def markdown(rows: Rows) -> str:
    """Models x "dataset metric" columns, and the chance level of each column."""
    cols = list(dict.fromkeys(f"{r['dataset']} ({r['nomenclature']}) {r['metric']}" for r in rows))
    cells = {(r["model"], f"{r['dataset']} ({r['nomenclature']}) {r['metric']}"): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in models:
        vals = [cells.get((m, c)) for c in cols]
        lines.append(
            f"| {m} | " + " | ".join(f"{v['value']:.2f}" if v else "" for v in vals) + " |"
        )
    first = {c: next(r for (_, k), r in cells.items() if k == c) for c in cols}
    lines.append("| chance | " + " | ".join(f"{first[c]['chance']:.2f}" for c in cols) + " |")
    return "\n".join(lines)
