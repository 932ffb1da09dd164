"""Ray Tune glue shared by every sweep (`sweeps/*.py`): common options, running a Tuner with
resume, and turning its results into a table, a summary and the best config.

- `SweepConfig`: the options every sweep has (`--cluster`, resources per trial,
  `--max-concurrent`, `--num-samples`, `--seed`, `--storage`, `--resume`, `--search`,
  `--spec FILE.yaml`); a sweep's own config subclasses it. `parse` resolves
  defaults < `--spec` < `--config` < flags.
- `run_tuner`: a function trainable under `tune.Tuner` with `tune.with_resources`, reused trial
  actors (a trial costs a function call, not a process start), a grid or `OptunaSearch`
  (single- or multi-objective). `--resume` restores the experiment with `Tuner.restore`:
  finished trials are kept, not re-run. A failing trial is recorded with its error
  (`FailureConfig(max_failures=0)`) and the sweep goes on.
- `trial_rows`, `pareto_front`, `markdown_table`, `write_outputs`: one parquet + CSV table of all
  trials (config, metrics, time, status, error), `summary.md`, the best config as a YAML file
  the stage accepts (`--config`), and the resolved spec (`spec.yaml`, loadable with `--spec`).

Ray and Ray Tune are imported lazily: `--help` and input checks run without them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mtmg import config, rundir
from mtmg.data import storage

log = logging.getLogger(__name__)
option = config.option
T = TypeVar("T")

SEARCHES = ("grid", "optuna")
# Experiment-state snapshots (what --resume restores) at most this often, in seconds; Tune's
# "auto" waits >= 10 s, so a driver killed mid-sweep would re-run up to 10 s of finished trials.
STATE_PERIOD_S = "1"
# Tune's bookkeeping keys: kept in the table only as the columns named in `trial_rows`
_AUTO_KEYS = {
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_total_s",
    "time_this_iter_s", "time_since_restore", "iterations_since_restore",
    "timesteps_since_restore", "timesteps_total", "episodes_total", "pid", "hostname",
    "node_ip", "config", "experiment_tag", "checkpoint_dir_name", "should_checkpoint",
    "experiment_id",
}  # fmt: skip


@dataclass(frozen=True)
class SweepConfig:
    """Options common to all sweeps."""

    out: str = option(help="output directory: table, summary, best config, plots")
    cluster: bool = option(
        False, help="connect to a running Ray cluster (RAY_ADDRESS or auto); else embedded Ray"
    )
    cpus_per_trial: float = option(1.0, help="CPUs reserved per trial (fractions allowed)")
    gpus_per_trial: float = option(0.0, help="GPUs per trial (fractions allowed, e.g. 0.25)")
    max_concurrent: int | None = option(
        None, help="at most this many trials at once (default: as many as resources allow)"
    )
    num_samples: int = option(12, help="trials of an Optuna search")
    seed: int = option(0, help="seed of the search algorithm")
    storage: str | None = option(
        None, help="Ray Tune experiment storage: local path, NFS or a pyarrow URI "
        "(s3://, gs://, file://); default OUT/tune"
    )  # fmt: skip
    resume: bool = option(
        False, help="continue an interrupted sweep in the same storage; finished trials are kept"
    )
    retry_failed: bool = option(False, help="with --resume: run failed trials again")
    overwrite: bool = option(
        False, help="OUT holds a sweep of other settings: delete it and start afresh"
    )
    search: str = option("grid", help="search algorithm", choices=list(SEARCHES))
    spec: str | None = option(
        None, help="sweep spec YAML: search space and fixed settings, keys as the long options "
        "(spec.yaml of an earlier sweep works); flags override it"
    )  # fmt: skip


def parse(cls: type[T], argv: Sequence[str] | None, description: str, epilog: str = "") -> T:
    """A sweep config from the command line: defaults < --spec < --config < flags."""
    parser = config.build_parser(cls, description, epilog)
    ns = parser.parse_args(argv)
    try:
        values: dict[str, Any] = {}
        if getattr(ns, "spec", None):
            values.update(config.load_yaml(cls, ns.spec))
            values["spec"] = ns.spec
        if ns.config:
            values.update(config.load_yaml(cls, ns.config))
        values.update({k: v for k, v in vars(ns).items() if k != "config"})
        return config.from_args(cls, argparse.Namespace(config=None, **values))
    except (TypeError, ValueError, OSError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def check(cfg: SweepConfig) -> None:
    """Errors in the common options, before Ray starts."""
    if cfg.cpus_per_trial < 0 or cfg.gpus_per_trial < 0:
        raise ValueError("--cpus-per-trial and --gpus-per-trial must not be negative")
    if cfg.cpus_per_trial == 0 and cfg.gpus_per_trial == 0:
        raise ValueError("a trial needs some resource: --cpus-per-trial or --gpus-per-trial > 0")
    if cfg.max_concurrent is not None and cfg.max_concurrent < 1:
        raise ValueError("--max-concurrent must be at least 1")
    if cfg.num_samples < 1:
        raise ValueError("--num-samples must be at least 1")
    if cfg.search not in SEARCHES:
        raise ValueError(f"unknown --search {cfg.search!r}; choose one of {list(SEARCHES)}")
    if cfg.retry_failed and not cfg.resume:
        raise ValueError("--retry-failed only applies with --resume")


def experiment(cfg: SweepConfig, name: str) -> tuple[str, str]:
    """(storage path or URI, experiment path) of the sweep's Tune experiment."""
    store = cfg.storage or os.path.join(os.path.abspath(cfg.out), "tune")
    if "://" not in store:
        store = os.path.abspath(os.path.expanduser(store))  # trial actors change their cwd
    return store, f"{store.rstrip('/')}/{name}"


