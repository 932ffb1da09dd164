"""Linear probing: `python -m mtmg.probe --data SHARDS --encoders SPEC... --out DIR`.

For every encoder and shard set its input fits (RGB for CLIP, the student's bands for a
student): features of train, val and test extracted once, in-process, with the evaluation
preprocessing (`features`, cached across runs); then for every label set and train fraction a
linear classifier fit on train, its L2 penalty chosen on val, scored on val and test (`fit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mtmg import config, rundir, tracking
from mtmg.data import loader
from mtmg.errors import InputError
from mtmg.report import tables
from mtmg.stages.probe import encoders, features, fit
from mtmg.stages.probe.config import ProbeConfig

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
INPUTS = {"rgb": "RGB", "ms": "MS", "s1": "S1"}
Sets = list[tuple[loader.ShardSet, list[str]]]  # a shard set and the label sets to probe


def resolve_inputs(cfg: ProbeConfig) -> tuple[list[encoders.Spec], Sets]:
    """Check every input before anything is built or written: options, shard sets and their
    splits and label sets, encoder specs and which sets each encoder can read."""
    if not cfg.data or not cfg.encoders:
        raise InputError("give at least one --data shard set and one --encoders spec")
    tracking.check(cfg.report_to)
    for f in cfg.fractions:
        if not 0 < f <= 1:
            raise InputError(f"--fractions: {f:g} is not a share of the train split in (0, 1]")
    if any(wd < 0 for wd in cfg.weight_decays) or not cfg.weight_decays:
        raise InputError(f"--weight-decays: {cfg.weight_decays} must be penalties >= 0")
    sets: Sets = []
    for path in cfg.data:
        ds = loader.ShardSet.open(path if "://" in path else str(Path(path).resolve()))
        for split in ("train", "val"):
            if not ds.count(split):
                raise InputError(f"{ds.root}: no {split!r} split (fit on train, choose on val)")
        names = [n for n in cfg.nomenclature if n in ds.manifest["nomenclatures"]]
        names = [ds.nomenclature(n) for n in names or [None]]
        for n in names:
            loader.Targets.of(ds, n)  # a label set without a map from the stored one: an error
        sets.append((ds, names))
    for n in cfg.nomenclature:
        if not any(n in names for _, names in sets):
            raise InputError(f"--nomenclature {n}: no --data set has it")
    specs = [encoders.parse(text) for text in cfg.encoders]
    for spec in specs:
        if not any(_reads(spec, ds) for ds, _ in sets):
            raise InputError(f"--encoders {spec.text}: no --data set has its input bands")
    return specs, sets


def _reads(spec: encoders.Spec, ds: loader.ShardSet) -> bool:
    """Whether the encoder of `spec` can read `ds`: RGB from any set, a student's bands."""
    view = encoders.input_of(spec)
    return view == "rgb" or (ds.has_ms if view == "ms" else bool(ds.manifest.get("s1_bands")))


def run(cfg: ProbeConfig) -> dict[str, Any]:
    """The whole stage; returns the summary also written to OUT/summary.json. With `cluster`:
    as one task on the running cluster."""
    specs, sets = resolve_inputs(cfg)
    if cfg.cluster:
        from mtmg.runtime import remote

        local = dataclasses.replace(cfg, cluster=False)
        reads = [ds.root for ds, _ in sets]
        return remote.on_cluster(run, local, reads=reads, writes=cfg.out, gpu=cfg.gpu)
    t0 = time.perf_counter()
    with rundir.claim("probe", cfg, cfg.out, overwrite=cfg.overwrite), _threads(cfg.threads):
        out = Path(cfg.out).resolve()
        tables.save_config(config.to_dict(cfg), out / "config.yaml")
        use_gpu = cfg.gpu or (cfg.gpu is None and torch.cuda.is_available())
        device = torch.device("cuda" if use_gpu else "cpu")
        rows: list[dict[str, Any]] = []
        grid: list[dict[str, Any]] = []
        extracted: list[dict[str, Any]] = []
        labels: list[str] = []
        for spec in specs:
            enc = encoders.build(spec, cfg.student_features, device)
            labels.append(enc.label)
            if labels.count(enc.label) > 1:  # two specs of one kind: rows told apart
                enc.label = f"{enc.label} #{labels.count(enc.label)}"
            for ds, names in sets:
                if not _reads(spec, ds):
                    log.warning("%s cannot read %s (%s): skipped", enc.label, ds.name, ds.root)
                    continue
                feats = _features(cfg, enc, ds, device)
                extracted += [
                    {"encoder": enc.label, "dataset": ds.name, "split": s}
                    | {"cached": f.cached, "file": str(f.path)}
                    for s, f in feats.items()
                ]
                for name in names:
                    got = _probe(cfg, enc, ds, name, feats, device)
                    rows += got[0]
                    grid += got[1]
        return _write(cfg, out, rows, grid, extracted, time.perf_counter() - t0)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to `n` for the run (None: left as they are)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _features(cfg, enc, ds: loader.ShardSet, device) -> dict[str, features.Features]:
    return {
        s: features.extract(
            enc,
            ds,
            s,
            device,
            cache_dir=cfg.cache_dir,
            batch_size=cfg.eval_batch_size,
            workers=cfg.loader_workers,
        )
        for s in SPLITS
        if ds.count(s)
    }


