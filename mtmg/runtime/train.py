"""Ray Train jobs: run a stage's per-worker loop as a TorchTrainer (DDP) job.

Stages (`mtmg.stages`) stay plain PyTorch: a worker is `worker(conf, ctx)` with a
`mtmg.engine.context.WorkerContext`. Here `fit` runs it under Ray Train: every Ray object
reference in `conf` is fetched, torch gets the CPUs the worker reserved, and the context
reports and checkpoints through Ray Train. The same worker runs in a Tune trial or a test with
a context of its own.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mtmg import logs
from mtmg.engine.context import WorkerContext
from mtmg.errors import USER_ERRORS
from mtmg.runtime import ray_private

Worker = Callable[[dict[str, Any], WorkerContext], Any]


def ray_context() -> WorkerContext:
    """The context of a Ray Train worker: its rank, device, reports and checkpoints."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        ck = ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None
        ray.train.report(metrics, checkpoint=ck)

    def resume() -> str | None:
        ckpt = ray.train.get_checkpoint()
        return ckpt.to_directory() if ckpt is not None else None

    return WorkerContext(
        ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), report, resume
    )


def _entry(worker: Worker, cpus: float, verbosity: int, config: dict[str, Any]) -> None:
    """What Ray Train runs on every worker: `worker(conf, ctx)` with `conf`'s object
    references fetched, torch using the CPUs the worker reserved (Ray limits it to 1) and the
    command's logging (`logs.setup`)."""
    import ray

    logs.setup(verbosity)
    torch.set_num_threads(max(1, int(cpus)))
    conf = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in config.items()}
    worker(conf, ray_context())


# Ray Train V2's controller takes each worker's report when it polls the workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and a worker's next report waits until the
# previous one was taken: every epoch shorter than the interval would last the whole interval.
POLL_INTERVAL_ENV = ray_private.TRAIN_POLL_INTERVAL_ENV
POLL_INTERVAL_S = 0.2
# On the embedded Ray (`mtmg.runtime.cluster.init_ray`, no dashboard modules): no metrics export
# (nothing shows them) and no preemption watcher (one node, nothing to preempt): each is a
# process or thread that takes CPU from the training on a small machine.
LEAN_ENV = {ray_private.TRAIN_METRICS_ENV: "0", ray_private.TRAIN_PREEMPTION_WATCHER_ENV: "0"}


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
    controller actor, so the controller and its DatasetManager lived on after every job and
    Ctrl-C later went to a finished run.
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

    return ray_private.trainer_without_pg_cleaner(TorchTrainer) if lean else TorchTrainer


def _node_local_torch_config() -> Any:
    """Ray Train's TorchConfig with a process group that listens on the node's address only.

    For the embedded Ray (one node, 127.0.0.1): by default torch's rendezvous store listens on
    every interface (its server binds "::" whatever the host) and gloo on the hostname's
    address, neither with authentication. Here rank 0 binds the store's socket to the node's
    address and hands it to `TCPStore(master_listen_fd=...)`, and gloo and NCCL use the
    interface holding that address.
    """
    return ray_private.torch_config(_node_local_group)


def _node_local_group(config: Any, n: int, run: Callable[..., Any]) -> None:
    """What the Train controller runs to form `_node_local_torch_config`'s process group of `n`
    workers (`run(rank, fn, **kwargs)` calls `fn` on worker `rank`)."""
    import ray

    addr, port = ray.get(run(0, _bind_store_socket))
    args = {
        "backend": config.backend,
        "world": n,
        "addr": addr,
        "port": port,
        "timeout_s": config.timeout_s,
    }
    ray.get([run(i, _join_group, world_rank=i, **args) for i in range(n)])


_store_socket: list[socket.socket] = []  # rank 0's, between `_bind_store_socket` and `_join_group`


def _bind_store_socket() -> tuple[str, int]:
    """On rank 0: a socket bound to this node's address for the rendezvous store."""
    import ray

    addr = ray.util.get_node_ip_address()
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((addr, 0))
    _store_socket[:] = [sock]
    return addr, sock.getsockname()[1]


