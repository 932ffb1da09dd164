"""A stage's job from the driver's side: own OUT and join Ray, then run the worker as a Ray
Train job with the config and the test faults, and read back its last checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mtmg import faults, rundir
from mtmg.runtime import train
from mtmg.runtime.cluster import init_ray
from mtmg.stages.config import StageConfig


def absolute(path: str) -> str:
    """An absolute local path (Ray workers change their cwd); URIs unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


@contextlib.contextmanager
def claimed(kind: str, cfg: StageConfig) -> Iterator[Path]:
    """OUT, absolute, owned by this run of `cfg` (`mtmg.rundir.claim`), with Ray joined."""
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
