"""Running against an existing Ray cluster (`--cluster`), and the storage-visibility check."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtmg import synth
from mtmg.cluster import ClusterError, check_paths_visible

from conftest import REPO


def test_shard_on_a_running_cluster(local_cluster, tmp_path):
    root = tmp_path / "raw"
    synth.make_bigearthnet(root, n_patches=10, s1=True, seed=2)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "shard.py"), "bigearthnet", "--root", str(root),
         "--s1", str(root), "--out", str(out), "--cluster", "--shard-size", "3", "--no-progress"],
        env=local_cluster, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["cluster"] is True and m["summary"]["written"] == 10
    assert sum(len(v["shards"]) for v in m["splits"].values()) >= 4


def test_cluster_flag_without_a_cluster_fails_clearly(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ADDRESS"] = "127.0.0.1:1"  # nothing listens there
    synth.make_bigearthnet(tmp_path / "raw", n_patches=3, s1=False)
    r = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "shard.py"), "bigearthnet", "--root",
         str(tmp_path / "raw"), "--out", str(tmp_path / "o"), "--cluster"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "no Ray cluster found at 127.0.0.1:1" in r.stderr


def test_unshared_paths_are_named(ray_session, tmp_path):
    check_paths_visible([str(tmp_path)], str(tmp_path / "out"))  # visible: no error
    with pytest.raises(ClusterError, match=r"cannot see \['/nonexistent/raw'\].*object-store URI"):
        check_paths_visible(["/nonexistent/raw"], str(tmp_path / "out"))


def test_patch_on_a_running_cluster(local_cluster, tmp_path):
    synth.make_bigearthnet(tmp_path / "raw", n_patches=40, s1=False, seed=4)
    shards = tmp_path / "shards"
    r = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "shard.py"), "bigearthnet", "--root",
         str(tmp_path / "raw"), "--out", str(shards), "--cluster", "--no-progress"],
        env=local_cluster, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "patch"
    r = subprocess.run(
        [sys.executable, "-m", "mtmg.patch", "--data", str(shards), "--out", str(out),
         "--model", "mtmg-tiny-vit", "--pretrained", "none", "--epochs", "1", "--batch-size",
         "8", "--alphas", "0", "1", "--cluster", "--cache-dir", str(tmp_path / "cache")],
        env=local_cluster, capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alpha"] in (0.0, 1.0) and (out / "patched.safetensors").exists()


def submit_job(env: dict, module_args: list[str]) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- python -m ...`, waiting for the job to end.

    A freshly started head may answer "No available agent to submit job" for a while (its job
    agent starts after the GCS; slower on a busy machine): retried a bounded number of times.
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "job", "submit", "--working-dir", ".", "--", sys.executable, "-m",
           *module_args]  # fmt: skip
    for _ in range(12):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        if "No available agent to submit job" not in r.stderr:
            return r
        time.sleep(5)
    return r


def test_patch_as_a_ray_job(local_cluster, tmp_path):
    """`ray job submit --working-dir . -- python -m mtmg.patch ...` against the local cluster."""
    synth.make_bigearthnet(tmp_path / "raw", n_patches=30, s1=False, seed=6)
    shards = tmp_path / "shards"
    subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "shard.py"), "bigearthnet", "--root",
         str(tmp_path / "raw"), "--out", str(shards), "--cluster", "--no-progress"],
        env=local_cluster, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    out = tmp_path / "job-out"
    r = submit_job(local_cluster, [
        "mtmg.patch", "--data", str(shards), "--out", str(out), "--model", "mtmg-tiny-vit",
        "--pretrained", "none", "--epochs", "1", "--batch-size", "8", "--alphas", "0", "1",
        "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    assert json.loads((out / "summary.json").read_text())["alpha"] in (0.0, 1.0)


def test_align_as_a_ray_job(local_cluster, tmp_path):
    """`ray job submit --working-dir . -- python -m mtmg.align ...`: waits for SUCCEEDED."""
    synth.make_bigearthnet(tmp_path / "raw", n_patches=30, s1=False, seed=8)
    shards = tmp_path / "shards"
    subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "shard.py"), "bigearthnet", "--root",
         str(tmp_path / "raw"), "--out", str(shards), "--cluster", "--no-progress"],
        env=local_cluster, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    out = tmp_path / "align-out"
    student = '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}'
    r = submit_job(local_cluster, [
        "mtmg.align", "--data", str(shards), "--out", str(out), "--model", "mtmg-tiny-vit",
        "--pretrained", "none", "--student-args", student, "--student-size", "32",
        "--epochs", "1", "--batch-size", "8", "--warmup-steps", "2", "--eval-every", "0",
        "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] > 0 and (out / "student.safetensors").exists()
    assert {r["metric"] for r in summary["test"]} >= {"mAP", "cosine", "R@1 ms->rgb"}
