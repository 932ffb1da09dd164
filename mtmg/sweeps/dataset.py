"""The dataset sweep: which patching dataset, or mixture of datasets (PAINT's joint
patching), helps which evaluation dataset.

`python sweeps/dataset_sweep.py --patching ENTRY ... [--eval-data SHARDS ...]
[--supported SHARDS ...] --model NAME --pretrained TAG --out DIR` runs one Tune trial per
entry of `--patching`: a shard set, or shard sets joined by `+` (`A+B`: a mixture). The trial
fine-tunes CLIP's image tower on that set, or on the mixture's sets together (`mtmg.patch`'s
joint patching: every step one batch of each set, each through its own head and loss), in the
trial's own process (`mtmg.patch.worker`), selects alpha on validation (PAINT's rule with the
supported sets, the patching metric the mean over the entry's sets; `mtmg.engine.select`) and
evaluates zero-shot (alpha 0), patched (chosen alpha) and fine-tuned (alpha 1) weights on the
test split (val where there is none) of every evaluation dataset: every patching set (alone or
in a mixture), the supported sets and `--eval-data`. The zero-shot weights and every dataset's
zero-shot head are built once by the driver and go to the object store once.

Result: the patching-entries x evaluation-datasets matrix of gains over zero-shot (patched
minus zero-shot metric, in points of mAP or top-1) as gains.parquet/.csv (long form, with the
zero-shot, patched and fine-tuned values), a heat map (gains.png) and summary.md; one row per
trial in sweep.parquet/.csv (a mixture's row is labelled `A+B`, its `self_gain` the mean gain
on its own sets); best_config.yaml is the `mtmg.patch --config` of the entry with the largest
mean gain (`--data A --joint-data B` for a mixture). A patching dataset that cannot be patched
(no train or val split) fails its own trials, recorded with its error naming the set; the
others finish.

An entry that is itself a shard set is one set even when its path holds a `+`; an entry that
reads both as one set and as a mixture is refused as ambiguous.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtmg import config, errors
from mtmg.data import loader as data
from mtmg.engine import select
from mtmg.models import clip as models
from mtmg.models import heads
from mtmg.runtime import tuner as tuning
from mtmg.stages.patch import driver as patch
from mtmg.sweeps.backbone.driver import (
    _abs,
    _unique,
    check_evaluable,
    check_patching,
    dataset_labels,
    eval_values,
    finished_rows,
    heatmap,
    patch_config,
    run_patch,
    trial_device,
    val_values,
)

log = logging.getLogger(__name__)
option = config.option
NAME = "dataset_sweep"
TRIAL_MODULES = (__name__,)  # what trial processes import (preloaded when embedded)


@dataclass(frozen=True)
class DatasetSweepConfig(tuning.SweepConfig):
    """Options of the dataset sweep (the common sweep options first)."""

    patching: tuple[str, ...] = option(
        (), help="what to patch on, one trial each: a shard set, or shard sets joined by '+' "
        "(A+B: a mixture, PAINT's joint patching)"
    )  # fmt: skip
    eval_data: tuple[str, ...] = option(
        (), help="more evaluation shard sets (patching and supported sets are always evaluated)"
    )
    supported: tuple[str, ...] = option(
        (), help="supported-task shard sets: alpha selection (PAINT's rule) and evaluation"
    )
    model: str | None = option(None, help="open_clip model (default: mtmg.patch's, ViT-B-32)")
    pretrained: str = option(
        "", help="open_clip tag or weight file, 'none' for random init (default: mtmg.patch's)"
    )
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    patch_config: str | None = option(
        None, help="YAML of further mtmg.patch options (lr, epochs, ...); flags override it"
    )
    epochs: int | None = option(None, help="fine-tuning epochs per trial")
    batch_size: int | None = option(None, help="batch size per trial")
    lr: float | None = option(None, help="learning rate per trial")
    warmup_steps: int | None = option(None, help="warm-up steps per trial")
    alphas: tuple[float, ...] | None = option(None, help="mixing coefficients to select from")
    selection: str | None = option(None, help="alpha selection rule (mtmg.engine.select)")
    loader_workers: int | None = option(None, help="data-loading processes per trial")
    eval_batch_size: int | None = option(None, help="evaluation batch size")
    cache_dir: str | None = option(None, help="zero-shot head cache")
    trial_delay: float = option(0.0, help="test hook: every trial sleeps this long (s) first")


def check(cfg: DatasetSweepConfig) -> None:
    """Errors in the options, before anything is loaded."""
    tuning.check(cfg)
    if not cfg.patching:
        raise ValueError("give --patching SHARDS ... (the datasets to patch on)")
    if cfg.search != "grid":
        raise ValueError("the dataset sweep runs every patching dataset: use --search grid")
    if len(set(cfg.patching)) != len(cfg.patching):
        raise ValueError("--patching: repeated entries")
    if cfg.selection is not None and cfg.selection not in select.RULES:
        raise ValueError(f"unknown --selection {cfg.selection!r}")


MIX = "+"  # joins the shard sets of a mixture in a --patching entry


def _is_shard_set(path: str) -> bool:
    try:
        data.ShardSet.open(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def parse_entry(entry: str) -> tuple[str, ...]:
    """The absolute shard sets of a --patching entry: one set, or a mixture `A+B+...`.

    An entry that is a shard set is that set (a path may hold a `+`); one that is also a
    mixture of shard sets is ambiguous. A part that is no shard set fails later, named."""
    if MIX not in entry:
        return (_abs(entry),)
    parts = entry.split(MIX)
    whole = _is_shard_set(entry)
    if whole and all(p and _is_shard_set(p) for p in parts):
        raise ValueError(f"--patching {entry}: both a shard set and a mixture of shard sets "
                         "(rename or link the set whose path holds '+')")  # fmt: skip
    if whole:
        return (_abs(entry),)
    if not all(parts):
        raise ValueError(f"--patching {entry}: an empty part in a mixture")
    mix = tuple(_abs(p) for p in parts)
    if len(set(mix)) != len(mix):
        raise ValueError(f"--patching {entry}: a shard set twice in one mixture")
    return mix


def entries(patching: Sequence[str]) -> list[tuple[str, ...]]:
    """The shard sets of every --patching entry; the same set of sets twice is an error."""
    out = [parse_entry(e) for e in patching]
    seen = [frozenset(m) for m in out]
    for e, s in zip(patching, seen, strict=True):
        if seen.count(s) > 1:
            raise ValueError(f"--patching {e}: the same shard sets appear in another entry")
    return out


@dataclass
class Plan:
    """What every trial needs, put in the object store once."""

    base: dict[str, Any]  # PatchConfig fields
    zeroshot: dict[str, torch.Tensor]  # the whole CLIP model's state (theta_zs)
    heads: list[torch.Tensor]  # per evaluation dataset, in `paths` order
    paths: list[str]  # every evaluation dataset (patching sets first)
    labels: list[str]  # of `paths`
    entries: dict[str, tuple[str, ...]]  # --patching entry label ("A" or "A+B") -> shard sets
    supported: list[str]
    threads: int
    gpu: bool
    trial_delay: float = 0.0
    build_kwargs: dict[str, Any] | None = None  # open_clip rebuild arguments (QuickGELU, ...)


def trial_sets(plan: Plan, mix: tuple[str, ...]) -> list[tuple[str, str, None]]:
    """(role, path, nomenclature) of a trial patching on `mix`: its sets, then the others."""
    sets = [("patching", p, None) for p in mix]
    sets += [("supported", s, None) for s in plan.supported if s not in mix]
    sets += [("eval", p, None) for p in plan.paths if p not in mix and p not in plan.supported]
    return sets


def trial(params: dict[str, Any], plan: Plan) -> None:
    """One --patching entry: fine-tune (jointly for a mixture), select alpha, evaluate every
    evaluation dataset."""
    from ray import tune

    torch.set_num_threads(max(1, plan.threads))
    time.sleep(plan.trial_delay)
    mix = plan.entries[params["patching"]]
    for p in mix:
        check_patching(p)
    cfg = patch.PatchConfig(**{**plan.base, "data": mix[0], "joint_data": mix[1:]})
    sets = trial_sets(plan, mix)
    head_weights = [plan.heads[plan.paths.index(p)] for _, p, _ in sets]
    res = run_patch(cfg, sets, plan.zeroshot, head_weights, trial_device(plan.gpu),
                    build_kwargs=plan.build_kwargs)  # fmt: skip
    alpha = res["alpha"]
    val_p, val_s = val_values(res["rows"], alpha)
    test = eval_values(res["rows"], alpha)
    by_label = {plan.labels[plan.paths.index(p)]: v for p, v in test.items()}
    gains = {k: v["gain"] for k, v in by_label.items()}
    own = [test[p]["gain"] for p in mix]
    tune.report({
        "alpha": alpha, "val_patching": val_p, "val_supported": val_s,
        "self_gain": sum(own) / len(own), "mean_gain": sum(gains.values()) / len(gains),
        "gain": gains,
        "zeroshot": {k: v["zeroshot"] for k, v in by_label.items()},
        "patched": {k: v["patched"] for k, v in by_label.items()},
        "finetuned": {k: v["finetuned"] for k, v in by_label.items()},
        "metric": {k: v["metric"] for k, v in by_label.items()},
        "train_loss": res["stats"][-1]["train_loss"] if res["stats"] else None,
        "done_training": True,
    })  # fmt: skip


def run(cfg: DatasetSweepConfig) -> dict[str, Any]:
    """The whole sweep; returns the summary also written to OUT/summary.json. OUT is the
    sweep's alone while it runs (`tune.claim`)."""
    check(cfg)
    with tuning.claim(cfg, NAME):
        return _sweep(cfg)


