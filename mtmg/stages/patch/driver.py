"""Stage 1, PAINT patching: fine-tune CLIP's image tower on the patching task with a frozen
zero-shot head, interpolate with the zero-shot weights, choose alpha on validation splits.

`python -m mtmg.patch --data SHARDS [--joint-data SHARDS ...] --out DIR [--supported SHARDS ...]`

The driver validates inputs, builds the zero-shot heads and puts the zero-shot weights in the
object store; `worker` (`loop`, plain PyTorch, run by Ray Train on N DDP workers) fine-tunes
with a checkpoint per epoch, then evaluates theta(alpha) for every alpha (`alpha`); the driver
writes the outputs.

Joint patching (PAINT's patching on several tasks with one model): `--joint-data` adds patching
sets that are fine-tuned on together with `--data`, then interpolated once. PAINT's released
code (mlfoundations/patching, src/finetune.py and src/patch.py) fine-tunes on a single
`--train-dataset` through one frozen head and has no joint path, so how batches are mixed is
mtmg's choice:
- every step takes one batch of every patching set (`--batch-size` split evenly between them),
  runs the image tower once on their concatenation, scores each part with that set's own frozen
  zero-shot head and loss (BCE for multi-label, cross-entropy for single-label sets) and
  averages the per-set losses. Each task weighs the same whatever its size or loss scale (the
  selection rule weighs them the same too), a multi-label and a single-label set can be mixed,
  and one forward and one backward per step leave DDP's gradient sync as it is;
- an epoch is one pass over the set with the most steps; a shorter set starts over, reshuffled
  (its pass p of epoch e is shuffled as epoch e + p * epochs), until that pass ends. Every
  set's loader yields the same number of full batches on every rank (`loader.make_loader`), so
  all ranks run the same steps;
- alpha is chosen on the validation splits with the patching metric = the mean over the
  patching sets (`mtmg.engine.select`); every patching set is reported at alpha 0, the chosen
  alpha and 1. With one patching set all of this reduces to plain PAINT patching, unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mtmg import config
from mtmg.data import evalsets, loader
from mtmg.engine import loop, select
from mtmg.models import clip, heads, weights
from mtmg.report import tables
from mtmg.stages import job
from mtmg.stages.patch.config import ALPHAS, PatchConfig, Sets
from mtmg.stages.patch.loop import worker

__all__ = ["ALPHAS", "PatchConfig", "build_heads", "resolve_inputs", "run", "worker"]


def resolve_inputs(cfg: PatchConfig) -> tuple[clip.ClipBundle, Sets]:
    """Check every input before any training: shard sets, splits, model and checkpoint.

    Returns the (role, absolute path, nomenclature) of every dataset, the patching sets first.
    """
    paths = [job.absolute(p) for p in cfg.patching]
    if len(set(paths)) != len(paths):
        raise ValueError(f"--data/--joint-data: a shard set is given twice ({', '.join(paths)})")
    nomens = _nomenclatures(cfg.nomenclature, paths)
    sets = [("patching", p, n) for p, n in zip(paths, nomens, strict=True)]
    sets += [("supported", job.absolute(p), None) for p in cfg.supported]
    sets += [("eval", e.path, e.nomenclature) for e in evalsets.check(cfg.eval_data)]
    patching: list[loader.ShardSet] = []
    for role, path, nomen in sets:
        ds = loader.ShardSet.open(path)
        patching += [ds] if role == "patching" else []
        need = ("train", "val") if role == "patching" else ()
        need += ("val",) if role == "supported" else ()
        for split in need:
            if not ds.count(split):
                raise ValueError(f"{path}: the {role} dataset has no {split!r} split")
        if not ds.count("test") and not ds.count("val"):
            raise ValueError(f"{path}: no test or val split to evaluate on")
        ds.classes(nomen)
    torch.manual_seed(cfg.seed)  # a model without pretrained weights starts from the seed
    bundle = clip.load_clip(cfg.model, cfg.pretrained, model_config=cfg.model_config)
    if cfg.selection not in select.RULES:
        raise ValueError(f"unknown selection rule {cfg.selection!r}")
    per_set = max(1, cfg.batch_size // len(paths))  # the loop's batch per set, as it splits it
    for ds in patching:
        loop.train_steps(ds, per_set, cfg.epochs, cfg.seed, cfg.workers)
    return bundle, sets


def _nomenclatures(name: str | None, paths: Sequence[str]) -> list[str | None]:
    """Each patching set's label set: `name` where the set has it, else the set's default. One
    set must have it (an error naming the set otherwise), as must one of several."""
    if name is None or len(paths) == 1:
        return [name] * len(paths)
    have = [name in loader.ShardSet.open(p).manifest["nomenclatures"] for p in paths]
    if not any(have):
        raise ValueError(f"--nomenclature {name}: no patching set has it ({', '.join(paths)})")
    return [name if h else None for h in have]


def build_heads(cfg: PatchConfig, bundle: clip.ClipBundle, sets: Sets) -> list[torch.Tensor]:
    """Zero-shot head weights of every dataset in its nomenclature, cached."""
    datasets = [(loader.ShardSet.open(p), n) for _, p, n in sets]
    return heads.dataset_heads(bundle, cfg.model, datasets, cfg.cache_dir, cfg.templates)


def run(cfg: PatchConfig, *, on_train_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """The whole stage; returns the summary also written to OUT/summary.json.

    `on_train_start()` is called once the driver has handed the fine-tune to Ray Train and
    only waits for it (see `mtmg.runtime.train.fit`)."""
    t0 = time.perf_counter()
    bundle, sets = resolve_inputs(cfg)
    with job.claimed("patch", cfg) as out, job.tracked("patch", cfg, out) as dest:
        tables.save_config(config.to_dict(cfg), out / "config.yaml")
        head_weights = build_heads(cfg, bundle, sets)
        theta_zs = weights.image_state(bundle.model)
        save_file(theta_zs, str(out / "theta_zs.safetensors"))
        absolute = dataclasses.replace(
            cfg, data=job.absolute(cfg.data), joint_data=tuple(map(job.absolute, cfg.joint_data))
        )
        conf = {"build_kwargs": bundle.build_kwargs, "sets": sets, "tracking": dest}
        shared = {
            "zeroshot": {k: v.cpu() for k, v in bundle.model.state_dict().items()},
            "heads": head_weights,
        }
        theta_ft, state = job.fit(
            worker,
            absolute,
            conf,
            shared=shared,
            out=out,
            name="patch",
            weights="visual",
            on_start=on_train_start,
        )
        seconds = time.perf_counter() - t0
        summary = write_outputs(cfg, out, bundle, theta_zs, theta_ft, state, seconds)
        track_results(dest, summary, state["rows"])
        return summary


def track_results(dest, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The alpha curve (validation, at step 100 * alpha), the chosen alpha and the test metrics
    at it, and the metrics tables, to the run's trackers (--report-to)."""
    curves = select.curves(rows, "val")
    alphas = sorted({a for by in curves.values() for a in by})
    curve = [
        (round(100 * a), {f"alpha_curve/{role}": by[a] for role, by in curves.items() if a in by})
        for a in alphas
    ]
    test = tracked_test([r for r in summary["test"] if r["selected"]])
    results = {"alpha": summary["alpha"], **test}
    tables_ = {"test": summary["test"], "metrics": rows}
    job.finish_tracking(dest, summary["steps"], results, tables_, curve)


