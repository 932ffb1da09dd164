"""Ray Tune for the sweeps (`mtmg.sweeps`): running a Tuner with resume, and the pieces that
talk to Tune (search algorithms, schedulers, trainables, the experiment's storage).

- `run_tuner`: a function trainable under `tune.Tuner` with `tune.with_resources`, reused trial
  actors (a trial costs a function call, not a process start), a grid or `OptunaSearch`
  (single- or multi-objective). `--resume` restores the experiment with `Tuner.restore`:
  finished trials are kept, not re-run. A failing trial is recorded with its error
  (`FailureConfig(max_failures=0)`) and the sweep goes on.
- `bind`: a trial function with its inputs in the object store, sent once.

The sweep's options arrive as any object with the fields of `TuneOptions` (a sweep config).
Ray and Ray Tune are imported lazily: `--help` and input checks run without them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from mtmg import logs, tracking
from mtmg.data import storage

log = logging.getLogger(__name__)

# Experiment-state snapshots (what --resume restores) at most this often, in seconds; Tune's
# "auto" waits >= 10 s, so a driver killed mid-sweep would re-run up to 10 s of finished trials.
STATE_PERIOD_S = "1"


class TuneOptions(Protocol):
    """The sweep options Tune's side reads (`mtmg.sweeps.config.SweepConfig` has them)."""

    out: str
    cluster: bool
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    storage: str | None
    resume: bool
    retry_failed: bool
    report_to: tuple[str, ...]


def experiment(cfg: TuneOptions, name: str) -> tuple[str, str]:
    """(storage path or URI, experiment path) of the sweep's Tune experiment."""
    store = cfg.storage or os.path.join(os.path.abspath(cfg.out), "tune")
    if "://" not in store:
        store = os.path.abspath(os.path.expanduser(store))  # trial actors change their cwd
    return store, f"{store.rstrip('/')}/{name}"


def remove_experiment(cfg: TuneOptions, name: str) -> None:
    """Delete the sweep's Tune experiment (one that must not be resumed)."""
    loc = storage.location(experiment(cfg, name)[1])
    if storage.is_dir(loc.fs, loc.path):
        loc.fs.delete_dir(loc.path)


def can_resume(cfg: TuneOptions, name: str) -> bool:
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


def preload(cfg: TuneOptions, modules: Sequence[str]) -> None:
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


def init(cfg: TuneOptions) -> bool:
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


def grid_space(values: dict[str, Sequence[Any]]) -> dict[str, Any]:
    """A Tune param space that runs every combination of the values."""
    from ray import tune

    return {k: tune.grid_search(list(v)) for k, v in values.items()}


def asha(metric: str, max_t: int) -> Any:
    """An ASHA scheduler that stops poor trials after their first reports (maximising)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(metric=metric, mode="max", max_t=max_t, grace_period=1)


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
    trainable = functools.partial(_call_with_inputs, fn, refs, logs.verbosity())
    trainable.__name__ = getattr(fn, "__name__", "trial")  # type: ignore[attr-defined]
    return trainable


def _call_with_inputs(
    fn: Callable[..., None], refs: dict[str, Any], verbosity: int, config: dict
) -> None:
    import ray

    logs.setup(verbosity)  # the command's logging: no library chatter in trial output
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
    cfg: TuneOptions,
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
            path,
            trainable,
            resume_unfinished=True,
            restart_errored=cfg.retry_failed,
            param_space=param_space,
        )
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
                callbacks=logger_callbacks(cfg, name),
            ),
        )
    with _trial_actors_in_warm_workers(trial_env):
        return tuner.fit()


def logger_callbacks(cfg: TuneOptions, name: str) -> list[Any]:
    """Tune's logger callbacks for --report-to: one tracked run per trial, grouped by the sweep
    (MLflow experiment and W&B group `mtmg-<name>`; TensorBoard files in each trial's dir)."""
    backends = tracking.check(getattr(cfg, "report_to", ()))
    out, group = os.path.abspath(cfg.out), tracking.experiment_name(name)
    callbacks: list[Any] = []
    if "tensorboard" in backends:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if "mlflow" in backends:
        from mlflow.tracking import MlflowClient
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = tracking.mlflow_uri(out)
        tracking.mlflow_experiment(MlflowClient(uri), group, out)  # its artifacts under OUT
        tags = {"mtmg.sweep": name, "mtmg.out": out}
        callbacks.append(MLflowLoggerCallback(uri, experiment_name=group, tags=tags))
    if "wandb" in backends:
        from ray.air.integrations.wandb import WandbLoggerCallback

        mode = os.environ.get("WANDB_MODE", "offline")
        callbacks.append(
            WandbLoggerCallback(project=tracking.wandb_project(), group=group, dir=out, mode=mode)
        )
    return callbacks
