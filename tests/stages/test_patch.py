"""Stage 1 (PAINT patching) end to end on generated shards with a tiny CLIP, on CPU. One file
for the one stage: its tests share the module's generated shards and finished runs (the costly
part; split up, each file would generate and fine-tune them again)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from mtmg import faults, prep, rundir, synth
from mtmg.data import labels, loader
from mtmg.engine import evaluate, loop
from mtmg.engine.context import WorkerContext
from mtmg.models import clip, heads, weights
from mtmg.stages import skeleton
from mtmg.stages.patch import alpha as patch_alpha
from mtmg.stages.patch import command
from mtmg.stages.patch import driver as patch
from mtmg.stages.patch.loop import epoch_batches, tasks

from conftest import REPO

TINY = dict(
    model="mtmg-tiny-vit",
    pretrained=None,
    lr=3e-3,
    warmup_steps=3,
    batch_size=16,
    eval_batch_size=64,
    alphas=(0.0, 0.5, 1.0),
    loader_workers=1,
)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, ray_session):
    """BigEarthNet (multi-label), an image folder (the supported task), EuroSAT-MS (single-label,
    a second patching set for joint patching)."""
    root = tmp_path_factory.mktemp("patchdata")
    synth.make_bigearthnet(root / "ben", n_patches=96, s1=False, seed=21)
    synth.make_imagefolder(root / "img", n_per_class=12, size=32)
    synth.make_eurosat_ms(root / "ems", n_per_class=8, size=32, seed=22)
    for kind, raw in (("bigearthnet", "ben"), ("imagefolder", "img"), ("eurosat-ms", "ems")):
        prep.shard(
            prep.ShardConfig(
                kind, str(root / raw), str(root / f"{raw}-shards"), shard_size=20, progress=False
            )
        )
    return str(root / "ben-shards"), str(root / "img-shards"), str(root / "ems-shards")


def _cfg(sets, out, **kw):
    cache = str(out.parent / "cache")
    return patch.PatchConfig(
        data=sets[0], supported=(sets[1],), out=str(out), cache_dir=cache, **{**TINY, **kw}
    )


def _test_metric(cfg, out: Path, path: str, theta: dict) -> float:
    """The main test metric of `path` with the image tower set to `theta`, evaluated here
    without Ray, with the text tower from the exported checkpoint (never fine-tuned)."""
    model = open_clip.create_model(cfg.model, pretrained=str(out / "patched.safetensors")).eval()
    ds = loader.ShardSet.open(path)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    head = heads.ZeroShotHead.from_weights(
        heads.build_zeroshot_weights(model, tokenizer, ds.prompt_names(), ds.manifest["templates"])
    )
    size = model.visual.image_size[0]
    dec = loader.Decoder(
        tuple(ds.manifest["bands"]),
        ds.manifest["modality"],
        "rgb",
        loader.Targets.of(ds),
        size,
        size,
    )
    weights.load_image_state(model, theta)
    batches = loader.make_loader(ds, "test", dec, batch_size=64, train=False, num_workers=0)
    m = evaluate.classification(
        WorkerContext(), lambda b: head(model.visual(b["rgb"])), batches, ds.task
    )
    return m["mAP" if ds.task == "multi-label" else "top1"]


def test_patching_end_to_end(sets, tmp_path):
    ben = sets[0]
    cfg = _cfg(sets, tmp_path / "run", epochs=8, eval_data=(f"{ben}:ben5", f"{ben}:ben43"))
    summary = patch.run(cfg)
    out = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.parquet",
        "metrics.csv",
        "per_class.parquet",
        "alpha_curve.png",
        "patched.safetensors",
        "theta_zs.safetensors",
        "theta_ft.safetensors",
        "summary.json",
    ):
        assert (out / name).exists(), name
    state = json.loads((out / "summary.json").read_text())
    assert state["alpha"] == summary["alpha"] in cfg.alphas

    table = pq.read_table(out / "metrics.parquet").to_pylist()
    rows = {
        (r["dataset"], r["split"], r["alpha"]): r["value"] for r in table if r["role"] != "eval"
    }
    _check_nomenclatures(table, pq.read_table(out / "per_class.parquet").to_pylist())
    # fine-tuning raises the patching metric on held-out data well above zero-shot
    assert rows[("bigearthnet", "test", 1.0)] > rows[("bigearthnet", "test", 0.0)] + 10

    # alpha = 0 reproduces zero-shot and alpha = 1 the fine-tuned weights, exactly
    zs = load_file(str(out / "theta_zs.safetensors"))
    ft = load_file(str(out / "theta_ft.safetensors"))
    for alpha, theta in ((0.0, zs), (1.0, ft)):
        value = _test_metric(cfg, out, sets[0], theta)
        assert value == pytest.approx(rows[("bigearthnet", "test", alpha)], abs=1e-9)

    # a rerun into the same --out with other options is refused: the old metrics stay put
    # and are never returned as the new run's
    before = (out / "metrics.parquet").read_bytes()
    with pytest.raises(rundir.RunDirError, match=r"--epochs 8 -> 2.*--lr 0.003 -> 0.001"):
        patch.run(dataclasses.replace(cfg, epochs=2, lr=1e-3))
    assert (out / "metrics.parquet").read_bytes() == before

    # the patched model is a full open_clip checkpoint that loads strictly
    model = open_clip.create_model(cfg.model, pretrained=str(out / "patched.safetensors"))
    want = weights.interpolate(zs, ft, state["alpha"])
    for k, v in weights.image_state(model).items():
        torch.testing.assert_close(v, want[k])


def _check_nomenclatures(table: list[dict], per_class: list[dict]) -> None:
    """BigEarthNet has test rows at alpha 0, chosen and 1 in ben19 (patching), ben5 and ben43
    (eval); every row's per-class AP rows, one per class, average to its mAP."""
    for nomen, role, classes in (
        ("ben19", "patching", labels.BEN19),
        ("ben5", "eval", labels.BEN5),
        ("ben43", "eval", labels.BEN43),
    ):
        test = [r for r in table if r["nomenclature"] == nomen and r["selected"] is not None]
        assert {r["role"] for r in test} == {role} and {r["alpha"] for r in test} >= {0.0, 1.0}
        for r in test:
            got = [
                c
                for c in per_class
                if (c["nomenclature"], c["alpha"], c["split"], c["role"])
                == (nomen, r["alpha"], r["split"], role)
            ]
            assert [c["class"] for c in got] == list(classes)
            assert {c["metric"] for c in got} == {"AP"} and sum(c["n"] for c in got) > 0
            values = [c["value"] for c in got if c["value"] is not None]
            assert all(0.0 <= v <= 100.0 for v in values)
            assert sum(values) / len(values) == pytest.approx(r["value"], abs=1e-9)
    ben5 = {r["alpha"]: r["value"] for r in table if r["nomenclature"] == "ben5" and r["selected"]}
    ben43 = {
        r["alpha"]: r["value"] for r in table if r["nomenclature"] == "ben43" and r["selected"]
    }
    assert ben5.keys() == ben43.keys() and ben5 != ben43