def tracked_test(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Test rows as tracked metrics, `test/<role>/<dataset>/<metric>`; `<dataset>:<nomenclature>`
    where one dataset is scored in several nomenclatures in the same role."""
    many = collections.Counter((r["role"], r["dataset"]) for r in rows)
    return {
        f"test/{r['role']}/{r['dataset']}"
        + (f":{r['nomenclature']}" if many[(r["role"], r["dataset"])] > 1 else "")
        + f"/{r['metric']}": r["value"]
        for r in rows
    }


def write_outputs(cfg, out: Path, bundle, theta_zs, theta_ft, state, seconds) -> dict[str, Any]:
    """theta_ft, the metrics table, the alpha curve, the patched open_clip checkpoint."""
    save_file(theta_ft, str(out / "theta_ft.safetensors"))
    if cfg.model_config:  # the run dir stays self-contained (the alignment teacher reads it)
        shutil.copyfile(cfg.model_config, out / "model_config.json")
    rows = [{**r, "selected": r.get("selected")} for r in state["rows"]]
    rows = tables.write_metrics(rows, out)
    chosen = state["alpha"]
    curves = select.curves(rows, "val")
    k = len(cfg.patching)
    what = f"patching (mean of {k} sets)" if k > 1 else "patching"
    title = f"{cfg.model}: {what} vs supported (validation)"
    tables.plot_alpha_curve(curves, chosen, out / "alpha_curve.png", title=title)
    weights.load_image_state(bundle.model, weights.interpolate(theta_zs, theta_ft, chosen))
    checkpoint = out / "patched.safetensors"
    weights.save_checkpoint(bundle.model, checkpoint, build_kwargs=bundle.build_kwargs)
    test = [r for r in rows if r["split"] != "val" or r.get("selected") is not None]
    summary = {
        "model": cfg.model,
        "patching": [job.absolute(p) for p in cfg.patching],
        "alpha": chosen,
        "selection": cfg.selection,
        "steps": state["step"],
        "final_train_loss": state["losses"][-1][1] if state["losses"] else None,
        "epochs": state.get("stats", []),
        "test": [r for r in test if r.get("selected") is not None],
        "patched_checkpoint": str(checkpoint),
        "load_with": f"open_clip.create_model({cfg.model!r}, pretrained='patched.safetensors')",
    }
    return job.write_summary(out, summary, seconds)
