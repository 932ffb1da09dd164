"""Stage 2 (cross-modal alignment) on generated shards with tiny models, on CPU.

One file for the one stage: its tests share the module's generated shards and the patched
teacher they align to (the costly part); the loss, scoring and student pieces are tested here
through the stage because they have no job outside it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import timm
import torch
import torch.nn.functional as F

from mtmg import config, faults, prep, rundir, synth
from mtmg.data import labels, loader, shards
from mtmg.engine import loop
from mtmg.models import clip, heads, student
from mtmg.stages.align import driver as align
from mtmg.stages.align import loss
from mtmg.stages.align.loop import AUGMENT
from mtmg.stages.patch import driver as patch
from mtmg.stages.pretrain import driver as pretrain

from conftest import REPO

TINY_STUDENT = json.dumps({"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8})
TINY = dict(
    student="vit_small_patch16_224",
    student_args=TINY_STUDENT,
    student_size=32,
    lr=1e-3,
    warmup_steps=20,
    batch_size=8,
    eval_batch_size=64,
    loader_workers=1,
)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, ray_session):
    """BigEarthNet (with S1) and EuroSAT-MS shards, and a finished tiny patching run."""
    root = tmp_path_factory.mktemp("aligndata")
    synth.make_bigearthnet(root / "ben", n_patches=240, s1=True, seed=31)
    synth.make_eurosat_ms(root / "ems", n_per_class=6, seed=32)
    synth.make_imagefolder(root / "img", n_per_class=4, size=32)
    for kind, raw, extra in (
        ("bigearthnet", "ben", {"s1": str(root / "ben")}),
        ("eurosat-ms", "ems", {}),
        ("imagefolder", "img", {}),
    ):
        prep.shard(
            prep.ShardConfig(
                kind,
                str(root / raw),
                str(root / f"{raw}-shards"),
                shard_size=20,
                progress=False,
                **extra,
            )
        )
    # the teacher: a tiny CLIP that is really zero-shot capable (mtmg.pretrain), then patched
    # (the shapes-only tiny CLIP: its quick patching gives the well-spread teacher embeddings
    # that retrieval over 48 test patches needs in the 40-epoch run below)
    pretrained = pretrain.pretrain(
        pretrain.PretrainConfig(
            out=str(root / "clip"), model="mtmg-tiny-vit", words=(), progress=False
        )
    )
    teacher = root / "patch-run"
    patch.run(
        patch.PatchConfig(
            data=str(root / "ben-shards"),
            out=str(teacher),
            model="mtmg-tiny-vit",
            pretrained=str(pretrained),
            lr=1e-3,
            warmup_steps=5,
            batch_size=16,
            epochs=6,
            alphas=(0.0, 0.5, 1.0),
            augment=False,  # six epochs of a tiny model: colour jitter would only slow it
            loader_workers=1,
            cache_dir=str(root / "cache"),
        )
    )
    return {
        "ben": str(root / "ben-shards"),
        "ems": str(root / "ems-shards"),
        "img": str(root / "img-shards"),
        "teacher": str(teacher),
        "cache": str(root / "cache"),
    }


def _cfg(sets, out, **kw) -> align.AlignConfig:
    base = dict(data=sets["ben"], out=str(out), teacher=sets["teacher"], cache_dir=sets["cache"])
    return align.AlignConfig(**{**base, **TINY, **kw})


def _value(rows, **match):
    got = [r["value"] for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(got) == 1, (match, got)
    return got[0]


def test_alignment_end_to_end_with_a_worker_failure(sets, tmp_path, monkeypatch):
    """Through Ray Train: losses fall, the student lands near the teacher, evaluation numbers,
    outputs; a worker killed mid-run resumes from the epoch checkpoint."""
    marker = tmp_path / "failed-once"
    cfg = _cfg(sets, tmp_path / "run", epochs=12, eval_data=(sets["ems"],), eval_every=6)
    steps = loop.train_steps(loader.ShardSet.open(sets["ben"]), cfg.batch_size, 1, 0, 1)[0]
    monkeypatch.setenv(faults.ENV, f"fail_step={marker}@{3 * steps + 2}")
    summary = align.run(cfg)
    out = tmp_path / "run"
    assert marker.exists()  # the failure happened, and the run still finished
    for name in (
        "config.yaml",
        "metrics.parquet",
        "metrics.csv",
        "loss_curves.png",
        "student.safetensors",
        "student.json",
        "summary.json",
    ):
        assert (out / name).exists(), name
    losses = json.loads((out / "summary.json").read_text())["epochs"]
    assert [e["epoch"] for e in losses] == list(range(1, 13))  # resumed, not restarted
    assert losses[-1]["step"] == summary["steps"] == 12 * steps
    assert losses[-1]["train_loss"] < 0.8 * losses[0]["train_loss"]

    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    split = "test"
    cos0 = _value(rows, dataset="bigearthnet", split=split, epoch=0, metric="cosine")
    cos1 = _value(rows, dataset="bigearthnet", split=split, epoch=12, metric="cosine")
    assert cos1 > cos0 + 0.4, (cos0, cos1)
    zs0, zs1 = (
        _value(rows, dataset="bigearthnet", split=split, epoch=e, encoder="student", metric="mAP")
        for e in (0, 12)
    )
    assert zs1 > zs0, (zs0, zs1)
    # every evaluation dataset gets zero-shot (student and teacher), cosine and Recall@K rows
    for ds, main in (("bigearthnet", "mAP"), ("eurosat-ms", "top1")):
        got = {
            (r["encoder"], r["metric"])
            for r in rows
            if r["dataset"] == ds and r["epoch"] == 12 and r["split"] != "val"
        }
        want = {("student", main), ("teacher", main), ("student", "cosine")}
        want |= {("student", f"R@{k} {d}") for k in cfg.recall_ks for d in ("ms->rgb", "rgb->ms")}
        assert got == want, ds
    # validation every 6 epochs (and the untrained student at epoch 0)
    assert {r["epoch"] for r in rows if r["split"] == "val"} == {0, 6, 12}
    # a rerun into this --out without the evaluation set is another run: refused, not resumed
    with pytest.raises(rundir.RunDirError, match="--eval-data"):
        align.run(dataclasses.replace(cfg, eval_data=()))

    # the saved student loads back and reproduces the embeddings behind the metrics
    enc = student.load_student(out)
    assert enc.spec.in_chans == 13 and enc.meta["teacher"]["dir"] == sets["teacher"]
    ds = loader.ShardSet.open(sets["ben"])
    teacher = clip.load_clip("mtmg-tiny-vit", f"{sets['teacher']}/patched.safetensors")
    dec = loader.Decoder(
        tuple(ds.manifest["bands"]),
        ds.manifest["modality"],
        "rgb+ms",
        loader.Targets.of(ds),
        teacher.image_size,
        32,
        teacher.mean,
        teacher.std,
    )
    batch = next(
        iter(loader.make_loader(ds, split, dec, batch_size=512, train=False, num_workers=0))
    )
    with torch.no_grad():
        cos = F.cosine_similarity(enc.encode(batch["ms"]), teacher.model.visual(batch["rgb"]))
    assert float(cos.mean()) == pytest.approx(cos1, abs=1e-4)
    # preprocess() of a stored patch gives the loader's input
    raw = next(shards.iter_samples(sets["ben"], split))
    x = enc.preprocess(raw["ms.npy"], ds.manifest["bands"])
    assert torch.allclose(x, batch["ms"][batch["__key__"].index(raw["__key__"])], atol=1e-6)


def _plain_run(sets, tmp_path, tracking_to=None, **kw) -> dict:
    """The worker loop in this process (no Ray): what the tests of loss terms need; tracked
    where `tracking_to` (a `mtmg.tracking.Destination`) says."""
    kw = {"epochs": 1, "eval_init": False, "eval_every": 0, **kw}
    cfg = _cfg(sets, tmp_path / "plain", **kw)
    datasets = align.resolve_inputs(cfg)
    name, pretrained, mc = align.resolve_teacher(cfg)
    tb = clip.load_clip(name, pretrained, model_config=mc)
    hw = heads.dataset_heads(
        tb, name, [(loader.ShardSet.open(p), n) for p, n in datasets], cfg.cache_dir
    )
    net, _ = align.build_student(cfg, hw[0].shape[1])
    conf = {
        "cfg": dataclasses.asdict(cfg),
        "teacher": {"model": name, "config": mc},
        "teacher_visual": tb.model.visual.state_dict(),
        "spec": net.spec.to_json(),
        "student_init": net.state_dict(),
        "heads": hw,
        "sets": datasets,
        "tracking": tracking_to,
    }
    return align.worker(conf)


def test_student_lands_in_clip_space(sets, tmp_path):
    """Enough steps (cheap without Ray): zero-shot and retrieval far above the untrained student
    and chance, through the patched teacher's embedding space."""
    cfg = dict(epochs=40, batch_size=16, augment=False, drop_path=0.0, eval_init=True)
    rows = _plain_run(sets, tmp_path, **cfg)["rows"]
    test = {(r["epoch"], r["encoder"], r["metric"]): r for r in rows if r["split"] == "test"}
    n = test[(40, "student", "cosine")]["n"]
    assert test[(40, "student", "cosine")]["value"] > 0.8
    assert test[(40, "student", "mAP")]["value"] > test[(0, "student", "mAP")]["value"] + 3
    for direction in ("ms->rgb", "rgb->ms"):
        r1 = test[(40, "student", f"R@1 {direction}")]["value"]
        assert r1 > 3 * 100 / n, (direction, r1, n)
        r10 = test[(40, "student", f"R@10 {direction}")]["value"]
        assert r10 > test[(0, "student", f"R@10 {direction}")]["value"] + 15, direction


