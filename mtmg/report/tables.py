"""Result tables and plots: parquet + CSV tables, the alpha curve PNG, resolved configs."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from mtmg.data import storage  # noqa: E402


def write_table(rows: Sequence[dict[str, Any]], path_stem: str | Path) -> pa.Table:
    """`<stem>.parquet` and `<stem>.csv` from a list of flat dicts (atomic writes)."""
    table = pa.Table.from_pylist(list(rows))
    fs, stem = storage.location(path_stem).fs, storage.location(path_stem).path
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes_atomic(fs, stem + ".parquet", buf.getvalue())
    out = pa.BufferOutputStream()
    pacsv.write_csv(table, out)
    storage.write_bytes_atomic(fs, stem + ".csv", out.getvalue().to_pybytes())
    return table


PER_CLASS_METRIC = {"mAP": "AP", "top1": "accuracy"}  # a macro metric -> its per-class metric


def write_metrics(rows: Sequence[dict[str, Any]], out: str | Path) -> list[dict[str, Any]]:
    """OUT/metrics.parquet/.csv, one row per macro metric, and OUT/per_class.parquet/.csv
    beside it where rows carry "per_class" [(class, value, support)]
    (`mtmg.engine.evaluate.class_values`): one row per class with the row's other columns
    (dataset, nomenclature, alpha, encoder, epoch, ...), the per-class metric (AP, accuracy),
    its value (%, null for a class without samples) and n (its positives, or samples).
    Returns the rows without their per-class values."""
    macro, long = [], []
    for r in rows:
        r = dict(r)
        values = r.pop("per_class", None)
        macro.append(r)
        keep = {k: v for k, v in r.items() if k not in ("metric", "value", "n")}
        metric = PER_CLASS_METRIC.get(r["metric"], r["metric"])
        long += [
            {**keep, "class": c, "metric": metric, "value": v, "n": n} for c, v, n in values or ()
        ]
    write_table(macro, Path(out) / "metrics")
    if long:
        write_table(long, Path(out) / "per_class")
    return macro


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    """The resolved config as YAML (loadable again with --config)."""
    loc = storage.location(path)
    text = yaml.safe_dump(json.loads(json.dumps(cfg)), sort_keys=False)
    storage.write_bytes_atomic(loc.fs, loc.path, text.encode())


def plot_alpha_curve(
    curves: dict[str, dict[float, float]],
    chosen: float | None,
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "metric (%)",
    pareto: Sequence[float] = (),
) -> None:
    """Patching vs supported metric against alpha, the chosen alpha marked."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    styles = {"patching": ("tab:blue", "o"), "supported": ("tab:orange", "s")}
    for role, curve in curves.items():
        color, marker = styles.get(role, ("tab:gray", "^"))
        alphas = sorted(curve)
        ax.plot(alphas, [curve[a] for a in alphas], marker=marker, color=color, label=role)
        for a in pareto:
            if a in curve:
                ax.plot([a], [curve[a]], marker="*", color="gold", markersize=12, zorder=3)
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen alpha = {chosen:g}")
    ax.set_xlabel("alpha (0 = zero-shot, 1 = fine-tuned)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> None:
    """A matplotlib figure as PNG, written atomically; the figure is closed."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    loc = storage.location(path)
    storage.write_bytes_atomic(loc.fs, loc.path, buf.getvalue())


def plot_loss_curves(
    steps: Sequence[int],
    parts: dict[str, Sequence[float | None]],
    path: str | Path,
    title: str = "",
) -> None:
    """Training-loss parts against the step (a running mean over ~2 % of the run), log scale."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    window = max(1, len(steps) // 50)
    for name, values in parts.items():
        pts = [(s, v) for s, v in zip(steps, values, strict=True) if v is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        smooth = [
            sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
            for i in range(len(ys))
        ]
        ax.plot(xs, smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v is None or v > 0 for vals in parts.values() for v in vals):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_paired_bars(
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
) -> None:
    """One group of bars per label, one bar per series (None: no bar), e.g. paper vs mtmg."""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels)), 4), dpi=120)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    save_figure(fig, path)
