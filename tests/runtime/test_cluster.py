"""Running against an existing Ray cluster (`--cluster`), and the storage-visibility check."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtmg import synth
from mtmg.runtime.cluster import ClusterError, check_paths_visible

from conftest import REPO


def test_cluster_flag_without_a_cluster_fails_clearly(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ADDRESS"] = "127.0.0.1:1"  # nothing listens there
    synth.make_bigearthnet(tmp_path / "raw", n_patches=3, s1=False)
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_prep" / "shard.py"),
            "bigearthnet",
            "--root",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "o"),
            "--cluster",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "no Ray cluster found at 127.0.0.1:1" in r.stderr


def test_unshared_paths_are_named(ray_session, tmp_path):
    check_paths_visible([str(tmp_path)], str(tmp_path / "out"))  # visible: no error
    with pytest.raises(ClusterError, match=r"cannot see \['/nonexistent/raw'\].*object-store URI"):
        check_paths_visible(["/nonexistent/raw"], str(tmp_path / "out"))


def test_patch_on_a_running_cluster(local_cluster, tmp_path):
    synth.make_bigearthnet(tmp_path / "raw", n_patches=40, s1=False, seed=4)
    shards = tmp_path / "shards"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_prep" / "shard.py"),
            "bigearthnet",
            "--root",
            str(tmp_path / "raw"),
            "--out",
            str(shards),
            "--cluster",
            "--no-progress",
        ],
        env=local_cluster,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "patch"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtmg.patch",
            "--data",
            str(shards),
            "--out",
            str(out),
            "--model",
            "mtmg-tiny-vit",
            "--pretrained",
            "none",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--alphas",
            "0",
            "1",
            "--cluster",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        env=local_cluster,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alpha"] in (0.0, 1.0) and (out / "patched.safetensors").exists()


def submit_job(env: dict, module_args: list[str]) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- python -m ...`, waiting for the job to end.

    A freshly started head may answer "No available agent to submit job" for a while (its job
    agent starts after the GCS; slower on a busy machine): retried a bounded number of times.
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "job", "submit", "--working-dir", ".", "--", sys.executable, "-m", *module_args]
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
        [
            sys.executable,
            str(REPO / "data_prep" / "shard.py"),
            "bigearthnet",
            "--root",
            str(tmp_path / "raw"),
            "--out",
            str(shards),
            "--cluster",
            "--no-progress",
        ],
        env=local_cluster,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = tmp_path / "job-out"
    r = submit_job(
        local_cluster,
        [
            "mtmg.patch",
            "--data",
            str(shards),
            "--out",
            str(out),
            "--model",
            "mtmg-tiny-vit",
            "--pretrained",
            "none",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--alphas",
            "0",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    assert json.loads((out / "summary.json").read_text())["alpha"] in (0.0, 1.0)


def readme_block(heading: str) -> list[list[str]]:
    """The command lines of the first ```bash block under `heading` in the README, as argv
    lists (continuation lines joined, comments dropped; leading VAR=value kept as a word)."""
    import shlex

    text = (REPO / "README.md").read_text()
    block = text.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [
        shlex.split(line, comments=True)
        for line in block.replace("\\\n", " ").splitlines()
        if shlex.split(line, comments=True)
    ]


def test_readme_real_data_commands(local_cluster, tmp_path):
    """The README's "With real data" block, command by command as it stands there, on generated
    trees in the real layouts: only the paths, the model (tiny CLIP), ImageNet (coloured shapes
    in class folders), the SSL4EO file (generated, for a small student), `--workers 8` (1) and
    `--gpus-per-trial` (no GPU here) change, and each run is made short with flags appended."""
    import timm
    import torch

    raw = tmp_path / "raw"
    synth.make_bigearthnet(raw / "ben", n_patches=60, s1=True, seed=11)
    synth.make_eurosat_ms(raw / "ems", n_per_class=4, seed=12)
    synth.make_imagefolder(raw / "img", n_per_class=5, size=32, seed=13)
    student = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
    ssl4eo = timm.create_model(
        "vit_small_patch16_224", in_chans=13, num_classes=0, **{**student, "img_size": 64}
    )
    moco = {f"module.base_encoder.{k}": v for k, v in ssl4eo.state_dict().items()}
    torch.save({"state_dict": moco}, tmp_path / "moco.pth")
    words = {
        "BigEarthNet-v1.0": str(raw / "ben"),
        "BigEarthNet-S1-v1.0": str(raw / "ben" / "BigEarthNet-S1-v1.0"),
        "EuroSAT_MS": str(raw / "ems"),
        "imagenet/val": str(raw / "img"),
        # a 1000-class ImageNet head takes minutes on CPU: shape folders stand in (test_shard
        # covers the imagenet kind)
        "imagenet": "imagefolder",
        "B13_vits16_moco.pth": str(tmp_path / "moco.pth"),
        "ViT-B-32": "mtmg-tiny-vit",
        "openai": "none",
        "python": sys.executable,
        "ray": str(Path(sys.executable).parent / "ray"),
        "report": str(tmp_path / "report"),
    }
    short = {
        "shard.py": ["--no-progress"],
        "alpha_sweep.py": [
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--alphas",
            "0",
            "0.5",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        "mtmg.align": [
            "--student-args",
            json.dumps(student),
            "--student-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--warmup-steps",
            "2",
            "--eval-every",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    }
    commands = readme_block("## With real data")
    assert len(commands) == 6, commands
    for argv in commands:
        env = dict(local_cluster)
        while "=" in argv[0]:  # VAR=value before the command: the local cluster's value
            var = argv.pop(0).split("=", 1)[0]
            assert var in env, var
        out = []
        for i, w in enumerate(argv):
            if w == "--gpus-per-trial" or (i and argv[i - 1] == "--gpus-per-trial"):
                continue
            if w == "8" and argv[i - 1] == "--workers":
                w = "1"
            elif w.startswith(("shards/", "runs/")):
                w = str(tmp_path / w)
            out.append(words.get(w, w))
        out += next((v for k, v in short.items() if any(a.endswith(k) for a in out)), [])
        for _ in range(12):  # a fresh head's job agent may not be up yet (see submit_job)
            r = subprocess.run(out, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
            if "No available agent to submit job" not in r.stderr:
                break
            time.sleep(5)
        assert r.returncode == 0, (" ".join(out), (r.stdout + r.stderr)[-3000:])
    m = json.loads((tmp_path / "shards" / "ben" / "manifest.json").read_text())
    assert m["config"]["cluster"] is True and m["summary"]["written"] == 60 and m["s1_bands"]
    sweep = json.loads((tmp_path / "runs" / "alpha" / "summary.json").read_text())
    assert sweep["alpha"] in (0.0, 0.5, 1.0)
    run = tmp_path / "runs" / "align"
    aligned = json.loads((run / "summary.json").read_text())
    assert aligned["steps"] > 0 and (run / "student.safetensors").exists()
    assert {r["dataset"] for r in aligned["test"]} >= {"bigearthnet", "eurosat-ms"}
    assert {r["metric"] for r in aligned["test"]} >= {"mAP", "cosine", "R@1 ms->rgb"}
    table = json.loads((tmp_path / "report" / "summary.json").read_text())["rows"]
    assert {r["model"].split(" (")[0] for r in table} >= {"zero-shot CLIP", "aligned MS encoder"}
