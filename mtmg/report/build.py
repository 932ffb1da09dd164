"""A paper-style report from finished runs: `python -m mtmg.report RUN_DIR... --out DIR`.

Reads what the stages write (`mtmg.patch` and alpha-sweep dirs: `metrics.parquet` with alpha
rows; `mtmg.align` dirs: `metrics.parquet` with encoder rows; `mtmg.zeroshot` dirs: baseline
CLIPs' zero-shot rows; `mtmg.probe` dirs: `probe.parquet`) wherever they ran, and writes one
table — rows: zero-shot CLIP, patched CLIP at the chosen alpha, the aligned multispectral encoder
(and its untrained start), linear probes; columns: every evaluation dataset's test metric (one
per nomenclature where a dataset is scored in several, e.g. "bigearthnet:ben5 mAP") and
retrieval Recall@K both ways — as markdown, CSV and parquet, plus `summary.json` and the runs'
plots.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mtmg import errors, logs, rundir
from mtmg.report import tables

RETRIEVAL = ("R@1", "R@10")


def run_kind(path: Path) -> str:
    """What a run dir is: "align" (student.json), "patch" (patched weights and metrics: a
    mtmg.patch or alpha-sweep dir), "probe" (probe.parquet), "sweep" (a sweep table: its plots
    and best configuration)."""
    if (path / "probe.parquet").is_file():
        return "probe"
    if (path / "student.json").is_file():
        return "align"
    if (path / "patched.safetensors").is_file() and (path / "metrics.parquet").is_file():
        return "patch"
    if (path / "sweep.parquet").is_file() and (path / "summary.json").is_file():
        return "sweep"
    if (path / "zeroshot.md").is_file() and (path / "metrics.parquet").is_file():
        return "zeroshot"
    raise ValueError(
        f"{path}: not a finished mtmg.patch, alpha-sweep, mtmg.align, sweep, mtmg.zeroshot or "
        "mtmg.probe output dir"
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path / "metrics.parquet").to_pylist()


def patch_rows(path: Path) -> list[dict[str, Any]]:
    """Report rows of a patching run: test metrics at alpha 0 (zero-shot) and the chosen alpha."""
    rows = [r for r in _rows(path) if r.get("selected") is not None]
    chosen = next((r["alpha"] for r in rows if r["selected"]), None)
    if chosen is None:
        raise ValueError(f"{path}: metrics.parquet has no test rows at a chosen alpha")
    out = []
    for r in rows:
        names = []
        if r["alpha"] == 0.0:
            names.append("zero-shot CLIP")
        if r["alpha"] == chosen:
            names.append(f"patched CLIP (alpha={chosen:g})")
        if r["alpha"] == 1.0:
            names.append("fine-tuned CLIP (alpha=1)")
        out += [
            {
                "model": name,
                "input": "RGB",
                "dataset": r["dataset"],
                "nomenclature": r.get("nomenclature"),
                "role": r["role"],
                "metric": r["metric"],
                "value": r["value"],
                "run": str(path),
            }
            for name in names
        ]
    return out


def zeroshot_rows(path: Path) -> list[dict[str, Any]]:
    """Report rows of a mtmg.zeroshot run: "<name> zero-shot" on every set it scored."""
    keep = ("dataset", "nomenclature", "metric", "value")
    return [
        {"model": f"{r['model']} zero-shot", "input": "RGB", "role": "eval", "run": str(path)}
        | {k: r[k] for k in keep}
        for r in _rows(path)
    ]


def align_rows(path: Path) -> list[dict[str, Any]]:
    """Report rows of an alignment run: the student at its last and first epoch (test splits)."""
    rows = [r for r in _rows(path) if r["split"] != "val" and r["encoder"] == "student"]
    if not rows:
        raise ValueError(f"{path}: metrics.parquet has no test rows of the student")
    last = max(r["epoch"] for r in rows)
    out = []
    for r in rows:
        if r["epoch"] not in (0, last):
            continue
        metric = r["metric"]
        if metric.startswith("R@") and metric.split()[0] not in RETRIEVAL:
            continue
        name = "aligned MS encoder" if r["epoch"] == last else "untrained MS encoder"
        out.append(
            {
                "model": name,
                "input": "MS",
                "dataset": r["dataset"],
                "nomenclature": r.get("nomenclature"),
                "role": "eval",
                "metric": metric,
                "value": r["value"],
                "run": str(path),
            }
        )
    return out


def label_datasets(rows: list[dict[str, Any]]) -> None:
    """Set each row's "set": the dataset's name, as "name:nomenclature" where the report scores
    the dataset in several nomenclatures (BigEarthNet-5/19/43: one column each). Rows of runs
    older than the nomenclature column have none and keep the plain name."""
    noms: dict[str, set[str]] = {}
    for r in rows:
        if r.get("nomenclature"):
            noms.setdefault(r["dataset"], set()).add(r["nomenclature"])
    for r in rows:
        several = len(noms.get(r["dataset"], ())) > 1 and r.get("nomenclature")
        r["set"] = f"{r['dataset']}:{r['nomenclature']}" if several else r["dataset"]


def probe_rows(path: Path) -> list[dict[str, Any]]:
    """Report rows of a probe run: "linear probe (<encoder>)" on the test splits (the share of
    the train split named where it is not all of it)."""
    out = []
    for r in pq.read_table(path / "probe.parquet").to_pylist():
        if r["split"] != "test":
            continue
        share = "" if r["fraction"] == 1 else f", {r['fraction']:g} of train"
        out.append(
            {
                "model": f"linear probe ({r['encoder']}{share})",
                "input": r["input"],
                "dataset": r["dataset"],
                "nomenclature": r["nomenclature"],
                "role": "eval",
                "metric": r["metric"],
                "value": r["value"],
                "run": str(path),
            }
        )
    return out


def table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str], dict]:
    """(row names, column names, {(row, column): value}); a column is "set metric", the set as
    `label_datasets` names it."""
    models, columns, cells = [], [], {}
    for r in rows:
        col = f"{r.get('set', r['dataset'])} {r['metric']}"
        if r["model"] not in models:
            models.append(r["model"])
        if col not in columns:
            columns.append(col)
        cells[(r["model"], col)] = r["value"]
    order = ["zero-shot CLIP", "patched", "fine-tuned", "untrained MS", "aligned MS", "linear"]
    models.sort(key=lambda m: next(i for i, p in enumerate(order + [m]) if m.startswith(p)))
    columns.sort(key=lambda c: (" R@" in c or "cosine" in c, c))
    return models, columns, cells


def markdown(models: list[str], columns: list[str], cells: dict) -> str:
    head = "| model | " + " | ".join(columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    lines = [head, sep]
    for m in models:
        vals = [cells.get((m, c)) for c in columns]
        lines.append(f"| {m} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines)


def gains(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Sentences stating the measured gains: patching over zero-shot, aligned over untrained."""
    by = {(r["model"].split(" (")[0], r.get("set", r["dataset"]), r["metric"]): r for r in rows}
    out = []
    for (model, ds, metric), r in by.items():
        if model == "patched CLIP" and ("zero-shot CLIP", ds, metric) in by:
            zs = by[("zero-shot CLIP", ds, metric)]["value"]
            role = "supported task" if r["role"] == "supported" else "patching/eval task"
            out.append(
                f"Patching ({r['model']}) changes {ds} {metric} ({role}) from {zs:.2f} "
                f"to {r['value']:.2f} ({r['value'] - zs:+.2f})."
            )
        if model == "aligned MS encoder" and ("untrained MS encoder", ds, metric) in by:
            u = by[("untrained MS encoder", ds, metric)]["value"]
            out.append(
                f"Alignment takes the MS encoder's {ds} {metric} from {u:.2f} (untrained) "
                f"to {r['value']:.2f}."
            )
    return out


