"""The private Ray APIs mtmg uses (`mtmg.runtime.ray_private`): a canary that fails, naming the
name, when a Ray upgrade moves one; what they do on the session's embedded Ray; and that no
other module of mtmg uses one."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

from mtmg.runtime import cluster, ray_private

from conftest import REPO

PKG = REPO / "mtmg"
PRIVATE_MARKS = ("ray._private", "_internal", "class_cache", "_system_config", "backend_cls")
# every dotted Ray name the module holds (the names it resolves and their modules)
NAMES = sorted(
    {
        v
        for k, v in vars(ray_private).items()
        if k.startswith("_") and isinstance(v, str) and v.startswith("ray.")
    }
    | set(ray_private.PRIVATE)
)


@pytest.mark.parametrize("name", NAMES)
def test_every_private_ray_name_resolves(name):
    try:
        value = ray_private.resolve(name)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"this Ray has no {name} ({e}): update mtmg/runtime/ray_private.py")
    expected = ray_private.PRIVATE.get(name)
    assert expected is None or value == expected, f"{name} is {value!r}, not {expected!r}"


def test_ray_config_entries_exist():
    """ray.init's `_system_config` and the RayConfig entries mtmg sets (Ray rejects an unknown
    entry only when it starts; a `RAY_<key>` variable it ignores silently)."""
    import ray

    assert 'kwargs.pop("_system_config"' in inspect.getsource(ray.init)
    raylet = Path(ray.__file__).parent / "_raylet.so"
    binary = raylet.read_bytes()
    missing = [k for k in ray_private.SYSTEM_CONFIG_KEYS if f"RAY_{k}".encode() not in binary]
    assert not missing, f"RayConfig has no {missing}: update mtmg/runtime/ray_private.py"
    assert ray_private.PRELOAD_MODULES_ENV == "RAY_preload_python_modules"
    with pytest.raises(ValueError, match="not a RayConfig entry"):
        ray_private.system_config(no_such_entry=1)


def test_torch_config_keeps_rays_backend():
    from ray.train.backend import Backend
    from ray.train.torch import TorchConfig

    backend = ray_private.resolve("ray.train.torch.config._TorchBackend")
    assert TorchConfig().backend_cls is backend and issubclass(backend, Backend)
    config = ray_private.torch_config(lambda config, n, run: None)
    assert isinstance(config, TorchConfig) and issubclass(config.backend_cls, backend)
    assert config.backend == TorchConfig().backend


def test_lean_trainer_drops_only_the_placement_group_cleaner():
    from ray.train.torch import TorchTrainer

    lean = ray_private.trainer_without_pg_cleaner(TorchTrainer)
    assert issubclass(lean, TorchTrainer) and lean is not TorchTrainer
    assert "_create_default_callbacks" in vars(lean)


def test_tune_trial_env_is_restored():
    defaults = ray_private.resolve("ray.tune.execution.class_cache.DEFAULT_ENV_VARS")
    before = dict(defaults)
    assert "PL_DISABLE_FORK" in before
    with ray_private.tune_trial_env(drop=("PL_DISABLE_FORK",), add={"X_MTMG": "1"}):
        assert "PL_DISABLE_FORK" not in defaults and defaults["X_MTMG"] == "1"
    assert defaults == before


def test_embedded_ray(ray_session):
    """The session's embedded Ray: marked embedded (driver and workers), on 127.0.0.1, its
    workers at the driver's priority (`worker_niceness`)."""
    import ray

    @ray.remote(num_cpus=0)
    def probe() -> tuple[bool, str, int]:
        return cluster.is_embedded(), ray.util.get_node_ip_address(), os.nice(0)

    assert cluster.is_embedded()
    assert ray.get(probe.remote()) == (True, "127.0.0.1", os.nice(0))
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.cluster_resources()[cluster.EMBEDDED] == 1
    assert ray.cluster_resources()[cluster.TRIAL_SLOT] == ray.cluster_resources()["CPU"]


def test_cpu_count():
    cpus = len(os.sched_getaffinity(0))
    quota = cluster._cgroup_cpus()
    assert cluster._cpu_count() == (min(cpus, quota) if quota else cpus)
    assert cluster._quota_cpus("max 100000\n") is None
    assert cluster._quota_cpus("-1\n 100000\n") is None  # cgroup v1: no quota
    assert cluster._quota_cpus("200000 100000") == 2
    assert cluster._quota_cpus("150000 100000") == 1  # rounded down, as Ray
    assert cluster._quota_cpus("50000 100000") == 1


def test_cgroup_files(tmp_path):
    assert cluster._cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cluster._cgroup_cpus(tmp_path) == 3
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cluster._cgroup_cpus(tmp_path) == 1  # cgroup v1 first, as Ray


def test_no_private_ray_api_outside_ray_private():
    own = PKG / "runtime" / "ray_private.py"
    bad = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in sorted(PKG.rglob("*.py"))
        if p != own
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if any(m in line for m in PRIVATE_MARKS)
    ]
    assert not bad, "private Ray API outside mtmg/runtime/ray_private.py:\n" + "\n".join(bad)


def test_ray_private_names_what_it_uses():
    """Every dotted Ray name in ray_private's source is one the canary resolves."""
    source = (PKG / "runtime" / "ray_private.py").read_text()
    literals = set(re.findall(r'"(ray\.[\w.]+)"', source))
    assert literals <= set(NAMES), literals - set(NAMES)
