"""The dataset sweep's outputs: the patching x evaluation matrix of gains (long table, heat map,
markdown), the trial table, the summary and the best entry as an `mtmg.patch` config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtmg import config
from mtmg.data.evalsets import EvalEntry
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import common, outputs
from mtmg.sweeps.dataset.trial import DatasetTrialInputs, trial_sets

if TYPE_CHECKING:
    from mtmg.sweeps.dataset.config import DatasetSweepConfig


def matrix_rows(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """The long-form gain matrix: one row per (patching, evaluation) of the finished trials."""
    out = []
    for r in rows:
        if r["status"] == "ERROR" or not r.get("done_training"):
            continue
        for e in labels:
            if r.get(f"gain/{e}") is None:
                continue
            out.append(
                {
                    "patching": r["config/patching"],
                    "evaluation": e,
                    "metric": r[f"metric/{e}"],
                    "zeroshot": r[f"zeroshot/{e}"],
                    "patched": r[f"patched/{e}"],
                    "finetuned": r[f"finetuned/{e}"],
                    "gain": r[f"gain/{e}"],
                    "alpha": r["alpha"],
                }
            )
    return out


def entry_config(
    base: patch.PatchConfig, inputs: DatasetTrialInputs, label: str, out: Path
) -> dict[str, Any]:
    """The `mtmg.patch` config (as YAML data) that patches on one --patching entry: `data` and,
    for a mixture, `joint_data`; every other dataset is supported or evaluated, as in its trial."""
    mix = inputs.entries[label]
    sets = trial_sets(inputs, mix)
    return {
        **config.to_dict(base),
        "data": mix[0],
        "joint_data": list(mix[1:]),
        "supported": [p for role, p, _ in sets if role == "supported"],
        "eval_data": [str(EvalEntry(p, n)) for role, p, n in sets if role == "eval"],
        "out": str(out / "best"),
    }


TRIAL_COLUMNS = [
    "trial_id",
    "status",
    "config/patching",
    "alpha",
    "self_gain",
    "mean_gain",
    "val_patching",
    "val_supported",
    "time_s",
    "error",
]


def gain_matrix(
    rows: list[dict[str, Any]], inputs: DatasetTrialInputs, long: list[dict[str, Any]]
) -> dict[str, dict[str, float | None]]:
    """patching entry -> evaluation dataset -> gain, the entries of the trials in --patching
    order (None: no gain)."""
    ran = {r["config/patching"] for r in rows}
    matrix = {lab: dict.fromkeys(inputs.labels) for lab in inputs.entries if lab in ran}
    for m in long:
        matrix[m["patching"]][m["evaluation"]] = m["gain"]
    return matrix


def markdown(
    base: patch.PatchConfig,
    rows: list[dict[str, Any]],
    matrix: dict[str, dict[str, float | None]],
    labels: list[str],
    long: list[dict[str, Any]],
    best: dict[str, Any] | None,
) -> list[str]:
    """summary.md, less its failed-trials section."""
    metric_of = {m["evaluation"]: m["metric"] for m in long}
    zeroshot = {m["evaluation"]: m["zeroshot"] for m in long}
    md = [
        "# Dataset sweep: gains of patching over zero-shot",
        "",
        "rows: patching datasets, A+B a mixture of datasets (joint patching)",
        "",
        f"model: {base.model} ({base.pretrained or 'random init'}); alpha by the "
        f"{base.selection} rule on validation; test split (val where there is none)",
        "",
        "## Gain (patched minus zero-shot, points; rows: patching, columns: evaluation)",
        "",
        outputs.markdown_table(
            [{"patching": p, **v} for p, v in matrix.items()], ["patching", *labels]
        ),
        "",
        "zero-shot: " + ", ".join(f"{e} {metric_of[e]} {v:.2f}" for e, v in zeroshot.items()),
        "",
        "## Trials",
        "",
        outputs.markdown_table(rows, TRIAL_COLUMNS),
        "",
    ]
    if best is not None:
        md += [
            "## Best patching dataset or mixture (largest mean gain)",
            "",
            f"- {best['config/patching']}: mean gain {best['mean_gain']:.2f}, gain on itself "
            f"{best['self_gain']:.2f}, alpha {best['alpha']:g}",
            "",
            "Run it: `python -m mtmg.patch --config best_config.yaml`",
            "",
        ]
    return md


def write(
    cfg: DatasetSweepConfig,
    base: patch.PatchConfig,
    inputs: DatasetTrialInputs,
    out: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Trial table, gain matrix (table, heat map, markdown), summary, best config."""
    from mtmg.report import tables

    labels = inputs.labels
    long = matrix_rows(rows, labels)
    matrix = gain_matrix(rows, inputs, long)
    zeroshot = {m["evaluation"]: m["zeroshot"] for m in long}
    finished = [r for r in rows if r["status"] != "ERROR" and r.get("done_training")]
    best = max(finished, key=lambda r: r["mean_gain"], default=None)
    best_config = entry_config(base, inputs, best["config/patching"], out) if best else None
    md = markdown(base, rows, matrix, labels, long, best)
    md += common.failed_md(rows, lambda r: str(r.get("config/patching")))
    summary = {
        "model": base.model,
        "patching": {lab: list(m) for lab, m in inputs.entries.items()},
        "gain": matrix,
        "zeroshot": zeroshot,
        "best": best["config/patching"] if best else None,
        "best_mean_gain": best["mean_gain"] if best else None,
        "trials": len(rows),
        "failed": common.failed_summary(rows, ["patching"]),
    }
    common.write_outputs(cfg, out, rows, md, summary, best_config, "patch", base)
    if long:
        tables.write_table(long, out / "gains")
    outputs.heatmap(
        matrix,
        list(matrix),
        labels,
        out / "gains.png",
        diverging=True,
        title="gain of patching over zero-shot",
        label="patched - zero-shot (points)",
        xlabel="evaluation dataset",
        ylabel="patching dataset",
    )
    return summary
