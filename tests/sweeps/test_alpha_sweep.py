"""The alpha sweep end to end: real Ray Tune, a tiny open_clip, generated shards.

One module fixture fine-tunes once through the sweep's own `--data` mode; the other tests sweep
that patch run. Reference numbers come from a plain loop without Ray (`brute_force`). One file
because every test reuses that one fine-tune (the costly part); the sweep's pieces have their own
files (test_alpha_early, test_alpha_selection, test_alpha_trial).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmg import config, faults, prep, rundir, synth
from mtmg.data import loader
from mtmg.engine import evaluate, select
from mtmg.engine.context import WorkerContext
from mtmg.models import heads, weights
from mtmg.runtime import tuner
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import options
from mtmg.sweeps.alpha import driver, early, inputs, trial
from mtmg.sweeps.alpha.config import ALPHAS, AlphaSweepConfig, patch_config

from conftest import REPO

MODEL = "mtmg-tiny-vit"
SCRIPT = str(REPO / "sweeps" / "alpha_sweep.py")


@pytest.fixture(scope="module")
def sets(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("sweepdata")
    synth.make_bigearthnet(root / "ben", n_patches=96, s1=False, seed=21)
    synth.make_imagefolder(root / "img", n_per_class=12, size=32)
    for kind, raw in (("bigearthnet", "ben"), ("imagefolder", "img")):
        prep.shard(
            prep.ShardConfig(
                kind, str(root / raw), str(root / f"{raw}-shards"), shard_size=20, progress=False
            )
        )
    return root, str(root / "ben-shards"), str(root / "img-shards")


PREPARED_AT: list[float] = []  # when the `first` sweep started its preparations
TUNED_AT: list[float] = []  # when it started Ray Tune


@pytest.fixture(scope="module")
def first(sets):
    """`--data` mode: the sweep fine-tunes once itself (OUT/patch), then sweeps 3 alphas."""
    root, ben, img = sets
    cfg = AlphaSweepConfig(
        out=str(root / "first"),
        data=ben,
        supported=(img,),
        model=MODEL,
        pretrained="none",
        epochs=4,
        lr=3e-3,
        warmup_steps=3,
        batch_size=16,
        eval_batch_size=64,
        loader_workers=1,
        cache_dir=str(root / "cache"),
        alphas=(0.0, 0.5, 1.0),
        report_to=("tensorboard",),
    )
    prepare, run_tuner = inputs.prepare, tuner.run_tuner

    def prepared(*args):
        PREPARED_AT.append(time.time())
        return prepare(*args)

    def tuned(*args, **kwargs):
        TUNED_AT.append(time.time())
        return run_tuner(*args, **kwargs)

    inputs.prepare, tuner.run_tuner = prepared, tuned
    try:
        return cfg, driver.run(cfg)
    finally:
        inputs.prepare, tuner.run_tuner = prepare, run_tuner


@pytest.fixture(scope="module")
def run_dir(first):
    return Path(first[0].out) / "patch"


def _cfg(run_dir, out, **kw) -> AlphaSweepConfig:
    return AlphaSweepConfig(out=str(out), run=str(run_dir), **kw)


def brute_force(run_dir: Path, alphas, split: str = "val") -> list[dict]:
    """Every alpha evaluated in a plain loop, no Ray: rows as `mtmg.engine.select` takes them."""
    pcfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = open_clip.create_model(MODEL, pretrained=str(run_dir / "patched.safetensors")).eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    zs = load_file(str(run_dir / "theta_zs.safetensors"))
    ft = load_file(str(run_dir / "theta_ft.safetensors"))
    size = model.visual.image_size[0]
    rows = []
    for role, path in [("patching", pcfg["data"])] + [("supported", p) for p in pcfg["supported"]]:
        ds = loader.ShardSet.open(path)
        head = heads.ZeroShotHead(
            heads.build_zeroshot_weights(
                model, tokenizer, ds.prompt_names(), ds.manifest["templates"]
            )
        )
        dec = loader.Decoder(
            tuple(ds.manifest["bands"]),
            ds.manifest["modality"],
            "rgb",
            loader.Targets.of(ds),
            size,
            size,
        )
        batches = list(
            loader.make_loader(ds, split, dec, batch_size=64, train=False, num_workers=0)
        )
        main = "mAP" if ds.task == "multi-label" else "top1"
        for a in alphas:
            weights.load_image_state(model, weights.interpolate(zs, ft, a))
            m = evaluate.classification(
                WorkerContext(), lambda b, h=head: h(model.visual(b["rgb"])), batches, ds.task
            )
            rows.append(
                {"alpha": a, "role": role, "split": split, "value": m[main], "dataset": ds.name}
            )
    return rows


def _table(out: Path) -> list[dict]:
    return pq.read_table(out / "sweep.parquet").to_pylist()


def test_fine_tune_then_sweep(first, run_dir):
    cfg, summary = first
    for name in ("config.yaml", "theta_zs.safetensors", "theta_ft.safetensors", "summary.json"):
        assert (run_dir / name).exists(), name
    table = _table(Path(cfg.out))
    assert sorted(r["alpha"] for r in table) == [0.0, 0.5, 1.0]
    assert summary["alpha"] in (0.0, 0.5, 1.0) and summary["trials"]["failed"] == 0
    assert summary["timings"]["fine_tune_s"] > 0
    # --report-to: the sweep's own fine-tune is a tracked run of its steps, every trial another
    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    assert (
        len(ea.Scalars("train/loss")) == json.loads((run_dir / "summary.json").read_text())["steps"]
    )
    assert len(list((Path(cfg.out) / "tune").rglob("events.out.tfevents*"))) == 3
    # fine-tuning helped the patching task on held-out validation data
    by_alpha = {r["alpha"]: r for r in table}
    assert by_alpha[1.0]["patching"] > by_alpha[0.0]["patching"] + 5
    # the sweep prepared (decoded splits, packed the tower) while Ray Train fine-tuned: after
    # the run wrote theta_zs (just before the job), before it wrote theta_ft (just after)
    assert len(PREPARED_AT) == 1
    zs, ft = (os.stat(run_dir / f"theta_{k}.safetensors").st_mtime for k in ("zs", "ft"))
    assert zs <= PREPARED_AT[0] < ft
    # Tune started the trials while Ray Train fine-tuned (they hold trial slots, not its CPUs):
    # they waited for theta_ft and evaluated exactly what a plain loop gives on the finished run
    assert len(TUNED_AT) == 1 and zs <= TUNED_AT[0] < ft
    assert all(r["wait_s"] >= 0 and r["eval_s"] > 0 for r in table)
    want = {(r["role"], r["alpha"]): r["value"] for r in brute_force(run_dir, (0.0, 0.5, 1.0))}
    # the same command resumes it (its fine-tune inside OUT counts as the same input); another
    # search is refused, naming what differs, and OUT is left as it was
    ident = rundir.identity(driver.NAME, replace(cfg, resume=True), cfg.out)
    assert (
        rundir.fingerprint(ident)
        == json.loads((Path(cfg.out) / "run.json").read_text())["fingerprint"]
    )
    before = sorted(p.name for p in Path(cfg.out).iterdir())
    with pytest.raises(rundir.RunDirError, match=r"--alphas \[0.0, 0.5, 1.0\] -> \[0.0, 1.0\]"):
        driver.run(replace(cfg, resume=True, alphas=(0.0, 1.0)))
    assert sorted(p.name for p in Path(cfg.out).iterdir()) == before
    for r in table:
        assert r["patching"] == pytest.approx(want[("patching", r["alpha"])], abs=1e-6)
        assert r["supported"] == pytest.approx(want[("supported", r["alpha"])], abs=1e-6)


def test_a_failed_fine_tune_fails_its_waiting_trials_and_leaves_no_experiment(
    sets, tmp_path, monkeypatch
):
    root, ben, img = sets
    out = tmp_path / "broken"
    exp = out / "tune" / driver.NAME
    seen: list[str] = []

    def broken(*args, **kwargs):  # after Ray Train's job: the trials already wait
        raise OSError("disk full (injected)")

    def remove(cfg, name):  # what the experiment held before the sweep deleted it
        seen.extend(p.read_text() for p in exp.glob("trial_*/error.txt"))
        remove_experiment(cfg, name)

    remove_experiment = tuner.remove_experiment
    monkeypatch.setattr(patch, "write_outputs", broken)
    monkeypatch.setattr(tuner, "remove_experiment", remove)
    cfg = AlphaSweepConfig(
        out=str(out),
        data=ben,
        supported=(img,),
        model=MODEL,
        pretrained="none",
        epochs=1,
        batch_size=16,
        eval_batch_size=64,
        loader_workers=1,
        cache_dir=str(root / "cache"),
        alphas=(0.0, 1.0),
    )
    with pytest.raises(OSError, match="disk full"):
        driver.run(cfg)
    assert len(seen) == 2 and all("the sweep's fine-tune failed" in t for t in seen)
    assert all("disk full (injected)" in t for t in seen)
    assert not exp.exists()  # nothing to resume: a rerun starts a new sweep
    assert not (out / "summary.json").exists()


def test_grid_sweep_chooses_what_brute_force_chooses(run_dir, tmp_path):
    out = tmp_path / "grid"
    summary = driver.run(_cfg(run_dir, out))
    for name in (
        "sweep.parquet",
        "sweep.csv",
        "summary.md",
        "summary.json",
        "best_config.yaml",
        "spec.yaml",
        "alpha_curve.png",
        "patched.safetensors",
        "config.yaml",
        "metrics.parquet",
    ):
        assert (out / name).stat().st_size > 0, name
    table = _table(out)
    assert [r["alpha"] for r in table] == list(ALPHAS)
    assert {r["status"] for r in table} == {"TERMINATED"} and all(r["time_s"] for r in table)

    ref = brute_force(run_dir, ALPHAS)
    assert summary["alpha"] == select.select_alpha(ref, "mean")
    want = {(r["role"], r["alpha"]): r["value"] for r in ref}
    for r in table:
        assert r["patching"] == pytest.approx(want[("patching", r["alpha"])], abs=1e-6)
        assert r["supported"] == pytest.approx(want[("supported", r["alpha"])], abs=1e-6)
        assert r["chosen"] == (r["alpha"] == summary["alpha"])

    # test metrics at 0, the chosen alpha and 1, as the plain loop computes them
    ref_test = brute_force(run_dir, sorted({0.0, summary["alpha"], 1.0}), "test")
    got = {(r["role"], r["alpha"]): r["value"] for r in summary["test"]}
    assert {(r["role"], r["alpha"]) for r in ref_test} == set(got)
    for r in ref_test:
        assert got[(r["role"], r["alpha"])] == pytest.approx(r["value"], abs=1e-6)
    # what the patch run evaluated on its test splits (0, its chosen alpha, 1; same device and
    # precision) is taken over, not evaluated again
    run_rows = {
        (r["role"], r["alpha"]): r["value"]
        for r in pq.read_table(run_dir / "metrics.parquet").to_pylist()
        if r["selected"] is not None
    }
    assert {0.0, 1.0} <= {a for _, a in run_rows}
    for r in summary["test"]:
        if (r["role"], r["alpha"]) in run_rows:
            assert r["source"] == "patch run" and r["value"] == run_rows[(r["role"], r["alpha"])]
        else:
            assert r["source"] == "sweep"
    assert json.loads((out / "summary.json").read_text())["alpha"] == summary["alpha"]
    assert f"**{summary['alpha']:g}**" in (out / "summary.md").read_text()

    # a patch-run layout for the teacher: a strict open_clip checkpoint at the chosen alpha
    model = open_clip.create_model(MODEL, pretrained=str(out / "patched.safetensors"))
    theta = weights.interpolate(
        load_file(str(run_dir / "theta_zs.safetensors")),
        load_file(str(run_dir / "theta_ft.safetensors")),
        summary["alpha"],
    )
    for k, v in weights.image_state(model).items():
        torch.testing.assert_close(v, theta[k])
    # the best config is an mtmg.patch config at the chosen alpha
    best = patch.PatchConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in config.load_yaml(patch.PatchConfig, out / "best_config.yaml").items()
        }
    )
    assert best.alphas == (summary["alpha"],) and best.model == MODEL
    # the resolved spec is loadable as --spec; an existing sweep needs --resume
    spec = config.load_yaml(AlphaSweepConfig, out / "spec.yaml")
    assert spec["alphas"] == list(ALPHAS) and spec["search"] == "grid"
    with pytest.raises(ValueError, match="--resume"):
        driver.run(_cfg(run_dir, out))


def test_sets_the_run_did_not_evaluate_are_evaluated_by_the_sweep(sets, run_dir, tmp_path):
    """Another --eval-data set: the run has no test rows for it, so the sweep evaluates alpha 0,
    the chosen alpha and 1 itself, on every set."""
    _, ben, img = sets
    out = tmp_path / "eval"
    eval_data = (img, f"{ben}:ben5", f"{ben}:ben43")
    summary = driver.run(_cfg(run_dir, out, alphas=(0.0, 0.5, 1.0), eval_data=eval_data))
    test = summary["test"]
    assert {r["role"] for r in test} == {"patching", "supported", "eval"}
    assert {r["source"] for r in test} == {"sweep"}
    alphas = {0.0, summary["alpha"], 1.0}
    assert sorted({r["alpha"] for r in test}) == sorted(alphas)
    # the eval set is the supported set under another role: the same numbers
    by = {(r["role"], r["nomenclature"], r["alpha"]): r["value"] for r in test}
    for a in alphas:
        assert by[("eval", "imagefolder", a)] == pytest.approx(by[("supported", "imagefolder", a)])
    # BigEarthNet in three nomenclatures, each with per-class AP rows averaging to its mAP
    assert {(r["role"], r["nomenclature"]) for r in test if r["dataset"] == "bigearthnet"} == {
        ("patching", "ben19"),
        ("eval", "ben5"),
        ("eval", "ben43"),
    }
    # per-class AP rows average to the mAP; per-class accuracies weighted by n give top-1
    per_class = pq.read_table(out / "per_class.parquet").to_pylist()
    for (role, nomen, a), value in by.items():
        got = [
            (c["value"], c["n"])
            for c in per_class
            if (c["role"], c["nomenclature"], c["alpha"]) == (role, nomen, a)
            and c["value"] is not None
        ]
        if nomen == "imagefolder":
            mean = sum(v * n for v, n in got) / sum(n for _, n in got)
        else:
            mean = sum(v for v, _ in got) / len(got)
        assert mean == pytest.approx(value, abs=1e-9), (role, nomen, a)
    assert {r["label"] for r in test} >= {"eval/bigearthnet:ben5", "eval/bigearthnet:ben43"}


def test_trials_decode_a_set_once_for_all_its_nomenclatures(sets, tmp_path):
    """BigEarthNet in ben19 (patching), ben5 and ben43 (eval): its validation split goes into
    the object store once, and a trial's rows are what scoring each nomenclature in a pass of
    its own over its own decoding gives."""
    import ray

    root, ben, img = sets
    pcfg = patch.PatchConfig(
        data=ben,
        supported=(img,),
        eval_data=(f"{ben}:ben5", f"{ben}:ben43"),
        out=str(tmp_path / "run"),
        model=MODEL,
        pretrained=None,
        batch_size=16,
        eval_batch_size=64,
        loader_workers=0,
        cache_dir=str(root / "cache"),
    )
    bundle, sets_ = patch.resolve_inputs(pcfg)
    ti = inputs.trial_inputs(AlphaSweepConfig(out=str(tmp_path)), pcfg, bundle, sets_, faults.NONE)
    val = inputs._decode_all(ti, list(range(len(sets_))), on_cluster=False)
    assert sorted(val) == sorted([ben, img])  # one decoded split per path, not per set
    zs = weights.image_state(bundle.model)
    gen = torch.Generator().manual_seed(0)
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in zs.items()}
    refs = {
        "visual": ray.put(early.pack_visual(bundle.model.visual, script=True)),
        "zs": ray.put(inputs._numpy_state(zs)),
        "ft": ray.put(inputs._numpy_state(ft)),
        "heads": ray.put([h.numpy() for h in patch.build_heads(pcfg, bundle, sets_)]),
        "val": val,
    }
    ev = trial.Evaluator(ti, refs, worker=False)
    rows = ev.rows(0.5, [(i, "val") for i in range(len(sets_))])
    assert [(r["role"], r["nomenclature"]) for r in rows] == [
        ("patching", "ben19"),
        ("supported", "imagefolder"),
        ("eval", "ben5"),
        ("eval", "ben43"),
    ]
    size, mean, std = ti.decoder
    for s, head, row in zip(ti.sets, ev.heads, rows, strict=True):
        ds = loader.ShardSet.open(s.path)
        dec = loader.Decoder.of(
            ds, "rgb", loader.Targets.of(ds, s.nomenclature), size, mean=mean, std=std
        )
        batches = loader.make_loader(ds, "val", dec, batch_size=64, train=False, num_workers=0)
        with torch.jit.optimized_execution(False):
            m = evaluate.classification(
                WorkerContext(), lambda b, h=head: h(ev.model.visual(b["rgb"])), batches, s.task
            )
        assert (row["label"], row["n"], row["value"]) == (s.label, m["n"], m[row["metric"]])
        assert row["per_class"] == evaluate.class_values(list(s.classes), m)


def test_optuna_sweep(run_dir, tmp_path):
    out = tmp_path / "optuna"
    summary = driver.run(
        _cfg(run_dir, out, search="optuna", num_samples=6, seed=3, max_concurrent=1)
    )
    table = _table(out)
    alphas = sorted({r["alpha"] for r in table})
    assert len(table) == 6 and {0.0, 1.0} <= set(alphas)  # the two ends are evaluated first
    assert all(abs(a * 100 - round(a * 100)) < 1e-6 for a in alphas)  # --alpha-step 0.01
    assert summary["alpha"] == select.select_alpha(brute_force(run_dir, alphas), "mean")


def test_multi_objective_reports_the_pareto_front(run_dir, tmp_path):
    out = tmp_path / "mo"
    rc = driver.main(
        [
            "--run",
            str(run_dir),
            "--out",
            str(out),
            "--search",
            "optuna",
            "--num-samples",
            "6",
            "--multi-objective",
            "--max-concurrent",
            "1",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    table = _table(out)
    points = {r["alpha"]: (r["patching"], r["supported"]) for r in table}
    # non-dominated points, computed here from the table
    front = sorted(
        a
        for a, p in points.items()
        if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())
    )
    assert front and [p["alpha"] for p in summary["pareto_front"]] == front
    assert sorted({r["alpha"] for r in table if r["pareto"]}) == front
    assert summary["alpha"] in front and summary["multi_objective"] is True
    assert "Pareto front" in (out / "summary.md").read_text()


def test_failing_trial_is_reported_and_the_sweep_finishes(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "fail"
    monkeypatch.setenv(faults.ENV, "fail_alphas=0.5")  # read once, by the driver
    # the failing trial last: its actor dies, and no other trial has to wait for a new one
    cfg = _cfg(run_dir, out, alphas=(0.0, 1.0, 0.5), max_concurrent=1)
    summary = driver.run(cfg)
    table = {r["config/alpha"]: r for r in _table(out)}
    assert table[0.5]["status"] == "ERROR"
    assert "RuntimeError: injected failure at alpha=0.5" in table[0.5]["error"]
    assert table[0.0]["status"] == table[1.0]["status"] == "TERMINATED"
    assert summary["trials"] == {"total": 3, "finished": 2, "failed": 1}
    assert summary["alpha"] in (0.0, 1.0)
    assert "injected failure" in (out / "summary.md").read_text()


def _finished(exp: Path) -> dict[str, dict]:
    out = {}
    for f in exp.glob("trial_*/result.json"):
        line = f.read_text().strip()
        if line:
            out[f.parent.name] = json.loads(line.splitlines()[0])
    return out


def test_resume_after_the_driver_is_killed(run_dir, tmp_path):
    out = tmp_path / "resume"
    argv = [
        sys.executable,
        SCRIPT,
        "--run",
        str(run_dir),
        "--out",
        str(out),
        "--max-concurrent",
        "1",
    ]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        start_new_session=True,
        env={**os.environ, faults.ENV: "trial_delay=0.7"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    exp = out / "tune" / driver.NAME
    try:
        deadline = time.time() + 240
        while len(_finished(exp)) < 3:
            assert proc.poll() is None and time.time() < deadline, "the sweep ended too early"
            time.sleep(0.2)
        done = _finished(exp)  # finished well before the kill: in the saved experiment state
        time.sleep(2.5)
        assert proc.poll() is None, "the sweep ended before it was killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(_finished(exp)) < len(ALPHAS)
    assert not (out / "summary.json").exists()

    # the resumed driver: this process, on the tests' Ray session (no second start-up)
    assert driver.main([*argv[2:], "--resume"]) == 0
    table = _table(out)
    assert sorted(r["alpha"] for r in table) == list(ALPHAS)
    assert {r["status"] for r in table} == {"TERMINATED"}
    rows = {Path(r["path"]).name: r for r in table}
    for name, first_result in done.items():  # not re-run: the same (only) result
        assert (exp / name / "result.json").read_text().count("\n") == 1
        assert rows[name]["pid"] == first_result["pid"]
        assert rows[name]["timestamp"] == first_result["timestamp"]
    assert len({r["pid"] for r in table}) >= 2  # the rest ran in the resumed driver's actors


def test_sweep_on_a_running_cluster(local_cluster, run_dir, tmp_path):
    out = tmp_path / "cluster"
    r = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--run",
            str(run_dir),
            "--out",
            str(out),
            "--cluster",
            "--alphas",
            "0",
            "0.5",
            "1",
            "--cpus-per-trial",
            "0.5",
            "--max-concurrent",
            "1",
        ],
        env=local_cluster,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "chosen alpha" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["on_cluster"] is True and summary["trials"]["finished"] == 3
    ref = brute_force(run_dir, (0.0, 0.5, 1.0))
    assert summary["alpha"] == select.select_alpha(ref, "mean")


def test_bad_input_fails_before_ray(run_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert driver.main(["--run", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no such directory" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert driver.main(["--run", str(partial), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing theta_zs.safetensors, theta_ft.safetensors" in err
    base = ["--run", str(run_dir), "--out", str(out)]
    for extra, msg in (
        (["--alphas", "0", "1.5"], "--alphas must lie in [0, 1]; got [1.5]"),
        (["--alphas", "0.5", "0.5"], "duplicates"),
        (["--alpha-range", "0.8", "0.2"], "--alpha-range needs 0 <= LOW < HIGH <= 1"),
        (["--alpha-range", "0", "2"], "--alpha-range needs 0 <= LOW < HIGH <= 1"),
        (["--cpus-per-trial", "0"], "a trial needs some resource"),
    ):
        assert driver.main([*base, *extra]) == 2, extra
        assert msg in capsys.readouterr().err
    assert driver.main(["--out", str(out)]) == 2
    assert "give --run" in capsys.readouterr().err
    assert not out.exists()  # nothing written, no Ray experiment started


def test_spec_file_and_flags(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("search: optuna\nalpha_range: [0.2, 0.8]\nnum_samples: 5\n")
    cfg = options.parse(
        AlphaSweepConfig, ["--out", "o", "--spec", str(spec), "--num-samples", "7"], "d"
    )
    assert cfg.search == "optuna" and cfg.alpha_range == (0.2, 0.8) and cfg.num_samples == 7


def test_joint_patching_sets_reach_the_fine_tune(tmp_path, monkeypatch):
    """--joint-data goes to the sweep's own fine-tune (mtmg.patch's joint patching), as absolute
    paths; every patching set then counts in the trials' patching metric (role 'patching')."""
    monkeypatch.chdir(tmp_path)
    cfg = options.parse(
        AlphaSweepConfig,
        ["--out", "o", "--data", "a", "--joint-data", "b", "c", "--supported", "s"],
        "d",
    )
    pcfg = patch_config(cfg)
    assert pcfg.patching == tuple(str(tmp_path / p) for p in "abc")
    assert pcfg.supported == (str(tmp_path / "s"),)
    rows = [
        {"role": "patching", "value": 40.0},
        {"role": "patching", "value": 60.0},
        {"role": "supported", "value": 90.0},
    ]
    assert trial.role_mean(rows, "patching") == 50.0


