"""Every private Ray API mtmg uses, in one place, each with the public API it lacks.

Written against Ray 2.60 (pyproject pins the minor version). `PRIVATE` lists every private name
used here; tests/runtime/test_ray_private.py resolves each, so a Ray upgrade that moves or renames
one fails there, naming it. Imports only the standard library: Ray is resolved when used.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

_CONSTANTS = "ray._private.ray_constants"
_ENABLE_CLUSTER = f"{_CONSTANTS}.ENABLE_RAY_CLUSTER"
_SETUP_HOOK_ENV = f"{_CONSTANTS}.WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
_TUNE_ENV = "ray.tune.execution.class_cache.DEFAULT_ENV_VARS"
_TRAIN_CONSTANTS = "ray.train.v2._internal.constants"
_PG_CLEANER = (
    "ray.train.v2._internal.callbacks.placement_group_callback.PlacementGroupCleanerCallback"
)
_DP_TRAINER = "ray.train.v2.api.data_parallel_trainer.DataParallelTrainer"
_TORCH_BACKEND = "ray.train.torch.config._TorchBackend"
_EXECUTION_GROUP = "ray.train.v2._internal.execution.worker_group.execution_group.ExecutionGroup"

# Ray Train V2's environment knobs, named only in its internal constants (no public setting).
TRAIN_POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_METRICS_ENV = "RAY_TRAIN_METRICS_ENABLED"
TRAIN_PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# RayConfig entries mtmg sets: through ray.init's private `_system_config`, or as `RAY_<key>`
# environment variables; ray.init takes none of them as an argument.
SYSTEM_CONFIG_KEYS = ("worker_niceness", "enable_metrics_collection", "preload_python_modules")
PRELOAD_MODULES_ENV = "RAY_preload_python_modules"  # no public worker-preload option
# the logger of Ray's "token authentication is enabled" notice (no public way to silence it)
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"

# each private name -> the value mtmg relies on (None: that it exists)
PRIVATE: dict[str, Any] = {
    _ENABLE_CLUSTER: None,
    _SETUP_HOOK_ENV: None,
    _TUNE_ENV: None,
    _PG_CLEANER: None,
    f"{_DP_TRAINER}._create_default_callbacks": None,
    _TORCH_BACKEND: None,
    TOKEN_AUTH_LOGGER: None,
    f"{_EXECUTION_GROUP}.execute_single_async": None,
    f"{_EXECUTION_GROUP}.__len__": None,
    f"{_TRAIN_CONSTANTS}.HEALTH_CHECK_INTERVAL_S_ENV_VAR": TRAIN_POLL_INTERVAL_ENV,
    f"{_TRAIN_CONSTANTS}.METRICS_ENABLED_ENV_VAR": TRAIN_METRICS_ENV,
    f"{_TRAIN_CONSTANTS}.ENABLE_PREEMPTION_WATCHER_ENV_VAR": TRAIN_PREEMPTION_WATCHER_ENV,
}


def resolve(path: str) -> Any:
    """The object at a dotted `path` (module, then attributes)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


def advertise_loopback() -> None:
    """Make a Ray started next by this process advertise 127.0.0.1 (read at `ray.init`).

    Missing: a public ray.init option for a local Ray's node address (`_node_ip_address` is
    private too); this is Ray's own switch for single-machine Ray on macOS and Windows.
    """
    module, name = _ENABLE_CLUSTER.rsplit(".", 1)
    setattr(resolve(module), name, False)


def system_config(**values: Any) -> dict[str, Any]:
    """`ray.init` keyword arguments setting RayConfig entries (missing: public ray.init options
    for the workers' priority and metrics collection)."""
    unknown = set(values) - set(SYSTEM_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"not a RayConfig entry mtmg checks: {sorted(unknown)}")
    return {"_system_config": values}


def setup_hook_env(hook: str) -> dict[str, str]:
    """Environment variables that make a worker run `hook` ("module.function") as it starts.

    Missing: Ray Tune takes no runtime env for its trial actors, only environment variables,
    so the public `runtime_env={"worker_process_setup_hook": ...}` cannot reach them.
    """
    return {resolve(_SETUP_HOOK_ENV): hook}


@contextlib.contextmanager
def tune_trial_env(drop: Iterable[str] = (), add: dict[str, str] | None = None) -> Iterator[None]:
    """Ray Tune's trial actors get Tune's default environment variables less `drop`, plus `add`.

    Missing: a Tune option for its trial actors' runtime env (Tune sets it from a module-level
    dict). Leaves another Ray's Tune as it is.
    """
    try:
        defaults = resolve(_TUNE_ENV)
    except (ImportError, AttributeError):
        yield
        return
    saved = dict(defaults)
    for key in drop:
        defaults.pop(key, None)
    defaults.update(add or {})
    try:
        yield
    finally:
        defaults.clear()
        defaults.update(saved)


def trainer_without_pg_cleaner(trainer: type) -> type:
    """`trainer` (a Ray Train V2 trainer class) without its placement-group cleaner callback.

    Missing: RunConfig's callbacks add to Ray Train's default ones but cannot remove one.
    Returns `trainer` itself on another Ray.
    """
    try:
        cleaner = resolve(_PG_CLEANER)
    except (ImportError, AttributeError):
        return trainer
    if not hasattr(trainer, "_create_default_callbacks"):
        return trainer

    class LeanTrainer(trainer):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, cleaner)]

    return LeanTrainer


Setup = Callable[[Any, int, Callable[..., Any]], None]


def torch_config(setup: Setup) -> Any:
    """A Ray Train TorchConfig whose backend runs `setup(config, n, run)` to form the process
    group, instead of Ray's; Ray's shutdown (destroying the group) is kept. `run(rank, fn,
    **kwargs)` calls `fn` on worker `rank` and returns an ObjectRef.

    Missing: TorchConfig takes neither a store nor an address for its store to listen on; the
    public Backend base class would drop Ray's torch shutdown, and the worker group a backend
    gets is Train V2's internal ExecutionGroup.
    """
    from ray.train.torch import TorchConfig

    class Backend(resolve(_TORCH_BACKEND)):  # type: ignore[misc]
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            setup(backend_config, len(worker_group), worker_group.execute_single_async)

    @dataclass
    class SetupTorchConfig(TorchConfig):
        @property
        def backend_cls(self) -> type:
            return Backend

    return SetupTorchConfig()
