"""Shared fixtures: one embedded Ray for the whole session, generated raw trees, helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

DATA = Path(__file__).parent / "data"
REAL = DATA / "real"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray (2 CPUs) shared by every test that needs Ray in-process."""
    import ray

    from mtmg.cluster import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def shard(ray_session, tmp_path):
    """Run the sharding job in-process: shard(dataset, root, **options) -> manifest."""
    from mtmg.prep import ShardConfig
    from mtmg.prep import shard as run

    def _shard(dataset: str, root, out=None, **kw):
        out = out or tmp_path / f"out-{dataset}"
        cfg = ShardConfig(dataset=dataset, root=str(root), out=str(out), progress=False, **kw)
        return run(cfg)

    return _shard
