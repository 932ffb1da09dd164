"""Ray Train glue: run a stage's per-worker loop as a TorchTrainer (DDP) job.

Stages (`mtmg.patch`, `mtmg.align`) stay plain PyTorch: they receive rank, world size and device
through `WorkerContext` and call the small hooks here for reporting and checkpoints, so the same
loop runs under Ray Train, in a Tune trial, or in a plain test process.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class WorkerContext:
    """Where a stage's worker runs: rank, world size, device, and Ray Train if present."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    ray: bool = False
    # where metrics go outside Ray Train, e.g. `tune.report` in a Tune trial: f(metrics, ckpt)
    reporter: Callable[[dict[str, Any], str | None], None] | None = None

    @classmethod
    def current(cls) -> WorkerContext:
        """The context of this process: a Ray Train worker, or a plain single process."""
        try:
            import ray.train

            ctx = ray.train.get_context()
            rank, world = ctx.get_world_rank(), ctx.get_world_size()
        except (RuntimeError, AttributeError, ValueError, ImportError):
            return cls()
        import ray.train.torch

        return cls(rank, world, ray.train.torch.get_device(), True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def load_checkpoint(self) -> str | None:
        """Directory of the latest checkpoint of this run (after a restart), if any."""
        if not self.ray:
            return None
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        return ckpt.to_directory()

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str]:
        """A temporary directory for rank 0 to fill before `report(..., checkpoint=dir)`."""
        with tempfile.TemporaryDirectory(prefix="mtmg-ckpt-") as d:
            yield d

    def report(self, metrics: dict[str, Any], checkpoint: str | None = None) -> None:
        """Metrics (every rank calls this) and, from rank 0, a checkpoint directory."""
        if self.reporter is not None:
            self.reporter(metrics, checkpoint)
            return
        if not self.ray:
            return
        import ray.train

        ck = ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None
        ray.train.report(metrics, checkpoint=ck)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move to the device; DDP-wrap when running with more than one worker."""
        module = module.to(self.device)
        if self.world > 1 and dist.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world == 1 or not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1 or not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


# Ray Train V2's controller takes each worker's report when it polls the workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and a worker's next report waits until the
# previous one was taken: every epoch shorter than the interval would last the whole interval
# (measured: 16 short epochs took 1.9 s each under Ray Train, 0.5 s in a plain process).
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
POLL_INTERVAL_S = 0.2
# On the embedded Ray (`mtmg.cluster.init_ray`, no dashboard modules): no metrics export
# (nothing shows them) and no preemption watcher (one node, nothing to preempt): each is a
# process or thread that takes CPU from the training on a small machine.
LEAN_ENV = {"RAY_TRAIN_METRICS_ENABLED": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@contextlib.contextmanager
def _train_env(values: dict[str, str]) -> Iterator[None]:
    """Set Ray Train's environment knobs for one `fit` (the driver's values travel to the
    controller and workers); a value the user set is kept."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _own_sigint_handler() -> Iterator[None]:
    """Put back the driver's Ctrl-C handler after `fit`.

    Ray Train installs one that aborts the run, and leaves it installed: it holds the finished
    controller actor, so the controller and its DatasetManager lived on after every job (two
    processes, ~1 % of a CPU each) and Ctrl-C later went to a finished run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Ray Train installs none outside the main thread (a Tune trial)
        return
    saved = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)
        gc.collect()  # the handler's closure is in a cycle: free the controller's handle now


def _trainer_class(lean: bool) -> type:
    """TorchTrainer, without the placement-group cleaner when `lean` (the embedded Ray).

    The cleaner is a detached actor that asks the state API (a dashboard module) every second
    whether the controller still lives, to free its placement group if it died. The embedded
    Ray has no state API, so every ask would fail with a warning, forever; and there is nothing
    to clean: the placement group ends with the driver's Ray.
    """
    from ray.train.torch import TorchTrainer

    if not lean or not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )
    except ImportError:  # another Ray: leave its defaults
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]

    return LeanTorchTrainer


def fit(
    train_fn: Callable[[dict], None],
    config: dict[str, Any],
    *,
    workers: int,
    use_gpu: bool,
    storage_path: str,
    name: str,
    max_failures: int = 1,
    cpus_per_worker: float = 1.0,
    on_start: Callable[[], None] | None = None,
) -> Any:
    """Run `train_fn(config)` on `workers` DDP workers; returns Ray Train's Result.

    Re-running with the same `storage_path` and `name` resumes from the run's latest checkpoint
    (Train V2 resumes by identity); a worker failure restarts from it up to `max_failures` times.
    On the embedded Ray the job runs lean: see `LEAN_ENV`, `_trainer_class`. `on_start()` is
    called when the job is about to start, once the driver has nothing left to do but wait
    (the alpha sweep starts its preparations there).
    """
    import ray.train

    from mtmg.cluster import is_embedded

    lean = is_embedded()
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)  # workers change their cwd
    trainer = _trainer_class(lean)(
        train_fn,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    env = {POLL_INTERVAL_ENV: str(POLL_INTERVAL_S), **(LEAN_ENV if lean else {})}
    with _train_env(env), _own_sigint_handler():
        if on_start is not None:
            on_start()
        return trainer.fit()


def gpu_available() -> bool:
    """Whether the connected Ray has GPUs to give to workers."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
