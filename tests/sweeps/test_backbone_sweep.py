"""The backbone sweep end to end: real Ray Tune, tiny CLIPs and students, generated shards, CPU."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mtmg import config, prep, synth
from mtmg.models import clip, student, weights
from mtmg.stages.align import driver as align
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import trials
from mtmg.sweeps.backbone import driver as backbone_sweep

from conftest import REPO, assert_not_rerun, finished_trials, kill_midway

SCRIPT = str(REPO / "sweeps" / "backbone_sweep.py")
STUDENT = '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}'


@pytest.fixture(scope="module")
def sets(tmp_path_factory, ray_session):
    """BigEarthNet, EuroSAT-MS and image-folder shards, a tiny CLIP weight file and a tiny
    student trunk checkpoint (the SSL4EO init stand-in)."""
    root = tmp_path_factory.mktemp("backbonesweep")
    synth.make_bigearthnet(root / "ben", n_patches=64, s1=False, seed=61)
    synth.make_eurosat_ms(root / "ems", n_per_class=5, size=32, seed=62)
    synth.make_imagefolder(root / "img", n_per_class=8, size=32)
    for kind, name in (("bigearthnet", "ben"), ("eurosat-ms", "ems"), ("imagefolder", "img")):
        prep.shard(
            prep.ShardConfig(
                kind, str(root / name), str(root / f"{name}-shards"), shard_size=32, progress=False
            )
        )
    torch.manual_seed(7)
    weights.save_checkpoint(clip.load_clip("mtmg-tiny-vit").model, root / "tiny.safetensors")
    torch.manual_seed(8)
    spec = student.StudentSpec("vit_small_patch16_224", "ms", 32, 64, json.loads(STUDENT))
    torch.save(student.build_student(spec).trunk.state_dict(), root / "ssl4eo.pth")
    return root


TRAINING = ["batch_size=16", "warmup_steps=3", "loader_workers=0", "eval_batch_size=64"]


def _patch_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--out",
        str(out),
        "--cache-dir",
        str(root / "cache"),
        "--patch",
        *TRAINING,
        "lr=3e-3",
        "alphas=0,0.5,1",
        *extra,
    ]


def _table(out: Path) -> list[dict]:
    return pq.read_table(out / "sweep.parquet").to_pylist()


def test_patch_stage_grid_with_a_failing_teacher(sets, tmp_path):
    out = tmp_path / "patch"
    tiny = f"mtmg-tiny-vit:{sets / 'tiny.safetensors'}"
    code = backbone_sweep.main(
        _patch_argv(
            sets,
            out,
            "--teachers",
            tiny,
            "mtmg-small-vit:none",
            "ViT-Q-99:none",
            "--data",
            str(sets / "ben-shards"),
            str(sets / "ems-shards"),
            "--supported",
            str(sets / "img-shards"),
            "--epochs",
            "4",
        )
    )
    assert code == 0
    rows = {(r["config/teacher"], r["config/dataset"]): r for r in _table(out)}
    teachers = ["mtmg-tiny-vit:tiny.safetensors", "mtmg-small-vit:none", "ViT-Q-99:none"]
    assert set(rows) == {(t, d) for t in teachers for d in ("bigearthnet", "eurosat-ms")}
    for d in ("bigearthnet", "eurosat-ms"):  # an unknown model fails its own trials only
        bad = rows[("ViT-Q-99:none", d)]
        assert bad["status"] == "ERROR" and "ViT-Q-99" in bad["error"]
    ok = [r for r in rows.values() if r["config/teacher"] != "ViT-Q-99:none"]
    for r in ok:
        assert r["status"] == "TERMINATED" and r["alpha"] in (0.0, 0.5, 1.0)
        # PAINT's rule: the objective is the mean of patching and supported validation metrics
        assert r["objective"] == pytest.approx((r["val_patching"] + r["val_supported"]) / 2)
        assert r["test_gain"] == pytest.approx(r["test_patched"] - r["test_zeroshot"])
        assert r["metric"] == ("mAP" if r["config/dataset"] == "bigearthnet" else "top1")
        assert 0 <= r["test_supported"] <= 100 and r["steps"] > 0
    # the teachers really differ: another backbone, other zero-shot numbers
    assert rows[(teachers[0], "bigearthnet")]["test_zeroshot"] != pytest.approx(
        rows[(teachers[1], "bigearthnet")]["test_zeroshot"]
    )
    summary = json.loads((out / "summary.json").read_text())
    best = max(ok, key=lambda r: r["objective"])
    assert summary["best_objective"] == best["objective"]
    assert (
        summary["matrix"][teachers[0]]["eurosat-ms"]
        == rows[(teachers[0], "eurosat-ms")]["test_patched"]
    )
    assert summary["matrix"]["ViT-Q-99:none"] == {"bigearthnet": None, "eurosat-ms": None}
    assert len(summary["failed"]) == 2
    for d in ("bigearthnet", "eurosat-ms"):  # the best teacher of each dataset
        top = max((r for r in ok if r["config/dataset"] == d), key=lambda r: r["objective"])
        assert summary["best_per_dataset"][d]["backbone"] == top["config/teacher"]
    for name in ("sweep.csv", "summary.md", "spec.yaml", "backbone_heatmap.png"):
        assert (out / name).exists(), name
    assert "ViT-Q-99" in (out / "summary.md").read_text()
    base = config.load_yaml(patch.PatchConfig, out / "patch_config.yaml")  # what trials start from
    assert (base["lr"], base["alphas"], base["epochs"]) == (3e-3, [0.0, 0.5, 1.0], 4)

    # best_config.yaml is an mtmg.patch config; the trial's numbers are a plain patch run's
    values = config.load_yaml(patch.PatchConfig, out / "best_config.yaml")
    cfg = patch.PatchConfig(**{**values, "out": str(tmp_path / "plain")})
    name, pre = backbone_sweep.parse_teacher(
        best["config/teacher"].replace("tiny.safetensors", str(sets / "tiny.safetensors"))
    )
    assert (cfg.model, cfg.pretrained) == (name, pre) and cfg.epochs == 4
    bundle, plain_sets = patch.resolve_inputs(cfg)
    conf = {
        "cfg": dataclasses.asdict(cfg),
        "zeroshot": bundle.model.state_dict(),
        "heads": patch.build_heads(cfg, bundle, plain_sets),
        "sets": plain_sets,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial
    try:
        res = patch.worker(conf)
    finally:
        torch.set_num_threads(threads)
    assert res["alpha"] == best["alpha"]
    test = trials.eval_values(res["rows"], res["alpha"])[cfg.data]
    assert test["patched"] == pytest.approx(best["test_patched"], abs=1e-3)
    assert test["zeroshot"] == pytest.approx(best["test_zeroshot"], abs=1e-6)


def _align_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--out",
        str(out),
        "--cache-dir",
        str(root / "cache"),
        "--stage",
        "align",
        "--model",
        "mtmg-tiny-vit",
        "--pretrained",
        str(root / "tiny.safetensors"),
        "--align",
        *TRAINING,
        f"student_args={STUDENT}",
        "student_size=32",
        *extra,
    ]


def test_align_stage_students_and_inits(sets, tmp_path):
    out = tmp_path / "align"
    code = backbone_sweep.main(
        _align_argv(
            sets,
            out,
            "--students",
            "vit_small_patch16_224",
            "vit_nope_patch16_224",
            "--student-inits",
            "none",
            str(sets / "ssl4eo.pth"),
            "--data",
            str(sets / "ben-shards"),
            "--epochs",
            "2",
        )
    )
    assert code == 0
    rows = {(r["config/student"], r["config/init"], r["config/dataset"]): r for r in _table(out)}
    assert len(rows) == 4
    good = [r for k, r in rows.items() if k[0] == "vit_small_patch16_224"]
    bad = [r for k, r in rows.items() if k[0] == "vit_nope_patch16_224"]
    assert all(r["status"] == "ERROR" and "vit_nope_patch16_224" in r["error"] for r in bad)
    for r in good:
        assert r["status"] == "TERMINATED" and r["done_training"] and r["epoch"] == 2
        assert r["objective"] == r["val_zeroshot"]
        assert 0 <= r["test_zeroshot"] <= 100 and 0 <= r["test_r1"] <= 100
    # the SSL4EO init changes what the student learns from
    a = rows[("vit_small_patch16_224", "none", "bigearthnet")]
    b = rows[("vit_small_patch16_224", "ssl4eo.pth", "bigearthnet")]
    assert (a["val_zeroshot"], a["val_cosine"]) != (b["val_zeroshot"], b["val_cosine"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "align" and summary["metric"] == "test_zeroshot"
    assert (
        summary["matrix"]["vit_small_patch16_224 + ssl4eo.pth"]["bigearthnet"] == b["test_zeroshot"]
    )
    best = max(good, key=lambda r: r["objective"])
    values = config.load_yaml(align.AlignConfig, out / "best_config.yaml")
    cfg = align.AlignConfig(**values)  # an mtmg.align config
    assert cfg.student == "vit_small_patch16_224" and cfg.student_args == STUDENT
    want = None if best["config/init"] == "none" else str(sets / "ssl4eo.pth")
    assert cfg.student_init == want and Path(cfg.data).name == "ben-shards"
    assert (out / "backbone_heatmap.png").exists()


def test_resume_after_the_driver_is_killed(sets, tmp_path):
    out = tmp_path / "resume"
    argv = [
        sys.executable,
        SCRIPT,
        *_patch_argv(
            sets,
            out,
            "--teachers",
            f"mtmg-tiny-vit:{sets / 'tiny.safetensors'}",
            "--data",
            str(sets / "ben-shards"),
            str(sets / "ems-shards"),
            "--epochs",
            "1",
            "--max-concurrent",
            "1",
        ),
    ]
    exp = out / "tune" / backbone_sweep.NAME
    done = kill_midway(argv, exp, trials=1, delay=6)
    assert not (out / "summary.json").exists()
    assert len(finished_trials(exp)) < 2  # killed mid-sweep
    # the resumed driver: this process, on the tests' Ray session (no second start-up)
    assert backbone_sweep.main([*argv[2:], "--resume"]) == 0
    table = _table(out)
    assert sorted(x["config/dataset"] for x in table) == ["bigearthnet", "eurosat-ms"]
    assert {x["status"] for x in table} == {"TERMINATED"}
    assert_not_rerun(table, done)  # not re-run: the results of the first driver


def test_optuna_on_a_running_cluster(local_cluster, sets, tmp_path):
    out = tmp_path / "cluster"
    r = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            *_patch_argv(
                sets,
                out,
                "--teachers",
                f"mtmg-tiny-vit:{sets / 'tiny.safetensors'}",
                "mtmg-small-vit:none",
                "--data",
                str(sets / "ben-shards"),
                str(sets / "ems-shards"),
                "--epochs",
                "1",
                "--search",
                "optuna",
                "--num-samples",
                "3",
                "--cluster",
                "--cpus-per-trial",
                "1",
            ),
        ],
        env=local_cluster,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _table(out)
    assert len(rows) == 3 and {x["status"] for x in rows} == {"TERMINATED"}
    for x in rows:  # sampled from the given axes
        assert x["config/teacher"] in ("mtmg-tiny-vit:tiny.safetensors", "mtmg-small-vit:none")
        assert x["config/dataset"] in ("bigearthnet", "eurosat-ms")
    assert "## Best configuration" in r.stdout


def test_bad_input_fails_before_ray(sets, tmp_path, capsys):
    out = tmp_path / "bad"
    assert backbone_sweep.main(["--out", str(out), "--teachers", "ViT-B-32"]) == 2
    assert "--data" in capsys.readouterr().err
    ben = str(sets / "ben-shards")
    assert backbone_sweep.main(["--out", str(out), "--data", ben]) == 2
    assert "--teachers" in capsys.readouterr().err
    assert backbone_sweep.main(["--out", str(out), "--data", ben, "--stage", "align"]) == 2
    assert "--teacher" in capsys.readouterr().err
    # the student needs multispectral shards: the image folder is refused up front
    argv = _align_argv(sets, out, "--data", ben, str(sets / "img-shards"))
    assert backbone_sweep.main(argv) == 2
    assert "no multispectral bands" in capsys.readouterr().err
    # stage overrides: an unknown key is named; the other stage's overrides are refused
    argv = [*_patch_argv(sets, out, "--teachers", "ViT-B-32", "--data", ben), "--patch", "lr_max=1"]
    assert backbone_sweep.main(argv) == 2
    assert "--patch 'lr_max=1': unknown option 'lr_max'" in capsys.readouterr().err
    argv = _patch_argv(sets, out, "--teachers", "ViT-B-32", "--data", ben, "--align", "lr=1")
    assert backbone_sweep.main(argv) == 2
    assert "apply to --stage align" in capsys.readouterr().err
    assert not out.exists()


def test_teacher_specs():
    assert backbone_sweep.parse_teacher("ViT-B-32") == ("ViT-B-32", "openai")
    assert backbone_sweep.parse_teacher("ViT-B-16:laion2b_s34b_b88k") == (
        "ViT-B-16",
        "laion2b_s34b_b88k",
    )
    assert backbone_sweep.parse_teacher("RN50:none") == ("RN50", None)
    assert backbone_sweep.parse_teacher("x:/w/a.pt") == ("x", "/w/a.pt")
    assert backbone_sweep.parse_teacher("hf-hub:org/m:none") == ("hf-hub:org/m", None)
    assert backbone_sweep.teacher_label("x:/w/a.pt") == "x:a.pt"


def test_help(cli):
    r = cli["backbone_sweep --help"]
    assert r.returncode == 0
    for opt in (
        "--stage",
        "--teachers",
        "--students",
        "--student-inits",
        "--data",
        "--supported",
        "--resume",
        "--cluster",
        "--cpus-per-trial",
        "--gpus-per-trial",
        "--max-concurrent",
        "--num-samples",
        "--storage",
        "--spec",
        "--search",
        "--patch",
        "--patch-config",
        "--align",
        "--align-config",
    ):
        assert opt in r.stdout, opt
