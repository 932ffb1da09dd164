"""A whole stage run as one Ray task on a running cluster: for the stages without a training
job (zero-shot scoring, linear probing), so that `--cluster` puts them on the cluster's (GPU)
nodes beside the data, as it does the training jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import ray

from mtmg.runtime.cluster import check_paths_visible, init_ray, interruptible

C = TypeVar("C")
R = TypeVar("R")


def on_cluster(
    run: Callable[[C], R],
    cfg: C,
    *,
    reads: Sequence[str],
    writes: str,
    gpu: bool | None = None,
    cpus: float = 1.0,
) -> R:
    """`run(cfg)` in one Ray task on the cluster (RAY_ADDRESS or auto), its result returned;
    on a GPU when `gpu`, or (None) when the cluster has one. `reads` and `writes` must be
    visible from every node (checked first, ClusterError if not); `run` must be an importable
    module function (the task imports it by name)."""
    init_ray(cluster=True)
    check_paths_visible([p for p in reads if "://" not in p], writes)
    gpus = 1.0 if gpu or (gpu is None and ray.cluster_resources().get("GPU")) else 0.0
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run)
    with interruptible("the stage's task"):
        return ray.get(task.remote(cfg))