def _join_group(
    backend: str, world_rank: int, world: int, addr: str, port: int, timeout_s: int
) -> None:
    """Join the default process group through rank 0's store at `addr:port` (the worker side of
    `_node_local_torch_config`); sets the environment torchrun would."""
    import ray.train

    iface = _interface_of(addr)
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if iface and var not in os.environ:
            os.environ[var] = iface
    ctx = ray.train.get_context()
    os.environ.update(
        RANK=str(world_rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(ctx.get_local_rank()),
        LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
        NODE_RANK=str(ctx.get_node_rank()),
        MASTER_ADDR=addr,
        MASTER_PORT=str(port),
    )
    timeout = timedelta(seconds=timeout_s)
    main = world_rank == 0
    fd = _store_socket.pop().detach() if main else None  # the store's server owns it now
    store = dist.TCPStore(addr, port, world, main, timeout, master_listen_fd=fd)
    dist.init_process_group(
        backend, store=store, rank=world_rank, world_size=world, timeout=timeout
    )


def _interface_of(addr: str) -> str | None:
    """Name of the network interface holding `addr` (e.g. "lo" for 127.0.0.1)."""
    import psutil  # Ray's own copy: `import ray` puts it on the path

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == addr for a in addrs):
            return name
    return None


def fit(
    worker: Worker,
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
    """Run `worker(config, ctx)` on `workers` DDP workers (see `_entry`); returns Ray Train's
    Result.

    Re-running with the same `storage_path` and `name` resumes from the run's latest checkpoint
    (Train V2 resumes by identity); a worker failure restarts from it up to `max_failures` times.
    On the embedded Ray the job runs lean (see `LEAN_ENV`, `_trainer_class`) and its process
    group listens on 127.0.0.1 only (`_node_local_torch_config`). `on_start()` is called when
    the job is about to start, once the driver has nothing left to do but wait (the alpha sweep
    starts its preparations there).
    """
    import ray.train

    from mtmg.runtime.cluster import is_embedded

    lean = is_embedded()
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)  # workers change their cwd
    trainer = _trainer_class(lean)(
        functools.partial(_entry, worker, cpus_per_worker, logs.verbosity()),
        train_loop_config=config,
        torch_config=_node_local_torch_config() if lean else None,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(
                log_level="WARNING" if logs.verbosity() < 0 else "INFO"  # -q: Ray Train's too
            ),
        ),
    )
    env = {POLL_INTERVAL_ENV: str(POLL_INTERVAL_S), **(LEAN_ENV if lean else {})}
    with _train_env(env), _own_sigint_handler(), _job_errors():
        if on_start is not None:
            on_start()
        return trainer.fit()


@contextlib.contextmanager
def _job_errors() -> Iterator[None]:
    """A job's end as the driver should see it: Ctrl-C as KeyboardInterrupt (Ray Train aborts the
    run and its wait ends in SystemExit), and a worker's input error (a ValueError: bad sample,
    non-finite loss) as that error, raised here, instead of Ray Train's wrapper."""
    from ray.train import WorkerGroupError

    from mtmg.runtime.cluster import interruptible

    try:
        with interruptible("training"):
            yield
    except WorkerGroupError as e:
        failures = list(e.worker_failures.values())
        cause = next((f for f in failures if isinstance(f, USER_ERRORS)), None)
        if cause is None:
            raise
        raise _plain(cause) from e


def _plain(err: Exception) -> Exception:
    """`err` without Ray's task-error wrapping, so its message is the worker's own line."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, USER_ERRORS) else err


def gpu_available() -> bool:
    """Whether the connected Ray has GPUs to give to workers."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def run_job(
    worker: Worker,
    conf: dict[str, Any],
    job: Any,
    *,
    shared: dict[str, Any],
    out: str | os.PathLike,
    name: str,
    weights: str,
    on_start: Callable[[], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A stage's whole job: Ray started (or joined, `job.cluster`), the `shared` values put in
    the object store once (every worker fetches them), `worker` fitted on `job.workers` workers
    with checkpoints under OUT/ray/<name>, and the last checkpoint's `<weights>.safetensors`
    and state returned. `job` is the stage's config (cluster, gpu, workers, cpus_per_worker,
    max_failures)."""
    import json
    from pathlib import Path

    import ray
    from safetensors.torch import load_file

    from mtmg.runtime.cluster import init_ray

    init_ray(job.cluster)
    use_gpu = gpu_available() if job.gpu is None else job.gpu
    refs = {k: ray.put(v) for k, v in shared.items()}
    result = fit(
        worker,
        {**conf, **refs},
        workers=job.workers,
        use_gpu=use_gpu,
        storage_path=str(Path(out) / "ray"),
        name=name,
        max_failures=job.max_failures,
        cpus_per_worker=job.cpus_per_worker,
        on_start=on_start,
    )
    with result.checkpoint.as_directory() as d:
        tensors = load_file(os.path.join(d, f"{weights}.safetensors"))
        state = json.loads(Path(d, "state.json").read_text())
    return tensors, state
