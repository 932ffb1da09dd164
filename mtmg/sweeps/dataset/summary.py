"""The dataset sweep's outputs: the patching x evaluation matrix of gains (long table, heat map,
markdown), the trial table, the summary and the best entry as an `mtmg.patch` config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtmg import config
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import common, options, outputs
from mtmg.sweeps.dataset.trial import DatasetTrialInputs, trial_sets

if TYPE_CHECKING:
    from mtmg.sweeps.dataset.driver import DatasetSweepConfig


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
        "eval_data": [p for role, p, _ in sets if role == "eval"],
        "out": str(out / "best"),
    }


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
    matrix: dict[str, dict[str, float | None]] = {}
    order = [r["config/patching"] for r in rows]
    order = [lab for lab in inputs.entries if lab in order]
    for lab in order:
        matrix[lab] = dict.fromkeys(labels)
    for m in long:
        matrix[m["patching"]][m["evaluation"]] = m["gain"]
    zeroshot = {m["evaluation"]: m["zeroshot"] for m in long}
    finished = [r for r in rows if r["status"] != "ERROR" and r.get("done_training")]
    best = max(finished, key=lambda r: r["mean_gain"], default=None)
    best_config = entry_config(base, inputs, best["config/patching"], out) if best else None
    metric_of = {m["evaluation"]: m["metric"] for m in long}
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
            [{"patching": p, **matrix[p]} for p in order], ["patching", *labels]
        ),
        "",
        "zero-shot: " + ", ".join(f"{e} {metric_of[e]} {v:.2f}" for e, v in zeroshot.items()),
        "",
    ]
    cols = [
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
    md += ["## Trials", "", outputs.markdown_table(rows, cols), ""]
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
    md += common.failed_md(rows, lambda r: str(r.get("config/patching")))
    summary = {
        "model": base.model,
        "patching": {lab: list(m) for lab, m in inputs.entries.items()},
        "gain": matrix,
        "zeroshot": zeroshot,
        "best": best["config/patching"] if best else None,
        "best_mean_gain": best["mean_gain"] if best else None,
        "trials": len(rows),
        "failed": [
            {"patching": r.get("config/patching"), "trial_id": r["trial_id"], "error": r["error"]}
            for r in common.failed(rows)
        ],
    }
    outputs.write_outputs(
        out,
        rows,
        summary_md="\n".join(md),
        summary=summary,
        spec=options.resolved_spec(cfg),
        best_config=best_config,
        stage_configs={"patch_config": config.to_dict(base)},
    )
    if long:
        tables.write_table(long, out / "gains")
    outputs.heatmap(
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