def _probe(cfg, enc, ds, name: str, feats, device) -> tuple[list[dict], list[dict]]:
    """Rows (val and test per fraction) and the penalty grid of one (encoder, set, label set)."""
    targets = loader.Targets.of(ds, name)

    def xy(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        f = feats[split]
        y = targets.remap(f.y)
        keep = torch.ones(len(y), dtype=torch.bool) if targets.multi_label else y >= 0
        return f.x[keep].to(device), y[keep].to(device)

    (train_x, train_y), val = xy("train"), xy("val")
    test = xy("test") if "test" in feats else None
    metric = "mAP" if targets.multi_label else "top1"
    rows, grid = [], []
    for fraction in cfg.fractions:
        idx = fit.subsample(train_y.cpu(), fraction, cfg.seed).to(device)
        got = fit.choose(
            (train_x[idx], train_y[idx]),
            val,
            targets.n_classes,
            cfg.weight_decays,
            optimizer=cfg.optimizer,
            max_iter=cfg.max_iter,
        )
        base = {
            "encoder": enc.label,
            "input": INPUTS[enc.view],
            "dataset": ds.name,
            "nomenclature": name,
            "fraction": float(fraction),
            "n_train": len(idx),
            "metric": metric,
            "weight_decay": got.probe.weight_decay,
            "spec": enc.spec,
            "path": ds.root,
        }
        rows.append({**base, "split": "val", "value": got.val, "n": len(val[1])})
        if test is not None:
            value = fit.score(got.probe, *test)
            rows.append({**base, "split": "test", "value": value, "n": len(test[1])})
        chosen = got.probe.weight_decay
        grid += [
            {**base, "weight_decay": wd, "val": v, "chosen": wd == chosen} for wd, v in got.grid
        ]
    return rows, grid


def _write(cfg, out: Path, rows, grid, extracted, seconds: float) -> dict[str, Any]:
    """probe.parquet/.csv, probe.md, summary.json (with the penalty grid and the cache use)."""
    tables.write_table(rows, out / "probe")
    md = markdown(rows)
    (out / "probe.md").write_text(md + "\n")
    reused = sum(e["cached"] for e in extracted)
    summary = {
        "rows": rows,
        "table": md.splitlines(),
        "grid": grid,
        "features": extracted,
        "features_reused": reused,
        "features_extracted": len(extracted) - reused,
        "cache_dir": str(features.cache_root(cfg.cache_dir)),
        "seconds": round(seconds, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    test = [r for r in rows if r["split"] == "test"]
    names = ("encoder", "dataset", "nomenclature", "fraction", "metric")
    tracking.record_results(cfg.report_to, out, "probe", config.to_dict(cfg), test, names)
    return summary


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per (encoder, set, label set, fraction): val and test metric, the penalty."""
    lines = [
        "| encoder | dataset | nomenclature | fraction | train | metric | val | test "
        "| weight decay |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    what = ("encoder", "dataset", "nomenclature", "fraction")
    seen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(tuple(r[k] for k in what), {})[r["split"]] = r
    for (enc, ds, nom, frac), by in seen.items():
        r = by["val"]
        test = f"{by['test']['value']:.2f}" if "test" in by else ""
        lines.append(
            f"| {enc} | {ds} | {nom} | {frac:g} | {r['n_train']} | {r['metric']} | "
            f"{r['value']:.2f} | {test} | {r['weight_decay']:g} |"
        )
    return "\n".join(lines)
