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

from mtmg import storage  # noqa: E402


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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    loc = storage.location(path)
    storage.write_bytes_atomic(loc.fs, loc.path, buf.getvalue())