def test_optuna_range_above_zero_chooses_optunas_best(run_dir, tmp_path):
    out = tmp_path / "range"
    summary = driver.run(
        _cfg(
            run_dir,
            out,
            search="optuna",
            num_samples=4,
            seed=1,
            alpha_range=(0.3, 0.9),
            selection="constrained",
            tolerance=0.0,
            max_concurrent=1,
        )
    )
    table = _table(out)
    assert all(0.3 <= r["alpha"] <= 0.9 for r in table)
    best = max(table, key=lambda r: (r["objective"], -r["alpha"]))
    assert summary["alpha"] == best["alpha"] and best["chosen"]
    zero = [r["value"] for r in brute_force(run_dir, (0.0,)) if r["role"] == "supported"]
    assert all(r["supported_base"] == pytest.approx(zero[0], abs=1e-6) for r in table)


def test_help(cli):
    r = cli["alpha_sweep --help"]
    assert r.returncode == 0
    for opt in (
        "--run",
        "--data",
        "--supported",
        "--alphas",
        "--alpha-range",
        "--search",
        "--multi-objective",
        "--cluster",
        "--cpus-per-trial",
        "--gpus-per-trial",
        "--max-concurrent",
        "--num-samples",
        "--seed",
        "--storage",
        "--resume",
        "--spec",
    ):
        assert opt in r.stdout
    for hook in ("--fail-alphas", "--trial-delay"):  # test hooks: faults.ENV, not the CLI
        assert hook not in r.stdout