def remove_experiment(cfg: SweepConfig, name: str) -> None:
    """Delete the sweep's Tune experiment (one that must not be resumed)."""
    loc = storage.location(experiment(cfg, name)[1])
    if storage.is_dir(loc.fs, loc.path):
        loc.fs.delete_dir(loc.path)


@contextlib.contextmanager
def claim(cfg: SweepConfig, name: str) -> Iterator[None]:
    """Own OUT while the sweep runs (`mtmg.rundir.claim`: locked, fingerprinted); with
    --overwrite the old sweep, its Tune experiment included, is deleted first."""
    with rundir.claim(name, cfg, cfg.out, overwrite=cfg.overwrite) as same:
        if cfg.overwrite:
            remove_experiment(cfg, name)
        if cfg.resume and not same:
            raise ValueError(
                f"--resume: no sweep to resume in {os.path.abspath(cfg.out)}; "
                "run without --resume to start one"
            )
        yield


def can_resume(cfg: SweepConfig, name: str) -> bool:
    """Whether a restorable experiment exists; one without --resume is an error (no mixing)."""
    from ray.tune import Tuner

    _, path = experiment(cfg, name)
    found = Tuner.can_restore(path)
    if found and not cfg.resume:
        raise ValueError(
            f"a sweep already exists at {path}: pass --resume to continue it (finished trials "
            "are kept), or choose another --out / --storage"
        )
    if cfg.resume and not found:
        log.info("--resume: the sweep had not started its trials; starting them")
    return found


def preload(cfg: SweepConfig, modules: Sequence[str]) -> None:
    """Have an embedded Ray's worker processes import `modules` as they start.

    Ray starts idle workers with `ray.init`; with the trial code imported there (torch,
    open_clip: seconds on a small machine), a trial actor starts in a fraction of a second, while
    the driver still prepares. Call before Ray starts; no effect on a cluster (its workers
    belong to `ray start`) or when the user set RAY_preload_python_modules.

    Only for trials that follow Ray's start: every worker Ray starts imports the modules, and
    a Ray Train job makes Ray start (and discard) a worker for each of its helper actors. Before
    the alpha sweep's own fine-tune it costs more than it saves (bench/results/NOTES.md).
    """
    import ray

    from mtmg.runtime.ray_private import PRELOAD_MODULES_ENV

    if cfg.cluster or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    os.environ.setdefault(PRELOAD_MODULES_ENV, ",".join(modules))


def init(cfg: SweepConfig) -> bool:
    """Start the embedded Ray or connect to the cluster; True on a cluster. Checks that a
    trial's resources can be had at all (else Tune would wait forever)."""
    import ray

    from mtmg.runtime.cluster import init_ray

    on_cluster = init_ray(cfg.cluster)
    res = ray.cluster_resources()
    for key, need in (("CPU", cfg.cpus_per_trial), ("GPU", cfg.gpus_per_trial)):
        if need > res.get(key, 0):
            msg = f"a trial needs {need:g} {key} but the Ray cluster has {res.get(key, 0):g}"
            if not on_cluster:
                ray.shutdown()
                raise ValueError(msg)
            log.warning("%s (waiting for an autoscaler to add nodes)", msg)
    return on_cluster


def optuna_search(
    space: dict[str, Any],
    metric: str | list[str],
    mode: str | list[str],
    *,
    seed: int,
    points: Sequence[dict[str, Any]] = (),
) -> Any:
    """An `OptunaSearch` (TPE; multi-objective when `metric` is a list) over an Optuna space."""
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(
        space, metric=metric, mode=mode, points_to_evaluate=list(points) or None, seed=seed
    )


