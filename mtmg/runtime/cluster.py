"""Connecting to Ray: an embedded local instance by default, an existing cluster on request.

`--cluster` (or a `RAY_ADDRESS` in the environment, as `ray job submit` sets) connects to a
running cluster; otherwise a private local Ray is started for this process only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from mtmg.errors import MtmgError
from mtmg.runtime import ray_private

log = logging.getLogger(__name__)
# A custom resource only an embedded Ray's node has (nothing requests it): `is_embedded`
EMBEDDED = "mtmg_embedded"
# An embedded Ray's trial slots, one per CPU: sweep trials that only wait for a Train job's
# output can hold these instead of CPUs, so they start while the job holds the CPUs (the alpha
# sweep) and, like CPU-bound trials, at most one per CPU runs at once.
TRIAL_SLOT = "mtmg_trial_slot"


class ClusterError(MtmgError):
    """No cluster to connect to, or storage the cluster's nodes cannot see."""


def init_ray(
    cluster: bool = False, *, num_cpus: int | None = None, resources: dict[str, float] | None = None
) -> bool:
    """Start or connect to Ray once per process; returns True when connected to a cluster.

    Embedded runs use `address="local"` (never a stale `ray start` left on the machine) and
    listen on the loopback interface only.
    """
    address = os.environ.get("RAY_ADDRESS")
    on_cluster = cluster or bool(address)
    if ray.is_initialized():
        return on_cluster
    if on_cluster:
        if address:
            _check_reachable(address)
        try:
            ray.init(address=address or "auto", logging_level=logging.WARNING)
        except ConnectionError as e:
            raise ClusterError(
                f"--cluster: no Ray cluster found at {address or 'auto'} ({e}). Start one with "
                "`ray start --head` or set RAY_ADDRESS=<head-ip>:6379; drop --cluster to run on "
                "an embedded local Ray."
            ) from e
        log.info("connected to Ray cluster: %s", ray.cluster_resources())
        return True
    # A single-node Ray needs no reachable address: keep its traffic on 127.0.0.1 (Ray would
    # otherwise advertise the machine's external IP).
    ray_private.advertise_loopback()
    cpus = num_cpus if num_cpus is not None else _cpu_count()
    ray.init(
        address="local",
        num_cpus=cpus,
        resources={TRIAL_SLOT: float(cpus), EMBEDDED: 1.0, **(resources or {})},
        # An embedded Ray runs lean: no dashboard modules (about ten processes that wake up
        # every second) and no metrics export, which nobody could look at without them; they
        # take CPU from training (bench/results/NOTES.md). Ray's dashboard: run with --cluster.
        include_dashboard=False,
        object_store_memory=min(2 * 1024**3, _default_object_store()),
        logging_level=logging.WARNING,
        log_to_driver=True,
        # Ray lowers its workers' priority (nice 15) below its own daemons; on a machine the
        # embedded run has to itself, the workers are the job: give them normal priority.
        **ray_private.system_config(worker_niceness=0, enable_metrics_collection=False),
    )
    return False


@contextlib.contextmanager
def interruptible(what: str) -> Iterator[None]:
    """Ctrl-C while the driver waits on Ray as a KeyboardInterrupt: Ray's blocking calls turn the
    interrupt into SystemExit, which would end the command silently with exit 1."""
    try:
        yield
    except SystemExit as e:
        raise KeyboardInterrupt(f"{what} interrupted") from e


def is_embedded() -> bool:
    """Whether the connected Ray is an embedded one that `init_ray` started (one node, a
    dashboard without the state API); works in the driver and in any of its workers."""
    return EMBEDDED in ray.cluster_resources()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail within seconds when nothing listens at host:port (ray.init would retry for minutes)."""
    if "://" in address or address == "auto" or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ClusterError(
            f"--cluster: no Ray cluster found at {address} ({e}). Start one with "
            "`ray start --head`, or fix RAY_ADDRESS; drop --cluster to run on an embedded Ray."
        ) from e


def _cpu_count() -> int:
    """The CPUs this process may use: its CPU affinity, bounded by a cgroup CPU quota (as Ray
    counts a node's CPUs when not given `num_cpus`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity outside Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return min(cpus, quota) if quota else cpus


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this process's cgroup (v1, else v2), None without one."""
    v1 = root / "cpu"
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            text = " ".join((v1 / f).read_text() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        else:
            text = (root / "cpu.max").read_text()
        return _quota_cpus(text)
    except (OSError, ValueError):
        return None


def _quota_cpus(text: str) -> int | None:
    """Whole CPUs in a quota "QUOTA PERIOD" (cgroup v2's cpu.max, or v1's two files); None for
    no quota ("max", -1). Rounded down, at least 1, as Ray does."""
    quota, period = text.split()
    if quota == "max" or int(quota) < 0:
        return None
    return max(1, int(quota) // int(period))


def _default_object_store() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 1024**3
    return max(256 * 1024**2, int(total * 0.1))


def cpus_available() -> int:
    return int(ray.cluster_resources().get("CPU", 1))


@ray.remote(num_cpus=0)
def _probe(paths: list[str]) -> tuple[str, list[bool]]:
    return ray.util.get_node_ip_address(), [os.path.exists(p) for p in paths]


def check_paths_visible(read_paths: list[str], write_dir: str) -> None:
    """Fail with a clear message when a local path is not visible on every alive node.

    A marker written under `write_dir` by this driver must be visible from all nodes, so shards
    written by tasks end up in one shared place instead of scattered over node-local disks.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    os.makedirs(write_dir, exist_ok=True)
    marker = os.path.join(write_dir, f".probe-{uuid.uuid4().hex[:8]}")
    with open(marker, "w") as f:
        f.write("mtmg")
    try:
        refs = [
            _probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote([*read_paths, marker])
            for n in ray.nodes()
            if n.get("Alive")
        ]
        problems = []
        for ip, ok in ray.get(refs):
            missing = [p for p, seen in zip([*read_paths, write_dir], ok, strict=True) if not seen]
            if missing:
                problems.append(f"node {ip} cannot see {missing}")
    finally:
        os.remove(marker)
    if problems:
        raise ClusterError(
            "paths are not shared across the cluster: "
            + "; ".join(problems)
            + ". Put RAW and OUT on storage every node mounts at the same path, or use an "
            "object-store URI (s3://..., gs://...)."
        )


def describe() -> dict[str, Any]:
    """Resources of the connected Ray, for logs and manifests."""
    res = ray.cluster_resources()
    return {"nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cpus": res.get("CPU", 0)}