def build(
    run_dirs: Sequence[str | Path], out: str | Path, notes: Sequence[str] = ()
) -> dict[str, Any]:
    """Write the report of `run_dirs` into `out`, `notes` as its first bullet points; returns
    what summary.json holds."""
    rows: list[dict[str, Any]] = []
    plots, sweeps = [], []
    for d in map(Path, run_dirs):
        kind = run_kind(d)
        if kind == "patch":
            rows += patch_rows(d)
        elif kind == "align":
            rows += align_rows(d)
        elif kind == "zeroshot":
            rows += zeroshot_rows(d)
        elif kind == "probe":
            rows += probe_rows(d)
        else:
            sweeps.append(json.loads((d / "summary.json").read_text()))
        for name in ("alpha_curve.png", "loss_curves.png", "loss_sweep.png"):
            if (d / name).is_file():
                plots.append((d, name))
    out = rundir.make_dir(out)
    label_datasets(rows)
    models, columns, cells = table(rows)
    md = markdown(models, columns, cells)
    tables.write_table(rows, out / "table")
    copied = []
    for d, name in plots:
        target = out / (
            name if not (out / name).exists() or len(plots) == 1 else f"{d.name}-{name}"
        )
        shutil.copyfile(d / name, target)
        copied.append(target.name)
    notes = [*notes, *gains(rows)]
    for sw in sweeps:
        if sw.get("best"):
            best = ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sw["best"].items()
            )
            notes.append(
                f"Loss sweep: best {best} (validation {sw['objective']} "
                f"{sw['best_objective']:.2f})."
            )
    summary = {
        "runs": [str(Path(d).resolve()) for d in run_dirs],
        "table": md.splitlines(),
        "gains": notes,
        "rows": rows,
        "plots": copied,
        "sweeps": sweeps,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    text = ["# mtmg report", "", md, "", *[f"- {g}" for g in summary["gains"]], ""]
    text += [f"![{p}]({p})" for p in copied]
    (out / "summary.md").write_text("\n".join(text) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.report RUN_DIR... --out DIR`."""
    ap = argparse.ArgumentParser(
        prog="python -m mtmg.report",
        description="A paper-style table (markdown, CSV, parquet), summary.json and the runs' "
        "plots from finished mtmg.patch / alpha-sweep / mtmg.align / sweep / mtmg.zeroshot / "
        "mtmg.probe output directories.",
    )
    ap.add_argument("runs", nargs="+", help="output directories of finished runs")
    ap.add_argument("--out", required=True, help="report directory")
    logs.add_flags(ap)
    args = ap.parse_args(argv)
    logs.setup(args.verbosity or 0)
    try:
        summary = build(args.runs, args.out)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    print("\n".join(summary["table"]))
    for g in summary["gains"]:
        print(f"- {g}")
    print(f"report in {Path(args.out).resolve()}")
    return 0