def bind(fn: Callable[..., None], **inputs: Any) -> Callable[[dict], None]:
    """The trial function `fn(config, **inputs)` as a Tune function trainable; every input goes
    to the object store once and each trial gets it back with `ray.get` (as
    `tune.with_parameters` does).

    Why not `tune.with_parameters`: a trial actor made from it never starts in one of the idle
    workers that `preload` warmed up, always in a new interpreter that imports torch and
    open_clip first (bench/results/NOTES.md).
    """
    import ray

    refs = {k: v if isinstance(v, ray.ObjectRef) else ray.put(v) for k, v in inputs.items()}
    trainable = functools.partial(_call_with_inputs, fn, refs)
    trainable.__name__ = getattr(fn, "__name__", "trial")  # type: ignore[attr-defined]
    return trainable


def _call_with_inputs(fn: Callable[..., None], refs: dict[str, Any], config: dict) -> None:
    import ray

    fn(config, **{k: ray.get(r) for k, r in refs.items()})


@contextlib.contextmanager
def _trial_actors_in_warm_workers(env: dict[str, str] | None = None) -> Iterator[None]:
    """Let trial actors start in the idle workers that `preload` warmed up.

    Ray Tune gives every trial actor a runtime environment of its own (`{"env_vars":
    {"PL_DISABLE_FORK": "1"}}`, for PyTorch Lightning, in Tune's defaults), and Ray does not
    give an actor an idle worker of another runtime environment: each sweep waited for a new
    interpreter to import torch and open_clip. mtmg's trials do not use Lightning. Variables
    that Tune propagates because the user set them are kept; `env` is added (the trial actors
    then start in workers of their own).
    """
    from mtmg.runtime.ray_private import tune_trial_env

    with tune_trial_env(drop=("PL_DISABLE_FORK",), add=env):
        yield


def run_tuner(
    trainable: Callable[[dict], None],
    cfg: SweepConfig,
    *,
    name: str,
    param_space: dict[str, Any] | None = None,
    search_alg: Any = None,
    num_samples: int = 1,
    scheduler: Any = None,
    verbose: int = 1,
    resources: dict[str, float] | None = None,
    trial_env: dict[str, str] | None = None,
) -> Any:
    """Run (or, with --resume, restore and finish) the sweep; returns Tune's ResultGrid.

    `trainable` is a function trainable, made with `bind` so that large inputs travel through
    the object store once. Trials are scheduled with `cfg.cpus_per_trial` /
    `cfg.gpus_per_trial` (or `resources`, a Tune resource dict) and run in reused actors, in
    workers that imported the trial code (with `trial_env` in their environment).
    """
    from ray import tune

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_PERIOD_S)
    store, path = experiment(cfg, name)
    if resources is None:
        resources = {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    trainable = tune.with_resources(trainable, {k: v for k, v in resources.items() if v})
    if cfg.resume and tune.Tuner.can_restore(path):
        log.info("resuming the sweep at %s", path)
        tuner = tune.Tuner.restore(
            path, trainable, resume_unfinished=True, restart_errored=cfg.retry_failed,
            param_space=param_space,
        )  # fmt: skip
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=cfg.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=store,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=verbose,
            ),
        )
    with _trial_actors_in_warm_workers(trial_env):
        return tuner.fit()


# ------------------------------------------------------------------------------------ results


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
    table: str = "sweep",
) -> None:
    """`<table>.parquet/.csv`, `summary.md`, `summary.json`, `spec.yaml`, `best_config.yaml`
    (atomic writes through `mtmg.data.storage`)."""
    from mtmg.report import tables as results  # matplotlib: not imported where trials run

    loc = storage.location(out)
    fs = loc.fs
    fs.create_dir(loc.path, recursive=True)
    results.write_table(complete(rows), f"{loc.uri}/{table}")
    storage.write_bytes_atomic(fs, loc.child_path("summary.md"), summary_md.encode())
    data = json.dumps(summary, indent=1, default=str) + "\n"
    storage.write_bytes_atomic(fs, loc.child_path("summary.json"), data.encode())
    results.save_config(spec, f"{loc.uri}/spec.yaml")
    if best_config is not None:
        results.save_config(best_config, f"{loc.uri}/best_config.yaml")


def resolved_spec(cfg: SweepConfig) -> dict[str, Any]:
    """The options as plain data, loadable again with --spec (spec/resume left out)."""
    d = config.to_dict(cfg)
    for k in ("spec", "resume", "retry_failed", "overwrite"):
        d.pop(k, None)
    return d
