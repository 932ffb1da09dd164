"""Experiment tracking (`--report-to tensorboard,mlflow,wandb`): a stage run's resolved config,
per-step loss and learning rate, per-epoch statistics and validation metrics, the alpha curve
and the final test tables, sent to TensorBoard event files, an MLflow tracking store and
Weights & Biases as well as mtmg's own files.

Offline by default, everything under the run's OUT:
- tensorboard: event files in OUT/tensorboard (`tensorboard --logdir OUT/tensorboard`);
- mlflow: the store `sqlite:///OUT/mlflow.db` (or MLFLOW_TRACKING_URI), experiment
  `mtmg-<stage>` (or MLFLOW_EXPERIMENT_NAME), one run per stage run;
- wandb: offline runs in OUT/wandb (WANDB_MODE=online to upload; `wandb sync` later),
  project `mtmg` (or WANDB_PROJECT), grouped by stage.

A run is written from several processes: the driver opens it (config), the Ray Train worker of
rank 0 resumes it (steps, epochs) and the driver resumes it again (tables, then done). A
`Destination` says where, picklable, so it travels to the worker. The packages are optional
extras (`pip install mtmg[tracking]`), imported only when a backend is opened.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mtmg.errors import InputError

BACKENDS = ("tensorboard", "mlflow", "wandb")
# backend -> (module it imports, pip package that provides it)
PACKAGES = {"tensorboard": ("tensorboardX", "tensorboardX"), "mlflow": ("mlflow", "mlflow-skinny")}
PACKAGES["wandb"] = ("wandb", "wandb")
OPTION = "--report-to"


class Tracker(Protocol):
    """One backend's view of one run."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...
    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None: ...
    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None: ...
    def close(self, end: str | None = None) -> None: ...


def check(report_to: Sequence[str], option: str = OPTION) -> tuple[str, ...]:
    """The backends asked for, each once; an unknown name or a missing package is an error
    naming the option and what to install (raised before anything runs)."""
    names = tuple(dict.fromkeys(n.strip().lower() for r in report_to for n in r.split(",")))
    names = tuple(n for n in names if n and n != "none")
    for n in names:
        if n not in BACKENDS:
            raise InputError(f"{option} {n!r}: unknown backend; choose from {', '.join(BACKENDS)}")
        module, package = PACKAGES[n]
        if importlib.util.find_spec(module) is None:
            raise InputError(
                f"{option} {n}: the {module!r} package is not installed; "
                f"pip install 'mtmg[tracking]' (or pip install {package})"
            )
    return names


def mlflow_uri(out: str | Path) -> str:
    """The MLflow tracking store: MLFLOW_TRACKING_URI, else a SQLite file in OUT."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out).resolve()}/mlflow.db"


def experiment_name(kind: str) -> str:
    """MLflow experiment (W&B group) of a stage or sweep: MLFLOW_EXPERIMENT_NAME or mtmg-KIND."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"mtmg-{kind}"


def wandb_project() -> str:
    return os.environ.get("WANDB_PROJECT") or "mtmg"


def mlflow_experiment(client: Any, name: str, out: str | Path) -> str:
    """The id of experiment `name`, created with its artifacts in OUT/mlartifacts if new."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = (Path(out).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifacts)


@dataclass(frozen=True)
class Destination:
    """Where a run is tracked: its backends, OUT, stage and the backends' run ids."""

    backends: tuple[str, ...]
    out: str
    kind: str
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def tensorboard_dir(self) -> Path:
        return Path(self.out) / "tensorboard"


