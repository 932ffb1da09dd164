"""A stage's job from the driver's side: own OUT and join Ray, then run the worker as a Ray
Train job with the config and the test faults, and read back its last checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mtmg import config, faults, rundir, tracking
from mtmg.runtime import train
from mtmg.runtime.cluster import init_ray
from mtmg.stages.config import StageConfig

log = logging.getLogger(__name__)


def absolute(path: str) -> str:
    """An absolute local path (Ray workers change their cwd); URIs unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


@contextlib.contextmanager
def claimed(kind: str, cfg: StageConfig) -> Iterator[Path]:
    """OUT, absolute, owned by this run of `cfg` (`mtmg.rundir.claim`), with Ray joined; the
    --report-to backends are checked first."""
    tracking.check(cfg.report_to)
    with rundir.claim(kind, cfg, cfg.out, overwrite=cfg.overwrite):
        out = Path(cfg.out).resolve()
        init_ray(cfg.cluster)  # no cluster: an error before anything is written
        yield out


def fit(
    worker: train.Worker,
    cfg: StageConfig,
    conf: dict[str, Any],
    *,
    shared: dict[str, Any],
    out: Path,
    name: str,
    weights: str,
    on_start: Callable[[], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`worker` as the Ray Train job `name` (`mtmg.runtime.train.run_job`), its `conf` with
    `cfg` and the test faults of this process added; returns the last checkpoint's
    `<weights>.safetensors` and state."""
    conf = {"cfg": dataclasses.asdict(cfg), **conf, "faults": faults.current()}
    return train.run_job(
        worker, conf, cfg, shared=shared, out=out, name=name, weights=weights, on_start=on_start
    )


def write_summary(out: Path, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """OUT/summary.json: the run's summary and its wall time; returns what it wrote."""
    summary = {**summary, "seconds": round(seconds, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


@contextlib.contextmanager
def tracked(kind: str, cfg: StageConfig, out: Path) -> Iterator[tracking.Destination | None]:
    """The run tracked with --report-to (None without): the resolved config logged, the
    destination yielded for the worker (its conf's "tracking") and `finish`; a run that
    raises is marked failed."""
    run = tracking.start(cfg.report_to, out, kind)
    if run is None:
        yield None
        return
    with run:
        run.log_config(config.to_dict(cfg))
    try:
        yield run.dest
    except BaseException:
        tracking.resume(run.dest).close("FAILED")  # type: ignore[union-attr]
        raise


def finish_tracking(
    dest: tracking.Destination | None,
    step: int,
    metrics: Mapping[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    curves: Sequence[tuple[int, Mapping[str, Any]]] = (),
) -> None:
    """The run's results to its trackers (`metrics` at `step`, `tables`, `curves` as (step,
    metrics)), the run ended, and where to look logged."""
    run = tracking.resume(dest)
    if run is None:
        return
    for at, values in curves:
        run.log_metrics(at, values)
    run.log_metrics(step, metrics)
    for name, rows in tables.items():
        run.log_table(name, rows)
    run.close("FINISHED")
    for line in tracking.where(run.dest):
        log.info("tracked: %s", line)
