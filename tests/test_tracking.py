"""`--report-to`: a tiny patching run and a two-trial sweep tracked in TensorBoard, MLflow and
W&B (offline), checked by reading back what each backend stored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmg import prep, synth, tracking
from mtmg.stages.patch import command
from mtmg.sweeps.loss import driver as loss_sweep

STUDENT = '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}'


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    """A small BigEarthNet shard set and an image folder (a supported task)."""
    root = tmp_path_factory.mktemp("tracking")
    synth.make_bigearthnet(root / "ben", n_patches=40, s1=False, seed=61)
    synth.make_imagefolder(root / "img", n_per_class=6, size=32)
    for kind, raw in (("bigearthnet", "ben"), ("imagefolder", "img")):
        prep.shard(prep.ShardConfig(kind, str(root / raw), str(root / f"{raw}-s"), progress=False))
    return root


def _patch_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("--data", str(root / "ben-s"), "--supported", str(root / "img-s")),
        *("--out", str(out), "--cache-dir", str(root / "cache")),
        *("--model", "mtmg-tiny-vit", "--pretrained", "none", "--lr", "3e-3"),
        *("--warmup-steps", "2", "--batch-size", "8", "--loader-workers", "1"),
        *("--alphas", "0", "0.5", "1", "-q", *extra),
    ]


def _scalars(logdir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_a_patching_run_reaches_every_backend(shards, tmp_path, capfd):
    out = tmp_path / "run"
    argv = _patch_argv(shards, out, "--report-to", "tensorboard,mlflow", "--report-to", "wandb")
    assert command.main(argv) == 0
    said = "".join(capfd.readouterr())
    assert "chosen alpha" in said and "Checkpoint successfully" not in said  # -q: no Ray Train
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert steps > 1

    client = MlflowClient(tracking.mlflow_uri(out))
    exp = client.get_experiment_by_name("mtmg-patch")
    (run,) = client.search_runs([exp.experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["lr"] == "0.003" and run.data.params["model"] == "mtmg-tiny-vit"
    loss = client.get_metric_history(rid, "train/loss")
    assert [m.step for m in sorted(loss, key=lambda m: m.step)] == list(range(1, steps + 1))
    lr = sorted(client.get_metric_history(rid, "train/lr"), key=lambda m: m.step)
    assert lr[0].value == pytest.approx(3e-3 / 2)  # the warm-up's first step
    assert [m.value for m in client.get_metric_history(rid, "epoch/train_loss")] == [
        pytest.approx(summary["final_train_loss"], rel=1.0)
    ]
    curve = client.get_metric_history(rid, "alpha_curve/supported")
    assert sorted(m.step for m in curve) == [0, 50, 100]
    assert run.data.metrics["alpha"] == summary["alpha"]
    artifacts = {a.path for a in client.list_artifacts(rid)}
    assert {"config.json", "test.json", "metrics.json"} <= artifacts

    ea = _scalars(out / "tensorboard")
    tb_loss = {e.step: e.value for e in ea.Scalars("train/loss")}
    assert tb_loss == pytest.approx({m.step: m.value for m in loss}, rel=1e-6)
    assert [e.step for e in ea.Scalars("alpha_curve/patching")] == [0, 50, 100]
    config_text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| lr | 0.003 |" in config_text

    wandb_runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 3  # driver start, worker, driver end: one W&B run id
    assert len({p.name.split("-")[-1] for p in wandb_runs if not p.name.endswith("-1")}) == 1
    table = json.loads(next((out / "wandb").rglob("test_*.table.json")).read_text())
    assert len(table["data"]) == len(summary["test"])


def test_unknown_backend_and_missing_package_fail_before_anything_runs(
    shards, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "bad"
    assert command.main(_patch_argv(shards, out, "--report-to", "tensorbored")) == 2
    assert "--report-to 'tensorbored': unknown backend" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    assert command.main(_patch_argv(shards, out, "--report-to", "wandb")) == 2
    err = capsys.readouterr().err
    assert "pip install 'mtmg[tracking]'" in err and "pip install wandb" in err
    assert not out.exists()


def test_a_sweep_tracks_one_run_per_trial_under_one_experiment(shards, tmp_path):
    out = tmp_path / "sweep"
    argv = [
        *("--data", str(shards / "ben-s"), "--out", str(out), "--cache-dir", str(shards / "cache")),
        *("--model", "mtmg-tiny-vit", "--pretrained", "none", "--epochs", "2"),
        *("--align", f"student_args={STUDENT}", "student_size=32", "batch_size=16"),
        *("--align", "warmup-steps=2", "loader_workers=1", "--w-txt", "0", "0.05"),
        *("--report-to", "mlflow,tensorboard", "-q"),
    ]
    assert loss_sweep.main(argv) == 0
    client = MlflowClient(tracking.mlflow_uri(out))
    exp = client.get_experiment_by_name(f"mtmg-{loss_sweep.NAME}")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    assert sorted(r.data.params["w_txt"] for r in runs) == ["0.0", "0.05"]
    for r in runs:
        assert r.data.tags["mtmg.sweep"] == loss_sweep.NAME and r.info.status == "FINISHED"
        val = client.get_metric_history(r.info.run_id, "val_zeroshot")
        assert sorted(m.step for m in val) == [1, 2, 3]  # two epochs, then the final report
        assert "test_zeroshot" in r.data.metrics
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert len({e.parent for e in events}) == 2  # one TensorBoard run per trial
    ea = _scalars(events[0].parent)
    assert len(ea.Scalars("ray/tune/val_zeroshot")) == 3


def test_pretraining_reports_each_step_and_its_zero_shot_accuracy(tmp_path):
    from mtmg.stages.pretrain import command as pretrain

    out = tmp_path / "clip"
    argv = ["--out", str(out), "--model", "mtmg-tiny-vit", "--steps", "6", "-q"]
    argv += ["--images-per-class", "4", "--images-per-word", "2", "--eval-per-class", "2"]
    assert pretrain.main([*argv, "--report-to", "tensorboard"]) == 0
    ea = _scalars(out / "tensorboard")
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(6))
    assert ea.Scalars("train/lr")[0].value > 0
    result = json.loads((out / "pretrain.json").read_text())
    (acc,) = ea.Scalars("test/zeroshot_top1")
    assert acc.value == pytest.approx(result["zeroshot_top1"]) and acc.step == 6
