"""What a sweep leaves in OUT: one table of its trials, a summary, configs, heat maps.

- `trial_rows`, `complete`: one flat row per trial of Tune's ResultGrid (config, metrics, time,
  status, error), one schema for all.
- `write_outputs`: `<table>.parquet/.csv`, `summary.md`, `summary.json`, `spec.yaml` (loadable
  with `--spec`), `best_config.yaml` (a config file of the stage) and the resolved stage configs
  the trials started from, their paths absolute (`absolute_paths`).
- `pareto_front`, `markdown_table`, `heatmap`: what the summaries show.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtmg.data import storage

# fmt: off
# Tune's bookkeeping keys: kept in the table only as the columns named in `trial_rows`
_AUTO_KEYS = {
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_total_s",
    "time_this_iter_s", "time_since_restore", "iterations_since_restore",
    "timesteps_since_restore", "timesteps_total", "episodes_total", "pid", "hostname",
    "node_ip", "config", "experiment_tag", "checkpoint_dir_name", "should_checkpoint",
    "experiment_id",
}
# fmt: on
# the stage options (`PatchConfig`, `AlignConfig`) that name local files or directories
PATH_KEYS = ("data", "out", "teacher", "student_init", "cache_dir", "model_config", "templates")
PATH_LIST_KEYS = ("joint_data", "supported")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")  # `pretrained`: a file, not a tag


def absolute(path: str) -> str:
    """A local path made absolute (trial actors change their cwd); a URI unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """A stage config with every local path absolute (relative ones read from this process's
    cwd), so that its file runs from any directory: `eval_data` entries keep their
    `:NOMENCLATURE`, `pretrained` only when it names a file; URIs unchanged."""
    from mtmg.data import evalsets  # torch: not imported with this module

    out = dict(values)
    for k in PATH_KEYS:
        if out.get(k):
            out[k] = absolute(str(out[k]))
    for k in PATH_LIST_KEYS:  # a tuple stays a tuple (a config's field), a list a list
        if out.get(k):
            out[k] = type(out[k])(absolute(str(p)) for p in out[k])
    if out.get("eval_data"):
        out["eval_data"] = type(out["eval_data"])(
            evalsets.absolute(str(e)) for e in out["eval_data"]
        )
    pre = out.get("pretrained")
    if pre and ("/" in pre or Path(pre).suffix.lower() in CHECKPOINT_SUFFIXES):
        out["pretrained"] = absolute(pre)
    return out


def error_text(err: BaseException | None) -> str | None:
    """One line naming a failed trial's exception: `Type: message`."""
    if err is None:
        return None
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(err)):
        err = cause
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if lines and ": " in lines[-1] and not str(err).startswith(type(err).__name__):
        return lines[-1]  # a traceback text: its last line is "Type: message"
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _trial_config(result: Any) -> dict[str, Any]:
    if result.config:
        return dict(result.config)
    try:  # a trial that failed before reporting: its params.json
        text = storage.read_bytes(result.filesystem, f"{result.path}/params.json")
        return json.loads(text)
    except Exception:  # noqa: BLE001 - no config recorded: leave the columns empty
        return {}


def trial_rows(grid: Any, final_key: str | None = None) -> list[dict[str, Any]]:
    """One flat dict per trial of a ResultGrid: trial, status, config/*, metrics, time, error.

    `final_key`: a metric only a trial's last report carries. Tune may restore a trial whose
    driver was killed right after that report without its `done` flag; such a trial finished
    (and --resume rightly skips it), so it counts as TERMINATED.
    """
    rows = []
    for result in grid:
        m = dict(result.metrics or {})
        trial = m.get("trial_id") or os.path.basename(str(result.path)).split("_")[-1]
        reported = {k: v for k, v in m.items() if k not in _AUTO_KEYS}
        finished = m.get("done") or (final_key is not None and m.get(final_key) is not None)
        status = "ERROR" if result.error else ("TERMINATED" if finished else "INCOMPLETE")
        row = {
            "trial_id": trial,
            "status": status,
            **{f"config/{k}": v for k, v in _flat(_trial_config(result)).items()},
            **_flat(reported),
            "time_s": m.get("time_total_s"),
            "timestamp": m.get("timestamp"),
            "node_ip": m.get("node_ip"),
            "pid": m.get("pid"),
            "error": error_text(result.error),
            "path": str(result.path),
        }
        rows.append(row)
    return rows


def complete(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the union of all keys (missing values None), for one table schema."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return [{k: r.get(k) for k in keys} for r in rows]


def pareto_front(points: Sequence[tuple[Any, Sequence[float]]]) -> list[Any]:
    """Ids of the points no other point dominates (every objective maximised)."""

    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    return [i for i, p in points if not any(dominates(q, p) for _, q in points)]


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of `columns` of the rows."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(
    out: str | Path,
    rows: Sequence[dict[str, Any]],
    *,
    summary_md: str,
    summary: dict[str, Any],
    spec: dict[str, Any],
    best_config: dict[str, Any] | None = None,
    stage_configs: dict[str, dict[str, Any]] | None = None,
    table: str = "sweep",
) -> None:
    """`<table>.parquet/.csv`, `summary.md`, `summary.json`, `spec.yaml`, `best_config.yaml`
    and `<name>.yaml` of each of `stage_configs` (atomic writes through `mtmg.data.storage`);
    the stage configs with their paths absolute (`absolute_paths`)."""
    from mtmg.report import tables  # matplotlib: not imported where trials run

    loc = storage.location(out)
    fs = loc.fs
    fs.create_dir(loc.path, recursive=True)
    tables.write_table(complete(rows), f"{loc.uri}/{table}")
    storage.write_bytes_atomic(fs, loc.child_path("summary.md"), summary_md.encode())
    data = json.dumps(summary, indent=1, default=str) + "\n"
    storage.write_bytes_atomic(fs, loc.child_path("summary.json"), data.encode())
    tables.save_config(spec, f"{loc.uri}/spec.yaml")
    if best_config is not None:
        tables.save_config(absolute_paths(best_config), f"{loc.uri}/best_config.yaml")
    for name, values in (stage_configs or {}).items():
        tables.save_config(absolute_paths(values), f"{loc.uri}/{name}.yaml")


def heatmap(
    matrix: dict[str, dict[str, float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: Path,
    *,
    title: str,
    label: str,
    diverging: bool = False,
    xlabel: str = "dataset",
    ylabel: str = "backbone",
) -> None:
    """A rows x cols heat map with the values written in the cells (blank: no value)."""
    import numpy as np

    from mtmg.report import tables

    grid = np.array(
        [
            [np.nan if matrix.get(r, {}).get(c) is None else matrix[r][c] for c in cols]
            for r in rows
        ],
        dtype=float,
    )
    width = 2.6 + 0.075 * max((len(r) for r in rows), default=0) + 1.2 * len(cols)
    fig, ax = tables.plt.subplots(figsize=(max(5.0, width), 1.6 + 0.5 * len(rows)), dpi=120)
    kw: dict[str, Any] = {"cmap": "viridis"}
    if diverging:
        lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        kw = {"cmap": "RdBu", "vmin": -lim or -1.0, "vmax": lim or 1.0}
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", **kw)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = "failed" if math.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
            r, g, b, _ = im.cmap(im.norm(grid[i, j])) if not math.isnan(grid[i, j]) else (1,) * 4
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black"
            )
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    tables.save_figure(fig, path)