@pytest.mark.parametrize("weights", [{"w_txt": 0.0}, {"w_img": 0.0}, {"w_kd": 0.5}])
def test_a_zero_weight_removes_its_term(sets, tmp_path, weights):
    """Each part of the loss, in the run's losses and in its tracked steps (TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtmg import tracking

    dest = tracking.Destination(("tensorboard",), str(tmp_path / "tracked"), "align")
    losses = _plain_run(sets, tmp_path, tracking_to=dest, **weights)["losses"]
    w = {"img": 1.0, "txt": 0.05, "kd": 0.0, **{k[2:]: v for k, v in weights.items()}}
    ea = EventAccumulator(str(dest.tensorboard_dir), size_guidance={"scalars": 0})
    ea.Reload()
    for part in ("img", "txt", "kd"):
        tag = f"train/loss_{part}"
        assert (tag in ea.Tags()["scalars"]) == bool(w[part]), tag
        tracked = {e.step: e.value for e in ea.Scalars(tag)} if w[part] else {}
        assert tracked == pytest.approx({r["step"]: r[part] for r in losses if w[part]}, rel=1e-6)
    for r in losses:
        for part in ("img", "txt", "kd"):
            assert (r[part] is None) == (w[part] == 0), (part, r)
        total = sum(w[p] * r[p] for p in ("img", "txt", "kd") if r[p] is not None)
        assert r["loss"] == pytest.approx(total, rel=1e-5)


def test_defaults_are_the_paper_codes():
    """Read from the resolved config: grad clip 1.0, drop path 0.2 (deepest block), and the
    crop-only augmentation that acts on both views alike."""
    cfg = align.AlignConfig(data="d", out="o")
    resolved = config.to_dict(cfg)
    assert resolved["grad_clip"] == 1.0 and resolved["drop_path"] == 0.2 and resolved["augment"]
    aug = AUGMENT
    assert (aug.scale, aug.flips, aug.color) == ((0.9, 1.0), False, False)
    net, _ = align.build_student(dataclasses.replace(cfg, student_args=TINY_STUDENT), 32)
    rates = [m.drop_prob for m in net.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)
    off, _ = align.build_student(
        dataclasses.replace(cfg, student_args=TINY_STUDENT, drop_path=0.0), 32
    )
    assert not [m for m in off.modules() if type(m).__name__ == "DropPath"]


def test_distances_and_kd_by_hand():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 5.0], [2.0, 0.0]])
    assert loss.distance(s, t, "mse").item() == pytest.approx((9 + 1 + 1 + 0) / 4)
    # normalised: [.6,.8] vs [0,1] and [1,0] vs [1,0]
    assert loss.distance(s, t, "mse-norm").item() == pytest.approx((0.36 + 0.04) / 4)
    assert loss.distance(s, t, "cosine").item() == pytest.approx((1 - 0.8 + 0) / 2)
    # KL of identical logits is 0; of different ones, the textbook value
    a = torch.tensor([[2.0, 0.0]])
    assert loss.kd_loss(a, a, 2.0, False).item() == pytest.approx(0, abs=1e-7)
    assert loss.kd_loss(a, a, 1.0, True).item() == pytest.approx(0, abs=1e-7)
    p, q = torch.softmax(torch.tensor([0.0, 0.0]), 0), torch.softmax(torch.tensor([2.0, 0.0]), 0)
    want = float((p * (p / q).log()).sum())  # KL(teacher p || student q)
    assert loss.kd_loss(a, torch.zeros(1, 2), 1.0, False).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="unknown distance"):
        loss.distance(s, t, "l1")


def test_ssl4eo_checkpoints_bare_wrapped_and_refused(tmp_path):
    spec = student.StudentSpec(
        input="ms", img_size=32, embed_dim=32, timm_args=json.loads(TINY_STUDENT)
    )
    torch.manual_seed(1)
    # an SSL4EO-style checkpoint: a timm ViT on 13 bands at 224 px, with a classifier head
    ref = timm.create_model(
        "vit_small_patch16_224",
        in_chans=13,
        num_classes=10,
        **{**json.loads(TINY_STUDENT), "img_size": 64},
    )
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "bare.pth")
    torch.save(
        {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 99}, tmp_path / "wrapped.pth"
    )
    moco = {
        f"module.{enc}.{k}": v
        for enc in ("base_encoder", "momentum_encoder")
        for k, v in sd.items()
    }
    torch.save({"state_dict": moco, "epoch": 99}, tmp_path / "moco.pth")  # SSL4EO's own files
    for name in ("bare.pth", "wrapped.pth", "moco.pth"):
        net = student.build_student(spec)
        report = student.load_trunk(net, str(tmp_path / name))
        assert not report.missing and report.ignored == ["head.bias", "head.weight"]
        got = net.trunk.state_dict()
        assert torch.equal(got["blocks.1.mlp.fc2.weight"], sd["blocks.1.mlp.fc2.weight"])
        assert got["pos_embed"].shape[1] == 1 + 16  # resampled from 8x8 to the 4x4 grid
    # the trunk would stay uninitialised: refused, unless allowed
    torch.save({"model": {f"net.{k}": v for k, v in sd.items()}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="uninitialised.*allow-partial-init"):
        student.load_trunk(student.build_student(spec), str(tmp_path / "other.pth"))
    report = student.load_trunk(
        student.build_student(spec), str(tmp_path / "other.pth"), allow_partial=True
    )
    assert report.loaded == 0 and len(report.unexpected) == len(sd)
    # a checkpoint for another number of bands
    with pytest.raises(ValueError, match="takes 3 bands, the student 13"):
        student.load_trunk(student.build_student(spec), str(_rgb_checkpoint(tmp_path)))


def test_sentinel1_student(sets, tmp_path):
    result = _plain_run(sets, tmp_path, student_input="s1")
    assert result["student"]["trunk.patch_embed.proj.weight"].shape[1] == 2
    assert result["losses"][-1]["loss"] < result["losses"][0]["loss"]


def test_bad_input_fails_before_training(sets, tmp_path):
    def fails(match, **kw):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            align.run(_cfg(sets, tmp_path / "bad", **kw))

    fails("no patched.safetensors", teacher=str(tmp_path))
    fails("no multispectral bands", data=sets["img"])
    fails("no multispectral bands", eval_data=(sets["img"],))
    fails("no Sentinel-1 bands", eval_data=(sets["ems"],), student_input="s1")
    fails("takes 3 bands", student_init=str(_rgb_checkpoint(tmp_path)))
    fails("all 0", w_img=0.0, w_txt=0.0)
    fails("unknown timm model", student="vit_nonexistent")
    fails("less than one batch of 4096", batch_size=4096)
    assert not (tmp_path / "bad" / "ray").exists()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtmg.align",
            "--data",
            sets["img"],
            "--out",
            str(tmp_path / "x"),
            "--teacher",
            sets["teacher"],
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2 and "no multispectral bands" in r.stderr and "img-shards" in r.stderr


def _rgb_checkpoint(tmp_path):
    path = tmp_path / "rgb-init.pth"
    torch.save(
        timm.create_model(
            "vit_small_patch16_224",
            in_chans=3,
            num_classes=0,
            img_size=32,
            **json.loads(TINY_STUDENT),
        ).state_dict(),
        path,
    )
    return path


def test_help_lists_every_option(cli):
    r = cli["align --help"]
    assert r.returncode == 0
    for f in dataclasses.fields(align.AlignConfig):
        assert "--" + f.name.replace("_", "-") in r.stdout, f.name


def test_report_from_a_patch_and_an_align_run(sets, tmp_path):
    """`python -m mtmg.report` assembles the paper-style table from finished run dirs."""
    run = tmp_path / "align"
    ben = sets["ben"]
    align.run(_cfg(sets, run, epochs=2, eval_every=0, eval_data=(f"{ben}:ben5", f"{ben}:ben43")))
    # the student's (and the teacher's) zero-shot rows per nomenclature, with per-class AP;
    # cosine and Recall@K once per set, in no nomenclature
    rows = pq.read_table(run / "metrics.parquet").to_pylist()
    final = [r for r in rows if r["epoch"] == 2 and r["split"] == "test"]
    zs = {(r["encoder"], r["nomenclature"]): r["value"] for r in final if r["metric"] == "mAP"}
    assert zs.keys() == {(e, n) for e in ("student", "teacher") for n in ("ben19", "ben5", "ben43")}
    assert len({zs[("student", n)] for n in ("ben19", "ben5", "ben43")}) == 3
    assert {r["nomenclature"] for r in final if r["metric"] == "cosine"} == {None}
    assert len([r for r in final if r["metric"] == "R@1 ms->rgb"]) == 1
    per_class = pq.read_table(run / "per_class.parquet").to_pylist()
    five = [
        c
        for c in per_class
        if (c["epoch"], c["split"], c["encoder"], c["nomenclature"])
        == (2, "test", "student", "ben5")
    ]
    assert [c["class"] for c in five] == list(labels.BEN5)
    values = [c["value"] for c in five if c["value"] is not None]
    assert sum(values) / len(values) == pytest.approx(zs[("student", "ben5")], abs=1e-9)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtmg.report",
            sets["teacher"],
            str(run),
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    models_ = {row["model"] for row in summary["rows"]}
    aligned = json.loads((run / "summary.json").read_text())
    assert {"zero-shot CLIP", "aligned MS encoder", "untrained MS encoder"} <= models_
    chosen = json.loads(open(f"{sets['teacher']}/summary.json").read())
    assert f"patched CLIP (alpha={chosen['alpha']:g})" in models_
    # the numbers are the runs' own
    patch_rows = pq.read_table(f"{sets['teacher']}/metrics.parquet").to_pylist()
    zs = next(
        x["value"]
        for x in patch_rows
        if x["alpha"] == 0.0 and x["selected"] is not None and x["dataset"] == "bigearthnet"
    )
    got = next(x["value"] for x in summary["rows"] if x["model"] == "zero-shot CLIP")
    assert got == zs
    final = {x["metric"]: x["value"] for x in aligned["test"] if x["encoder"] == "student"}
    row = next(
        x
        for x in summary["rows"]
        if x["model"] == "aligned MS encoder" and x["metric"] == "R@1 ms->rgb"
    )
    assert row["value"] == final["R@1 ms->rgb"]
    # a column per nomenclature: BigEarthNet-19 (patch run, alignment set), -5 and -43
    head = summary["table"][0]
    for nomen in ("ben19", "ben5", "ben43"):
        assert f" bigearthnet:{nomen} mAP |" in head, head
    assert " bigearthnet R@1 ms->rgb |" in head, head
    for name in ("table.parquet", "table.csv", "summary.md", "alpha_curve.png", "loss_curves.png"):
        assert (tmp_path / "report" / name).exists(), name
    assert "| aligned MS encoder |" in (tmp_path / "report" / "summary.md").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "mtmg.report", str(tmp_path), "--out", str(tmp_path / "r2")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert bad.returncode == 2 and "not a finished" in bad.stderr