def test_training_loss_falls_and_resume_continues_the_step_count(sets, tmp_path, monkeypatch):
    cfg = _cfg(sets, tmp_path / "run", epochs=2, alphas=(0.0, 1.0))
    ds = loader.ShardSet.open(sets[0])
    steps = loop.train_steps(ds, cfg.batch_size, cfg.epochs, cfg.seed, 1)
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(faults.ENV, f"fail_step={marker}@{steps[0] + 2}")
    summary = patch.run(cfg)
    assert marker.exists()  # the worker really died in epoch 2 and Ray Train restarted it
    assert summary["steps"] == sum(steps)  # resumed from the epoch-1 checkpoint, not from 0
    ckpts = sorted(
        p for p in (tmp_path / "run" / "ray" / "patch").glob("checkpoint_*") if p.is_dir()
    )
    losses = json.loads((ckpts[-1] / "state.json").read_text())["losses"]
    assert [s for s, _ in losses] == list(range(1, sum(steps) + 1))
    first, last = losses[: len(losses) // 4], losses[-len(losses) // 4 :]
    assert sum(v for _, v in last) / len(last) < 0.8 * sum(v for _, v in first) / len(first)


def test_joint_patching_trains_both_sets_and_resumes(sets, tmp_path, monkeypatch):
    """PAINT's joint patching of a multi-label and a single-label set, through a worker failure:
    both patching metrics rise on held-out data, alpha is chosen with the mean of both."""
    cfg = _cfg(sets, tmp_path / "run", joint_data=(sets[2],), epochs=8)
    per_set = [
        loop.train_steps(loader.ShardSet.open(p), cfg.batch_size // 2, cfg.epochs, cfg.seed, 1)
        for p in cfg.patching
    ]
    steps = [max(s) for s in zip(*per_set, strict=True)]  # an epoch: the longest set's steps
    assert per_set[0] != per_set[1]  # so one set starts over within an epoch
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(faults.ENV, f"fail_step={marker}@{steps[0] + 2}")
    summary = patch.run(cfg)
    out = tmp_path / "run"
    assert marker.exists() and summary["steps"] == sum(steps)  # resumed after epoch 1
    ckpts = sorted(p for p in (out / "ray" / "patch").glob("checkpoint_*") if p.is_dir())
    losses = json.loads((ckpts[-1] / "state.json").read_text())["losses"]
    assert [s for s, _ in losses] == list(range(1, sum(steps) + 1))
    assert summary["patching"] == [str(Path(p).resolve()) for p in cfg.patching]
    assert all(len(e["train_loss_sets"]) == 2 for e in summary["epochs"])

    table = pq.read_table(out / "metrics.parquet").to_pylist()
    rows = {(r["dataset"], r["split"], r["alpha"]): r["value"] for r in table}
    roles = {r["dataset"]: r["role"] for r in table}
    assert roles == {
        "bigearthnet": "patching",
        "eurosat-ms": "patching",
        "imagefolder": "supported",
    }
    for name in ("bigearthnet", "eurosat-ms"):  # held-out: both patching tasks improve
        assert rows[(name, "test", 1.0)] > rows[(name, "test", 0.0)] + 2, name

    def score(a: float) -> float:  # PAINT's rule, the patching metric the mean of both sets
        patching = (rows[("bigearthnet", "val", a)] + rows[("eurosat-ms", "val", a)]) / 2
        return (patching + rows[("imagefolder", "val", a)]) / 2

    assert summary["alpha"] == max(cfg.alphas, key=lambda a: (score(a), -a))
    zs = load_file(str(out / "theta_zs.safetensors"))
    for path, name in ((sets[0], "bigearthnet"), (sets[2], "eurosat-ms")):  # alpha 0: zero-shot
        assert _test_metric(cfg, out, path, zs) == pytest.approx(rows[(name, "test", 0.0)])


def test_joint_batches_are_the_same_on_every_rank(sets, tmp_path):
    """DDP: every rank runs the longest set's steps, one batch of each set per step, and the
    ranks read disjoint samples; the shorter set starts over within the epoch."""
    cfg = _cfg(sets, tmp_path / "run", joint_data=(sets[2],), epochs=2, loader_workers=0)
    bundle = clip.load_clip(cfg.model)
    patching = [(loader.ShardSet.open(p), None) for p in cfg.patching]
    keys = []
    for rank in (0, 1):
        ctx = WorkerContext(rank=rank, world=2)
        task_list = tasks(cfg, ctx, bundle, patching)
        steps = [t.steps[1] for t in task_list]  # epoch 1: the sets' steps differ there
        batches = list(epoch_batches(cfg, ctx, task_list, 1))
        # the longest set's steps, so the shorter set gave more batches than one pass has
        assert len(batches) == max(steps) and min(steps) < max(steps)
        assert {len(b["__key__"]) for step in batches for b in step} == {16 // 2 // 2}
        first = [batches[:s] for s in steps]  # each set's first pass
        keys.append([[k for step in f for k in step[i]["__key__"]] for i, f in enumerate(first)])
    for i in range(2):
        assert keys[0][i] and not set(keys[0][i]) & set(keys[1][i])


def test_a_set_in_three_nomenclatures_is_decoded_and_run_once(sets, tmp_path, monkeypatch):
    """BigEarthNet in ben19 (patching), ben5 and ben43 (eval): its test split is decoded once
    for every nomenclature and alpha, and each row is what scoring that nomenclature alone
    gives (its own decoding, its own pass)."""
    ben = sets[0]
    cfg = _cfg(sets, tmp_path / "run", eval_data=(f"{ben}:ben5", f"{ben}:ben43"), loader_workers=0)
    bundle, all_sets = patch.resolve_inputs(cfg)
    head_weights = patch.build_heads(cfg, bundle, all_sets)
    zs = weights.image_state(bundle.model)
    gen = torch.Generator().manual_seed(0)
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in zs.items()}
    decoded, eval_loader = [], skeleton.eval_loader

    def counted(cfg, ctx, ds, split, dec):
        decoded.append((ds.name, split))
        return eval_loader(cfg, ctx, ds, split, dec)

    monkeypatch.setattr(skeleton, "eval_loader", counted)
    ctx = WorkerContext()
    ev = patch_alpha._Evaluator(cfg, ctx, bundle, zs, ft, head_weights, all_sets)
    jobs = [(i, "test") for i in range(len(all_sets))]
    for a in (0.5, 1.0):
        rows = ev.rows(a, jobs)
        assert [(r["role"], r["nomenclature"]) for r in rows] == [
            ("patching", "ben19"),
            ("supported", "imagefolder"),
            ("eval", "ben5"),
            ("eval", "ben43"),
        ]
        for (role, path, nomen), w, row in zip(all_sets, head_weights, rows, strict=True):
            ds = loader.ShardSet.open(path)
            dec = loader.Decoder.of(
                ds,
                "rgb",
                loader.Targets.of(ds, nomen),
                bundle.image_size,
                mean=bundle.mean,
                std=bundle.std,
            )
            head = heads.ZeroShotHead.from_weights(w)
            m = evaluate.classification(
                ctx,
                lambda b, h=head: h(ev.visual(b["rgb"])),
                eval_loader(cfg, ctx, ds, "test", dec),
                ds.task,
            )
            assert (row["path"], row["role"], row["n"]) == (path, role, m["n"])
            assert row["value"] == m[row["metric"]]
            assert row["per_class"] == evaluate.class_values(ds.classes(nomen), m)
    assert decoded == [("bigearthnet", "test"), ("imagefolder", "test")]
    assert list(patch.tracked_test(rows)) == [
        "test/patching/bigearthnet/mAP",
        "test/supported/imagefolder/top1",
        "test/eval/bigearthnet:ben5/mAP",
        "test/eval/bigearthnet:ben43/mAP",
    ]


def test_two_ddp_workers_evaluate_like_one(sets, tmp_path):
    one = patch.run(_cfg(sets, tmp_path / "w1", epochs=0, workers=1))
    two = patch.run(_cfg(sets, tmp_path / "w2", epochs=0, workers=2))
    r1 = pq.read_table(tmp_path / "w1" / "metrics.parquet").to_pylist()
    r2 = pq.read_table(tmp_path / "w2" / "metrics.parquet").to_pylist()
    assert len(r1) == len(r2) > 0
    for a, b in zip(r1, r2, strict=True):
        same = ("dataset", "split", "alpha", "n")
        assert [a[k] for k in same] == [b[k] for k in same]
        assert a["value"] == pytest.approx(b["value"], abs=1e-6)
    assert one["alpha"] == two["alpha"]


def test_bad_input_fails_before_training(sets, tmp_path, capsys):
    base = [
        "--data",
        sets[0],
        "--out",
        str(tmp_path / "o"),
        "--model",
        "mtmg-tiny-vit",
        "--pretrained",
        "none",
    ]
    assert command.main([*base[:1], str(tmp_path / "nowhere"), *base[2:]]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
    assert command.main([*base, "--model", "ViT-Q-99"]) == 2
    assert "ViT-Q-99" in capsys.readouterr().err
    other = tmp_path / "small.safetensors"
    weights.save_checkpoint(clip.load_clip("mtmg-small-vit").model, other)
    assert command.main([*base[:-1], str(other)]) == 2
    assert str(other) in capsys.readouterr().err
    assert command.main([*base, "--batch-size", "4096"]) == 2  # more than the train split
    assert "less than one batch of 4096; lower --batch-size" in capsys.readouterr().err
    assert not (tmp_path / "o" / "ray").exists()


def test_dataset_without_a_needed_split(sets, tmp_path, capsys):
    raw = tmp_path / "raw"
    synth.make_imagefolder(raw, n_per_class=3, size=32)
    (raw / "train.txt").write_text("\n".join(p.stem for p in sorted(raw.rglob("*.png"))[:9]))
    prep.shard(prep.ShardConfig("imagefolder", str(raw), str(tmp_path / "s"), progress=False))
    argv = [
        "--data",
        sets[0],
        "--supported",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "o"),
        "--model",
        "mtmg-tiny-vit",
        "--pretrained",
        "none",
    ]
    rc = command.main(argv)
    assert rc == 2 and "has no 'val' split" in capsys.readouterr().err


def test_vit_b_32_smoke_without_ray(sets, tmp_path):
    """The real ViT-B-32 architecture (random weights), a few steps, in a plain process."""
    small = tmp_path / "small"
    raw = str(Path(sets[0]).parent / "ben")
    prep.shard(prep.ShardConfig("bigearthnet", raw, str(small), limit=8, progress=False))
    cfg = patch.PatchConfig(
        data=str(small),
        out=str(tmp_path / "o"),
        model="ViT-B-32",
        pretrained=None,
        batch_size=4,
        epochs=1,
        warmup_steps=1,
        alphas=(0.0, 1.0),
        loader_workers=0,
        eval_batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )
    bundle, sets_ = patch.resolve_inputs(cfg)
    assert bundle.image_size == 224
    zs = weights.image_state(bundle.model)
    conf = {
        "cfg": dataclasses.asdict(cfg),
        "zeroshot": bundle.model.state_dict(),
        "heads": patch.build_heads(cfg, bundle, sets_),
        "sets": sets_,
    }
    res = patch.worker(conf)
    assert res["step"] == 2 and len(res["losses"]) == 2
    assert any(not torch.equal(v, zs[k]) for k, v in res["theta_ft"].items())  # it trained
    assert {r["alpha"] for r in res["rows"]} == {0.0, 1.0} and res["alpha"] in (0.0, 1.0)


def test_joint_patching_bad_input(sets, tmp_path, capsys):
    """A joint patching set without a val split fails before training, naming that set; so do
    --data given twice (argparse would keep only the last) and a set given twice."""
    raw = tmp_path / "raw"
    synth.make_imagefolder(raw, n_per_class=3, size=32)
    (raw / "train.txt").write_text("\n".join(p.stem for p in sorted(raw.rglob("*.png"))[:9]))
    noval = str(tmp_path / "noval")
    prep.shard(prep.ShardConfig("imagefolder", str(raw), noval, progress=False))
    base = ["--out", str(tmp_path / "o"), "--model", "mtmg-tiny-vit", "--pretrained", "none"]
    assert command.main(["--data", sets[0], "--joint-data", sets[2], noval, *base]) == 2
    assert f"{noval}: the patching dataset has no 'val' split" in capsys.readouterr().err
    assert command.main(["--data", sets[0], "--data", sets[2], *base]) == 2
    assert "--joint-data" in capsys.readouterr().err
    assert command.main(["--data", sets[0], "--joint-data", sets[0], *base]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "o" / "ray").exists()


def test_help_lists_every_option(cli):
    r = cli["patch --help"]
    assert r.returncode == 0
    for opt in (
        "--data",
        "--joint-data",
        "--supported",
        "--lr",
        "--weight-decay",
        "--warmup-steps",
        "--epochs",
        "--batch-size",
        "--grad-clip",
        "--augment",
        "--precision",
        "--alphas",
        "--selection",
        "--workers",
        "--cluster",
        "--model-config",
    ):
        assert opt in r.stdout


def test_ctrl_c_ends_with_a_resume_hint(sets, tmp_path):
    """Ctrl-C during the Ray Train job: exit 130 and how to continue, not a bare exit 1."""
    out = tmp_path / "interrupted"
    argv = [
        sys.executable,
        "-m",
        "mtmg.patch",
        "--data",
        sets[0],
        "--out",
        str(out),
        "--model",
        TINY["model"],
        "--pretrained",
        "none",
        "--epochs",
        "50",
        "--batch-size",
        "16",
        "--loader-workers",
        "1",
    ]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (out / "ray" / "patch").exists() and time.time() < deadline:  # the job started
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: run the same command again to resume" in err
    assert "Traceback" not in err


def test_a_missing_cluster_is_an_error_not_a_traceback(sets, tmp_path):
    """--cluster with nothing listening: one `error:` line (exit 2) within seconds, as in every
    command, and no --out left behind."""
    out = tmp_path / "nocluster"
    argv = [
        sys.executable,
        "-m",
        "mtmg.patch",
        "--data",
        sets[0],
        "--out",
        str(out),
        "--model",
        TINY["model"],
        "--pretrained",
        "none",
        "--batch-size",
        "16",
        "--cluster",
    ]
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}  # the discard port: nothing listens
    r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: --cluster: no Ray cluster found at 127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