class Run:
    """All the backends of one run, opened together; every call goes to each."""

    def __init__(self, dest: Destination, trackers: list[Tracker]) -> None:
        self.dest, self.trackers = dest, trackers

    def log_config(self, config: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_config(config)

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        numbers = scalars(metrics)
        if numbers:
            for t in self.trackers:
                t.log_metrics(step, numbers)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            for t in self.trackers:
                t.log_table(name, rows)

    def close(self, end: str | None = None) -> None:
        """Close this process's view; `end` ("FINISHED" or "FAILED") ends the run itself."""
        for t in self.trackers:
            t.close(end)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start(report_to: Sequence[str], out: str | Path, kind: str) -> Run | None:
    """Open a new run of stage `kind` in OUT on every backend (None without backends)."""
    backends = check(report_to)
    if not backends:
        return None
    dest = Destination(backends, str(Path(out).resolve()), kind)
    trackers = [_OPEN[b](dest, None) for b in backends]
    ids = {b: i for b, t in zip(backends, trackers, strict=True) if (i := getattr(t, "id", None))}
    return Run(Destination(backends, dest.out, kind, ids), trackers)


def resume(dest: Destination | None) -> Run | None:
    """Open the run `dest` again (another process, or later in the driver)."""
    if dest is None or not dest.backends:
        return None
    return Run(dest, [_OPEN[b](dest, dest.ids.get(b)) for b in dest.backends])


def record_results(
    report_to: Sequence[str],
    out: str | Path,
    kind: str,
    config: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str],
) -> None:
    """One finished run of an evaluation stage (no training steps): its config, its result
    table and each row's value as `test/<names' values joined by />`."""
    run = start(report_to, out, kind)
    if run is None:
        return
    run.log_config(config)
    run.log_table(kind, rows)
    run.log_metrics(
        0,
        {
            "test/" + "/".join(str(r[n]) for n in names if r.get(n) is not None): r["value"]
            for r in rows
        },
    )
    run.close("FINISHED")


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of `metrics`, nested dicts and lists flattened to `a/b`, `a/0`."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(scalars(v, key + "/"))
        elif isinstance(v, list | tuple):
            out.update(scalars({str(i): x for i, x in enumerate(v)}, key + "/"))
        elif isinstance(v, bool | int | float) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


def params(config: Mapping[str, Any]) -> dict[str, str]:
    """A config as flat string parameters (lists as JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A table as markdown (the columns of every row, in first-seen order)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


class _TensorBoard:
    """Event files in OUT/tensorboard: scalars, the config and tables as text."""

    def __init__(self, dest: Destination, run_id: str | None) -> None:
        from tensorboardX import SummaryWriter

        suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"  # a file of its own per opening
        self.writer = SummaryWriter(
            str(dest.tensorboard_dir), flush_secs=10, filename_suffix=suffix
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.writer.add_text(
            "config", markdown([{"option": k, "value": v} for k, v in config.items()])
        )

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.writer.add_text(name, markdown(rows))

    def close(self, end: str | None = None) -> None:
        self.writer.close()


class _MLflow:
    """One MLflow run, written through the client API (no process-wide active run)."""

    def __init__(self, dest: Destination, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(mlflow_uri(dest.out))
        if run_id is None:
            exp = mlflow_experiment(self.client, experiment_name(dest.kind), dest.out)
            tags = {"mtmg.stage": dest.kind, "mtmg.out": dest.out}
            run_id = self.client.create_run(
                exp, run_name=Path(dest.out).name, tags=tags
            ).info.run_id
        self.id = run_id

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, v[:6000]) for k, v in params(config).items()]
        self.client.log_batch(self.id, params=batch)
        self.client.log_dict(self.id, dict(config), "config.json")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.id, metrics=batch)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        data = {c: [_plain(r.get(c)) for r in rows] for c in cols}
        self.client.log_table(self.id, data, f"{name}.json")

    def close(self, end: str | None = None) -> None:
        if end:
            self.client.set_terminated(self.id, status=end)


def _mlflow_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, str | int | float | bool) else str(v)


class _Wandb:
    """A W&B run, offline unless WANDB_MODE says otherwise; resumed by id across processes."""

    def __init__(self, dest: Destination, run_id: str | None) -> None:
        import wandb

        self.id = run_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=wandb_project(),
            group=experiment_name(dest.kind),
            name=Path(dest.out).name,
            id=self.id,
            resume="allow",
            dir=dest.out,
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        self.run.define_metric("*", step_metric="step")

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({**metrics, "step": step})

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        import wandb

        cols = list(dict.fromkeys(k for r in rows for k in r))
        table = wandb.Table(columns=cols, data=[[_plain(r.get(c)) for c in cols] for r in rows])
        self.run.log({name: table})

    def close(self, end: str | None = None) -> None:
        self.run.finish(exit_code=1 if end == "FAILED" else 0)


_OPEN = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _Wandb}


def where(dest: Destination) -> list[str]:
    """How to look at the run, one line per backend."""
    lines = []
    for b in dest.backends:
        if b == "tensorboard":
            lines.append(f"tensorboard --logdir {dest.tensorboard_dir}")
        elif b == "mlflow":
            lines.append(f"mlflow ui --backend-store-uri {mlflow_uri(dest.out)}")
        else:
            lines.append(f"wandb sync {Path(dest.out) / 'wandb'}/offline-run-*")
    return lines
