"""The alignment loss sweep end to end: real Ray Tune + Optuna + ASHA, tiny models, CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from mtmg import config, prep, synth
from mtmg.stages.align import driver as align
from mtmg.sweeps import options, outputs
from mtmg.sweeps.loss import driver as loss_sweep

from conftest import REPO, assert_not_rerun, kill_midway

SCRIPT = str(REPO / "sweeps" / "loss_sweep.py")
STUDENT = '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}'


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("losssweep")
    synth.make_bigearthnet(root / "ben", n_patches=60, s1=False, seed=41)
    synth.make_eurosat_ms(root / "ems", n_per_class=2, size=32, seed=42)
    for kind, raw, out in (("bigearthnet", "ben", "shards"), ("eurosat-ms", "ems", "ems-shards")):
        prep.shard(
            prep.ShardConfig(kind, str(root / raw), str(root / out), shard_size=20, progress=False)
        )
    return root


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data",
        str(root / "shards"),
        "--out",
        str(out),
        "--model",
        "mtmg-tiny-vit",
        "--pretrained",
        "none",
        "--align",
        f"student_args={STUDENT}",
        "student_size=32",
        "--align",
        "batch_size=16",
        "warmup-steps=3",
        "loader_workers=1",
        "--cache-dir",
        str(root / "cache"),
        *extra,
    ]


def _table(out: Path) -> list[dict]:
    return pq.read_table(out / "sweep.parquet").to_pylist()


def test_grid_with_a_failing_trial(shards, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    # paths relative to the cwd, as users type them: the eval sets from --align-config
    monkeypatch.chdir(shards)
    conf = tmp_path / "align.yaml"
    conf.write_text("eval_data: [ems-shards, 'shards:ben5']\n")
    relative = ("--align-config", str(conf), "--cache-dir", "cache")
    # w_img = w_txt = 0 leaves nothing to train: that trial fails, the sweep goes on
    code = loss_sweep.main(
        _argv(shards, out, "--epochs", "2", "--w-img", "0", "1", "--w-txt", "0", "0.05", *relative)
    )
    assert code == 0
    rows = _table(out)
    assert len(rows) == 4
    combos = {(r["config/w_img"], r["config/w_txt"]): r for r in rows}
    assert set(combos) == {(0.0, 0.0), (0.0, 0.05), (1.0, 0.0), (1.0, 0.05)}
    bad = combos[(0.0, 0.0)]
    assert bad["status"] == "ERROR" and "nothing to train" in bad["error"]
    ok = [r for r in rows if r["status"] != "ERROR"]
    for r in ok:  # validation every epoch, then test metrics
        assert r["done_training"] and r["epoch"] == 2
        assert 0 <= r["val_zeroshot"] <= 100 and 0 <= r["test_r1"] <= 100
        assert r["objective"] == r["val_zeroshot"]
    # every --eval-data set's test metrics, named by dataset and nomenclature
    evals = ("eval/eurosat-ms", "eval/bigearthnet:ben5")
    for r in ok:
        for name in evals:
            values = [r[f"{name}/{k}"] for k in loss_sweep.TEST_KEYS]
            assert all(isinstance(v, float) and math.isfinite(v) for v in values), (name, r)
            assert 0 <= r[f"{name}/test_zeroshot"] <= 100
        # the same images as --data: the same retrieval, scored in another label set
        assert r["eval/bigearthnet:ben5/test_r1"] == r["test_r1"]
    summary = json.loads((out / "summary.json").read_text())
    best = max(ok, key=lambda r: r["objective"])
    assert summary["best_objective"] == best["objective"]
    for name in evals:
        assert summary["best_test"][f"{name}/test_zeroshot"] == best[f"{name}/test_zeroshot"]
    assert summary["test_sets"]["eval/bigearthnet:ben5"] == f"{shards / 'shards'}:ben5"
    assert "eval/eurosat-ms/test_zeroshot" in (out / "summary.md").read_text()
    assert summary["failed"][0]["error"] == bad["error"]
    # the best configuration is an mtmg.align config file
    values = config.load_yaml(align.AlignConfig, out / "best_config.yaml")
    cfg = align.AlignConfig(**values)
    assert (cfg.w_img, cfg.w_txt) == (best["config/w_img"], best["config/w_txt"])
    assert cfg.student_args == STUDENT and cfg.epochs == 2
    # every path absolute: the file runs from any directory
    raw = yaml.safe_load((out / "best_config.yaml").read_text())
    assert raw["eval_data"] == [str(shards / "ems-shards"), f"{shards / 'shards'}:ben5"]
    assert raw["out"] == str(out / "best")
    for path in (raw["data"], raw["cache_dir"], *(e.split(":")[0] for e in raw["eval_data"])):
        assert Path(path).is_absolute() and Path(path).is_dir(), path
    for name in ("sweep.csv", "summary.md", "spec.yaml", "loss_sweep.png"):
        assert (out / name).exists(), name
    # what every trial started from: the --align overrides and the sweep's own settings
    base = align.AlignConfig(**config.load_yaml(align.AlignConfig, out / "align_config.yaml"))
    assert (base.student_args, base.student_size, base.batch_size) == (STUDENT, 32, 16)
    assert base.epochs == 2 and base.pretrained is None and not base.eval_init
    assert "nothing to train" in (out / "summary.md").read_text()


def test_optuna_with_asha(shards, tmp_path):
    out = tmp_path / "optuna"
    code = loss_sweep.main(
        _argv(
            shards,
            out,
            "--epochs",
            "3",
            "--search",
            "optuna",
            "--num-samples",
            "4",
            "--w-txt",
            "0",
            "0.5",
            "--lr",
            "1e-4",
            "3e-3",
            "--distance",
            "mse",
            "cosine",
            "--objective",
            "sum",
        )
    )
    assert code == 0
    rows = _table(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}
    for r in rows:  # sampled inside the given ranges and choices
        assert 0 <= r["config/w_txt"] <= 0.5 and 1e-4 <= r["config/lr"] <= 3e-3
        assert r["config/distance"] in ("mse", "cosine") and r["config/w_img"] == 1.0
        assert r["objective"] == pytest.approx(r["val_zeroshot"] + r["val_r1"])
    assert len({r["config/lr"] for r in rows}) == 4
    # ASHA stopped poor trials after their first epochs: no test metrics for them
    stopped = [r for r in rows if not r.get("done_training")]
    assert stopped and all(r["epoch"] < 3 for r in stopped)
    assert any(r.get("done_training") for r in rows)


def test_resume_after_the_driver_is_killed(shards, tmp_path):
    out = tmp_path / "resume"
    argv = [
        sys.executable,
        SCRIPT,
        *_argv(
            shards,
            out,
            "--epochs",
            "2",
            "--w-txt",
            "0",
            "0.01",
            "0.05",
            "0.1",
            "0.5",
            "--max-concurrent",
            "1",
        ),
    ]
    exp = out / "tune" / loss_sweep.NAME
    done = kill_midway(argv, exp, trials=2, delay=1.5)
    assert not (out / "summary.json").exists()
    # the resumed driver: this process, on the tests' Ray session (no second start-up)
    assert loss_sweep.main([*argv[2:], "--resume"]) == 0
    table = _table(out)
    assert sorted(x["config/w_txt"] for x in table) == [0.0, 0.01, 0.05, 0.1, 0.5]
    assert {x["status"] for x in table} == {"TERMINATED"}
    assert_not_rerun(table, done)  # not re-run: the results of the first driver


def test_sweep_on_a_running_cluster(local_cluster, shards, tmp_path):
    out = tmp_path / "cluster"
    r = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            *_argv(
                shards,
                out,
                "--epochs",
                "1",
                "--w-txt",
                "0",
                "0.05",
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
    assert len(_table(out)) == 2 and "## Best configuration" in r.stdout


def test_bad_input_fails_before_ray(shards, tmp_path, capsys):
    out = str(tmp_path / "bad")
    assert loss_sweep.main(["--out", out, "--model", "mtmg-tiny-vit"]) == 2
    assert "--data" in capsys.readouterr().err
    assert loss_sweep.main(_argv(shards, tmp_path / "b", "--distance", "l1")) == 2
    assert "--distance" in capsys.readouterr().err
    assert loss_sweep.main(_argv(shards, tmp_path / "b", "--lr", "0")) == 2
    assert "learning rates" in capsys.readouterr().err
    # --align: unknown keys, bad values and the swept keys are refused, named
    assert loss_sweep.main(_argv(shards, tmp_path / "b", "--align", "stduent=x")) == 2
    assert "unknown option 'stduent'" in capsys.readouterr().err
    assert loss_sweep.main(_argv(shards, tmp_path / "b", "--align", "epochs=two")) == 2
    assert "--epochs: invalid int value" in capsys.readouterr().err
    assert loss_sweep.main(_argv(shards, tmp_path / "b", "--align", "w_txt=0.1")) == 2
    assert "the sweep sets w_txt itself" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_align_overrides_read_as_mtmg_align_reads_its_flags():
    items = [
        "augment=false",
        "gpu-augment=none",
        "recall_ks=1,5",
        f"student_args={STUDENT}",
        "pretrained=none",
        "distance=cosine",
    ]
    assert options.overrides(align.AlignConfig, items, "--align") == {
        "augment": False,
        "gpu_augment": None,
        "recall_ks": (1, 5),
        "student_args": STUDENT,
        "pretrained": None,
        "distance": "cosine",
    }
    with pytest.raises(ValueError, match="--align 'augment=maybe': expected true or false"):
        options.overrides(align.AlignConfig, ["augment=maybe"], "--align")
    with pytest.raises(ValueError, match="--align 'lr': expected KEY=VALUE"):
        options.overrides(align.AlignConfig, ["lr"], "--align")


def test_written_stage_configs_name_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = {
        "data": "shards/ben",
        "eval_data": ["shards/ems", "shards/ben:ben5", "s3://bucket/ben:ben43"],
        "supported": ["shards/img"],
        "cache_dir": "cache",
        "teacher": None,
        "model_config": "arch.json",
        "pretrained": "openai",
        "lr": 1e-4,
    }
    got = outputs.absolute_paths(values)
    assert got["data"] == str(tmp_path / "shards/ben")
    assert got["eval_data"] == [
        str(tmp_path / "shards/ems"),
        f"{tmp_path / 'shards/ben'}:ben5",
        "s3://bucket/ben:ben43",
    ]
    assert got["supported"] == [str(tmp_path / "shards/img")]
    assert got["cache_dir"] == str(tmp_path / "cache")
    assert got["model_config"] == str(tmp_path / "arch.json")
    assert (got["teacher"], got["pretrained"], got["lr"]) == (None, "openai", 1e-4)
    assert outputs.absolute_paths({"pretrained": "w/clip.pt"})["pretrained"] == str(
        tmp_path / "w/clip.pt"
    )


def test_help(cli):
    r = cli["loss_sweep --help"]
    assert r.returncode == 0
    for opt in (
        "--w-txt",
        "--distance",
        "--objective",
        "--asha",
        "--resume",
        "--cluster",
        "--cpus-per-trial",
        "--storage",
        "--spec",
        "--align",
        "--align-config",
    ):
        assert opt in r.stdout, opt
    assert "--trial-delay" not in r.stdout
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert "(default: )" not in text and "(default: the stage's, openai)" in text