def _sweep(cfg: DatasetSweepConfig) -> dict[str, Any]:
    mixes = entries(cfg.patching)
    patching, supported = _unique([p for m in mixes for p in m]), _unique(cfg.supported)
    paths = _unique([*patching, *supported, *cfg.eval_data])
    for p in paths:
        check_evaluable(p)
    for s in supported:
        if not data.ShardSet.open(s).count("val"):
            raise ValueError(f"{s}: the supported dataset has no 'val' split")
    labels = dataset_labels(paths)
    names = {MIX.join(labels[paths.index(p)] for p in m): m for m in mixes}
    if len(names) != len(mixes):
        raise ValueError(f"--patching: entries with the same label ({', '.join(names)})")
    fixed: dict[str, Any] = {"data": patching[0], "joint_data": (),
                             "supported": tuple(supported),
                             "eval_data": tuple(p for p in paths if p not in patching
                                                and p not in supported)}  # fmt: skip
    if cfg.model:
        fixed["model"] = cfg.model
    base = patch_config(cfg, **fixed)
    torch.manual_seed(base.seed)  # a model without pretrained weights starts from the seed
    bundle = models.load_clip(base.model, base.pretrained, model_config=base.model_config)
    head_weights = heads.dataset_heads(
        bundle, base.model, [(data.ShardSet.open(p), None) for p in paths], base.cache_dir,
        base.templates,
    )  # fmt: skip
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from ray import tune

    tuning.preload(cfg, TRIAL_MODULES)
    tuning.init(cfg)
    tuning.can_resume(cfg, NAME)
    plan = Plan(
        dataclasses.asdict(base), {k: v.cpu() for k, v in bundle.model.state_dict().items()},
        head_weights, paths, labels, names, supported, max(1, int(cfg.cpus_per_trial)),
        cfg.gpus_per_trial > 0, cfg.trial_delay, bundle.build_kwargs,
    )  # fmt: skip
    trainable = tuning.bind(trial, plan=plan)
    space = {"patching": tune.grid_search(list(names))}
    result = tuning.run_tuner(trainable, cfg, name=NAME, param_space=space)
    return write(cfg, base, plan, out, finished_rows(result))


