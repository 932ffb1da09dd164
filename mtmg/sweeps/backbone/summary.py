"""The backbone sweep's outputs: the trial table, backbone x dataset matrix and heat map, the
best backbone overall and per dataset, the best configuration as a config file of the stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtmg import config
from mtmg.sweeps import common, outputs

PATCH_COLUMNS = [
    "trial_id",
    "status",
    "config/teacher",
    "config/dataset",
    "alpha",
    "objective",
    "test_zeroshot",
    "test_patched",
    "test_gain",
    "test_supported",
    "time_s",
    "error",
]
ALIGN_COLUMNS = [
    "trial_id",
    "status",
    "config/student",
    "config/init",
    "config/dataset",
    "objective",
    "val_zeroshot",
    "val_r1",
    "test_zeroshot",
    "test_r1",
    "student_params",
    "time_s",
    "error",
]


def row_label(r: dict[str, Any], stage: str) -> str:
    """The backbone of a trial row: the teacher, or the student and its init."""
    if stage == "patch":
        return str(r.get("config/teacher"))
    init = r.get("config/init")
    return str(r.get("config/student")) + ("" if init in (None, "none") else f" + {init}")


def best_config(cfg: Any, base: Any, inputs: Any, best: dict[str, Any], out: Path) -> dict:
    """The stage's config file of the best trial."""
    path = inputs.datasets[best["config/dataset"]]
    if cfg.stage == "patch":
        name, pretrained = inputs.teachers[best["config/teacher"]]
        return {
            **config.to_dict(base),
            "model": name,
            "pretrained": pretrained,
            "data": path,
            "workers": 1,
            "out": str(out / "best"),
        }
    return {
        **config.to_dict(base),
        "student": best["config/student"],
        "student_init": inputs.inits[best["config/init"]],
        "data": path,
        "eval_init": True,
        "out": str(out / "best"),
    }


def matrix_of(rows: list[dict[str, Any]], stage: str, metric: str) -> dict[str, dict[str, Any]]:
    """backbone -> dataset -> the test metric of a finished trial (None: failed)."""
    matrix: dict[str, dict[str, float | None]] = {}
    for r in rows:
        ok = r["status"] != "ERROR" and r.get("done_training")
        matrix.setdefault(row_label(r, stage), {})[str(r.get("config/dataset"))] = (
            r.get(metric) if ok else None
        )
    return matrix


def best_per_dataset(
    finished: list[dict[str, Any]], datasets: list[str], stage: str, metric: str
) -> dict[str, dict[str, Any]]:
    """dataset -> the backbone of its highest validation objective, with its test metric."""
    out: dict[str, dict[str, Any]] = {}
    for d in datasets:
        top = max(
            (r for r in finished if r.get("config/dataset") == d),
            key=lambda r: r["objective"],
            default=None,
        )
        if top is not None:
            out[d] = {
                "backbone": row_label(top, stage),
                "objective": top["objective"],
                metric: top.get(metric),
            }
    return out


def markdown(
    cfg: Any,
    rows: list[dict[str, Any]],
    matrix: dict[str, dict[str, Any]],
    datasets: list[str],
    per_dataset: dict[str, dict[str, Any]],
    metric: str,
) -> list[str]:
    """summary.md, less its best-configuration and failed-trials sections."""
    if cfg.stage == "patch":
        what, cols = "CLIP teacher x patching dataset", PATCH_COLUMNS
        objective = (
            "PAINT's rule on validation (mean of patching and supported metric at the chosen alpha)"
        )
    else:
        what, cols = "student x init x alignment dataset", ALIGN_COLUMNS
        objective = f"validation {cfg.objective} of the aligned student"
    table = [{"backbone": b, **m} for b, m in matrix.items()]
    md = [
        f"# Backbone sweep ({cfg.stage} stage): {what}",
        "",
        f"objective: {objective}",
        "",
        outputs.markdown_table(common.ranked(rows), cols),
        "",
        f"## {metric} (backbone x dataset, %)",
        "",
        outputs.markdown_table(table, ["backbone", *datasets]),
        "",
    ]
    if per_dataset:
        md += [
            "## Best backbone per dataset (validation objective)",
            "",
            *[
                f"- {d}: {v['backbone']} (objective {v['objective']:.2f}, {metric} {v[metric]:.2f})"
                for d, v in per_dataset.items()
            ],
            "",
        ]
    return md


def write(cfg: Any, base: Any, inputs: Any, out: Path, rows: list[dict[str, Any]]) -> dict:
    """Table, summary, best config (a config file of the stage) and the heat map."""
    stage = cfg.stage
    keys = ["teacher", "dataset"] if stage == "patch" else ["student", "init", "dataset"]
    finished = [
        r
        for r in rows
        if r.get("done_training") and r["status"] != "ERROR" and r.get("objective") is not None
    ]
    best = max(finished, key=lambda r: r["objective"], default=None)
    metric = "test_patched" if stage == "patch" else "test_zeroshot"
    matrix = matrix_of(rows, stage, metric)
    datasets = list(inputs.datasets)
    per_dataset = best_per_dataset(finished, datasets, stage, metric)
    md = markdown(cfg, rows, matrix, datasets, per_dataset, metric)
    if best is not None:
        run_with = "mtmg.patch" if stage == "patch" else "mtmg.align"
        md += common.best_md(best, keys, [f"- {metric} = {best.get(metric):.2f}"], run_with)
    md += common.failed_md(rows, lambda r: ", ".join(str(r.get(f"config/{k}")) for k in keys))
    summary = {
        "stage": stage,
        "objective": "paint" if stage == "patch" else cfg.objective,
        "metric": metric,
        "best": {k: best[f"config/{k}"] for k in keys} if best else None,
        "best_objective": best["objective"] if best else None,
        "best_test": best.get(metric) if best else None,
        "matrix": matrix,
        "best_per_dataset": per_dataset,
        "trials": len(rows),
        "failed": common.failed_summary(rows, keys),
    }
    best_file = best_config(cfg, base, inputs, best, out) if best else None
    common.write_outputs(cfg, out, rows, md, summary, best_file, stage, base)
    outputs.heatmap(
        matrix,
        list(matrix),
        datasets,
        out / "backbone_heatmap.png",
        title=f"backbone sweep ({stage}): {metric}",
        label=f"{metric} (%)",
    )
    return summary
