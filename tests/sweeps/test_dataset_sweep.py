"""The dataset sweep end to end: real Ray Tune, a tiny CLIP, generated shards, CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mtmg import config, prep, synth
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import options
from mtmg.sweeps.dataset import driver as dataset_sweep

from conftest import REPO, assert_not_rerun, finished_trials, kill_midway

SCRIPT = str(REPO / "sweeps" / "dataset_sweep.py")


@pytest.fixture(scope="module")
def sets(tmp_path_factory, ray_session):
    """BigEarthNet, EuroSAT-MS and image-folder shards, and an image folder without a val split."""
    root = tmp_path_factory.mktemp("datasetsweep")
    synth.make_bigearthnet(root / "ben", n_patches=64, s1=False, seed=51)
    synth.make_eurosat_ms(root / "ems", n_per_class=5, size=32, seed=52)
    synth.make_imagefolder(root / "img", n_per_class=8, size=32)
    raw = root / "noval"
    synth.make_imagefolder(raw, n_per_class=3, size=32)
    stems = [p.stem for p in sorted(raw.rglob("*.png"))]
    (raw / "train.txt").write_text("\n".join(stems[::2]))
    (raw / "test.txt").write_text("\n".join(stems[1::2]))
    for kind, name in (
        ("bigearthnet", "ben"),
        ("eurosat-ms", "ems"),
        ("imagefolder", "img"),
        ("imagefolder", "noval"),
    ):
        prep.shard(
            prep.ShardConfig(
                kind, str(root / name), str(root / f"{name}-shards"), shard_size=32, progress=False
            )
        )
    return root


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--out",
        str(out),
        "--model",
        "mtmg-tiny-vit",
        "--pretrained",
        "none",
        "--patch",
        "lr=3e-3",
        "warmup_steps=3",
        "batch_size=16",
        "alphas=0,0.5,1",
        "--patch",
        "loader_workers=0",
        "eval_batch_size=64",
        "--cache-dir",
        str(root / "cache"),
        *extra,
    ]


def _table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_gain_matrix_with_a_failing_trial(sets, tmp_path):
    out = tmp_path / "matrix"
    code = dataset_sweep.main(
        _argv(
            sets,
            out,
            "--patching",
            str(sets / "ben-shards"),
            str(sets / "ems-shards"),
            str(sets / "noval-shards"),
            "--eval-data",
            str(sets / "img-shards"),
            "--epochs",
            "6",
            "--patch",
            "selection=patching",
        )
    )
    assert code == 0
    rows = {r["config/patching"]: r for r in _table(out / "sweep.parquet")}
    assert set(rows) == {"bigearthnet", "eurosat-ms", "noval-shards"}
    bad = rows["noval-shards"]  # an image folder too: labelled by its directory
    assert bad["status"] == "ERROR" and "has no 'val' split" in bad["error"]
    evals = ["bigearthnet", "eurosat-ms", "img-shards", "noval-shards"]
    ok = [rows["bigearthnet"], rows["eurosat-ms"]]
    for r in ok:
        assert r["status"] == "TERMINATED" and r["alpha"] in (0.0, 0.5, 1.0)
        for e in evals:  # every evaluation dataset, gain = patched - zero-shot
            assert r[f"gain/{e}"] == pytest.approx(r[f"patched/{e}"] - r[f"zeroshot/{e}"])
            assert 0 <= r[f"zeroshot/{e}"] <= 100
        assert r["self_gain"] == r[f"gain/{r['config/patching']}"]
        assert r["mean_gain"] == pytest.approx(sum(r[f"gain/{e}"] for e in evals) / len(evals))
    # the zero-shot model is the same in every trial
    for e in evals:
        assert ok[0][f"zeroshot/{e}"] == pytest.approx(ok[1][f"zeroshot/{e}"], abs=1e-9)
    # fine-tuning a tiny CLIP on BigEarthNet helps BigEarthNet's held-out split
    assert rows["bigearthnet"]["self_gain"] > 0

    gains = _table(out / "gains.parquet")  # the long-form matrix, from the trial rows
    assert len(gains) == 2 * len(evals)
    for g in gains:
        r = rows[g["patching"]]
        assert g["gain"] == r[f"gain/{g['evaluation']}"]
        assert g["gain"] == pytest.approx(g["patched"] - g["zeroshot"])
        assert g["metric"] == ("mAP" if g["evaluation"] == "bigearthnet" else "top1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gain"]["bigearthnet"]["eurosat-ms"] == rows["bigearthnet"]["gain/eurosat-ms"]
    assert summary["failed"][0]["patching"] == "noval-shards"
    best = max(ok, key=lambda r: r["mean_gain"])
    assert summary["best"] == best["config/patching"]
    # best_config.yaml is an mtmg.patch config of the best patching dataset
    cfg = patch.PatchConfig(**config.load_yaml(patch.PatchConfig, out / "best_config.yaml"))
    assert Path(cfg.data).name == (
        "ben-shards" if summary["best"] == "bigearthnet" else "ems-shards"
    )
    assert cfg.model == "mtmg-tiny-vit" and cfg.epochs == 6 and cfg.lr == 3e-3
    md = (out / "summary.md").read_text()
    assert "| patching | bigearthnet | eurosat-ms |" in md and "has no 'val' split" in md
    for name in ("sweep.csv", "gains.csv", "gains.png", "spec.yaml"):
        assert (out / name).exists(), name
    # spec.yaml gives the same sweep back (--spec; flags would override it)
    again = options.parse(dataset_sweep.DatasetSweepConfig, ["--spec", str(out / "spec.yaml")], "")
    assert again.patching == tuple(str(sets / f"{n}-shards") for n in ("ben", "ems", "noval"))
    assert again.epochs == 6 and "selection=patching" in again.patch and again.out == str(out)
    base = config.load_yaml(patch.PatchConfig, out / "patch_config.yaml")  # what trials start from
    assert (base["selection"], base["lr"], base["alphas"]) == ("patching", 3e-3, [0.0, 0.5, 1.0])


def test_a_mixture_is_a_row_of_the_matrix(sets, tmp_path):
    """`--patching A+B`: one trial patching on both sets together (joint patching), its row of
    the gain matrix (BigEarthNet also in its 5-class nomenclature: `--eval-data PATH:ben5`), and
    a best_config.yaml that `mtmg.patch` takes as that joint patching."""
    out = tmp_path / "mix"
    ben, ems, img = (str(sets / f"{n}-shards") for n in ("ben", "ems", "img"))
    evals = ("--eval-data", img, f"{ben}:ben5")
    code = dataset_sweep.main(
        _argv(sets, out, "--patching", f"{ben}+{ems}", *evals, "--epochs", "2")
    )
    assert code == 0
    label = "bigearthnet+eurosat-ms"
    evals = ["bigearthnet", "eurosat-ms", "imagefolder", "bigearthnet:ben5"]
    (row,) = _table(out / "sweep.parquet")
    assert row["status"] == "TERMINATED" and row["config/patching"] == label
    for e in evals:
        assert row[f"gain/{e}"] == pytest.approx(row[f"patched/{e}"] - row[f"zeroshot/{e}"])
    assert row["self_gain"] == pytest.approx((row["gain/bigearthnet"] + row["gain/eurosat-ms"]) / 2)
    gains = _table(out / "gains.parquet")
    assert [(g["patching"], g["evaluation"]) for g in gains] == [(label, e) for e in evals]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == label and set(summary["gain"][label]) == set(evals)
    assert summary["patching"] == {label: [ben, ems]}
    assert f"| {label} |" in (out / "summary.md").read_text() and (out / "gains.png").exists()
    # read and checked as `python -m mtmg.patch --config best_config.yaml` does
    cfg = config.parse(patch.PatchConfig, ["--config", str(out / "best_config.yaml")], "")
    assert (cfg.data, cfg.joint_data, cfg.eval_data) == (ben, (ems,), (img, f"{ben}:ben5"))
    _, patch_sets = patch.resolve_inputs(cfg)
    assert patch_sets == [
        ("patching", ben, None),
        ("patching", ems, None),
        ("eval", img, None),
        ("eval", ben, "ben5"),
    ]


def test_patching_entries(sets, tmp_path, monkeypatch):
    """A path holding '+' is one set when it is one; an entry that reads both ways is refused."""
    ben, ems = sets / "ben-shards", sets / "ems-shards"
    assert dataset_sweep.parse_entry(f"{ben}+{ems}") == (str(ben), str(ems))
    monkeypatch.chdir(tmp_path)
    Path("a+b").symlink_to(ben)  # paths are resolved: a linked set is its target
    assert dataset_sweep.parse_entry("a+b") == (str(ben),)
    Path("a").symlink_to(ben)
    assert dataset_sweep.parse_entry("a+b") == (str(ben),)
    Path("b").symlink_to(ems)
    with pytest.raises(ValueError, match="both a shard set and a mixture"):
        dataset_sweep.parse_entry("a+b")
    Path("a+b").unlink()
    assert dataset_sweep.parse_entry("a+b") == (str(ben), str(ems))
    with pytest.raises(ValueError, match="the same shard sets appear in another entry"):
        dataset_sweep.entries([f"{ben}+{ems}", f"{ems}+{ben}"])
    with pytest.raises(ValueError, match="a shard set twice in one mixture"):
        dataset_sweep.parse_entry(f"{ben}+{ben}")


def test_resume_after_the_driver_is_killed(sets, tmp_path):
    out = tmp_path / "resume"
    argv = [
        sys.executable,
        SCRIPT,
        *_argv(
            sets,
            out,
            "--patching",
            str(sets / "ben-shards"),
            str(sets / "ems-shards"),
            str(sets / "img-shards"),
            "--epochs",
            "2",
            "--max-concurrent",
            "1",
        ),
    ]
    exp = out / "tune" / dataset_sweep.NAME
    done = kill_midway(argv, exp, trials=1, delay=4)
    assert not (out / "summary.json").exists()
    assert len(finished_trials(exp)) < 3  # killed mid-sweep
    # the resumed driver: this process, on the tests' Ray session (no second start-up)
    assert dataset_sweep.main([*argv[2:], "--resume"]) == 0
    table = _table(out / "sweep.parquet")
    assert sorted(x["config/patching"] for x in table) == [
        "bigearthnet",
        "eurosat-ms",
        "imagefolder",
    ]
    assert {x["status"] for x in table} == {"TERMINATED"}
    assert_not_rerun(table, done)  # not re-run: the results of the first driver
    assert len(_table(out / "gains.parquet")) == 9


def test_sweep_on_a_running_cluster(local_cluster, sets, tmp_path):
    out = tmp_path / "cluster"
    r = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            *_argv(
                sets,
                out,
                "--patching",
                str(sets / "ems-shards"),
                "--supported",
                str(sets / "img-shards"),
                "--epochs",
                "1",
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
    (row,) = _table(out / "sweep.parquet")
    assert row["status"] == "TERMINATED" and "gain/imagefolder" in row
    assert "## Gain" in r.stdout


def test_bad_input_fails_before_ray(sets, tmp_path, capsys):
    out = tmp_path / "bad"
    assert dataset_sweep.main(["--out", str(out)]) == 2
    assert "--patching" in capsys.readouterr().err
    ben = str(sets / "ben-shards")
    assert dataset_sweep.main(_argv(sets, out, "--patching", ben, "--search", "optuna")) == 2
    assert "--search grid" in capsys.readouterr().err
    assert (
        dataset_sweep.main(
            _argv(sets, out, "--patching", ben, "--supported", str(sets / "noval-shards"))
        )
        == 2
    )
    assert "has no 'val' split" in capsys.readouterr().err
    assert dataset_sweep.main(_argv(sets, out, "--patching", ben, "--patch", "joint_data=x")) == 2
    assert "the sweep sets joint_data itself" in capsys.readouterr().err
    assert dataset_sweep.main(_argv(sets, out, "--patching", ben, "--patch", "selection=best")) == 2
    assert "argument --selection: invalid choice" in capsys.readouterr().err
    argv = _argv(sets, out, "--patching", ben, "--eval-data", f"{ben}:ben19")
    assert dataset_sweep.main(argv) == 2
    assert f"--eval-data {ben}:ben19: already scored" in capsys.readouterr().err
    argv = _argv(sets, out, "--patching", ben, "--eval-data", f"{ben}:ben99")
    assert dataset_sweep.main(argv) == 2
    assert "has no nomenclature 'ben99'" in capsys.readouterr().err
    assert not out.exists()


def test_help(cli):
    r = cli["dataset_sweep --help"]
    assert r.returncode == 0
    for opt in (
        "--patching",
        "--eval-data",
        "--supported",
        "--resume",
        "--cluster",
        "--cpus-per-trial",
        "--gpus-per-trial",
        "--max-concurrent",
        "--storage",
        "--spec",
        "--patch",
        "--patch-config",
    ):
        assert opt in r.stdout, opt
    assert "A+B" in r.stdout and "not supported" not in r.stdout  # mixtures are rows