def matrix_rows(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """The long-form gain matrix: one row per (patching, evaluation) of the finished trials."""
    out = []
    for r in rows:
        if r["status"] == "ERROR" or not r.get("done_training"):
            continue
        for e in labels:
            if r.get(f"gain/{e}") is None:
                continue
            out.append({
                "patching": r["config/patching"], "evaluation": e, "metric": r[f"metric/{e}"],
                "zeroshot": r[f"zeroshot/{e}"], "patched": r[f"patched/{e}"],
                "finetuned": r[f"finetuned/{e}"], "gain": r[f"gain/{e}"], "alpha": r["alpha"],
            })  # fmt: skip
    return out


def entry_config(base: patch.PatchConfig, plan: Plan, label: str, out: Path) -> dict[str, Any]:
    """The `mtmg.patch` config (as YAML data) that patches on one --patching entry: `data` and,
    for a mixture, `joint_data`; every other dataset is supported or evaluated, as in its trial."""
    mix = plan.entries[label]
    sets = trial_sets(plan, mix)
    return {**config.to_dict(base), "data": mix[0], "joint_data": list(mix[1:]),
            "supported": [p for role, p, _ in sets if role == "supported"],
            "eval_data": [p for role, p, _ in sets if role == "eval"],
            "out": str(out / "best")}  # fmt: skip


def write(cfg: DatasetSweepConfig, base: patch.PatchConfig, plan: Plan, out: Path,
          rows: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Trial table, gain matrix (table, heat map, markdown), summary, best config."""
    from mtmg.report import tables as results

    labels = plan.labels
    long = matrix_rows(rows, labels)
    matrix: dict[str, dict[str, float | None]] = {}
    order = [r["config/patching"] for r in rows]
    order = [lab for lab in plan.entries if lab in order]
    for lab in order:
        matrix[lab] = dict.fromkeys(labels)
    for m in long:
        matrix[m["patching"]][m["evaluation"]] = m["gain"]
    zeroshot = {m["evaluation"]: m["zeroshot"] for m in long}
    finished = [r for r in rows if r["status"] != "ERROR" and r.get("done_training")]
    best = max(finished, key=lambda r: r["mean_gain"], default=None)
    best_config = entry_config(base, plan, best["config/patching"], out) if best else None
    metric_of = {m["evaluation"]: m["metric"] for m in long}
    md = ["# Dataset sweep: gains of patching over zero-shot", "",
          "rows: patching datasets, A+B a mixture of datasets (joint patching)", "",
          f"model: {base.model} ({base.pretrained or 'random init'}); alpha by the "
          f"{base.selection} rule on validation; test split (val where there is none)", "",
          "## Gain (patched minus zero-shot, points; rows: patching, columns: evaluation)", "",
          tuning.markdown_table([{"patching": p, **matrix[p]} for p in order],
                                ["patching", *labels]), "",
          "zero-shot: " + ", ".join(f"{e} {metric_of[e]} {v:.2f}"
                                    for e, v in zeroshot.items()), ""]  # fmt: skip
    cols = ["trial_id", "status", "config/patching", "alpha", "self_gain", "mean_gain",
            "val_patching", "val_supported", "time_s", "error"]  # fmt: skip
    md += ["## Trials", "", tuning.markdown_table(rows, cols), ""]
    if best is not None:
        md += ["## Best patching dataset or mixture (largest mean gain)", "",
               f"- {best['config/patching']}: mean gain {best['mean_gain']:.2f}, gain on itself "
               f"{best['self_gain']:.2f}, alpha {best['alpha']:g}", "",
               "Run it: `python -m mtmg.patch --config best_config.yaml`", ""]  # fmt: skip
    failed = [r for r in rows if r["status"] == "ERROR"]
    if failed:
        md += ["## Failed trials", "",
               *[f"- {r.get('config/patching')}: {r['error']}" for r in failed], ""]  # fmt: skip
    summary = {
        "model": base.model,
        "patching": {lab: list(m) for lab, m in plan.entries.items()},
        "gain": matrix,
        "zeroshot": zeroshot,
        "best": best["config/patching"] if best else None,
        "best_mean_gain": best["mean_gain"] if best else None,
        "trials": len(rows),
        "failed": [{"patching": r.get("config/patching"), "trial_id": r["trial_id"],
                    "error": r["error"]} for r in failed],
    }  # fmt: skip
    tuning.write_outputs(out, rows, summary_md="\n".join(md), summary=summary,
                         spec=tuning.resolved_spec(cfg), best_config=best_config)  # fmt: skip
    if long:
        results.write_table(long, out / "gains")
    heatmap(
        matrix,
        order,
        labels,
        out / "gains.png",
        diverging=True,
        title="gain of patching over zero-shot",
        label="patched - zero-shot (points)",
        xlabel="evaluation dataset",
        ylabel="patching dataset",
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/dataset_sweep.py --patching SHARDS|A+B ... --out DIR [options]`."""
    cfg = tuning.parse(
        DatasetSweepConfig,
        argv,
        "Which patching dataset, or mixture of datasets (PAINT's joint patching), helps which "
        "evaluation dataset: one Ray Tune trial per --patching entry (fine-tune, select alpha), "
        "every evaluation dataset evaluated zero-shot and patched.",
        "--patching entries: a shard set (one trial patching on it), or shard sets joined by\n"
        "'+' (A+B: one trial patching on A and B together, `mtmg.patch --data A --joint-data\n"
        "B`). An entry that is itself a shard set stays one set even if its path holds '+';\n"
        "one that reads both ways is refused. Example: --patching ben ems ben+ems.\n"
        "outputs in --out: gains.parquet/.csv (patching x evaluation: zero-shot, patched,\n"
        "fine-tuned, gain), gains.png (heat map), sweep.parquet/.csv (one row per trial),\n"
        "summary.md, summary.json, best_config.yaml (for `python -m mtmg.patch --config`),\n"
        "spec.yaml. --resume continues an interrupted sweep without re-running finished\n"
        "trials.",
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = run(cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted(errors.RESUME_SWEEP)
    print((Path(cfg.out) / "summary.md").read_text())
    if summary["best"] is None:
        print("error: no trial finished", file=sys.stderr)
        return 1
    return 0
