"""Linear probing (`python -m mtmg.probe`) of patch-run CLIP towers, aligned and untrained
students and open_clip checkpoints, on generated shards, in-process on CPU."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmg import config, prep, synth
from mtmg.data import loader
from mtmg.models import clip, heads, weights
from mtmg.report import build as report
from mtmg.report import tables
from mtmg.stages.align import driver as align
from mtmg.stages.patch import driver as patch
from mtmg.stages.probe import command, fit
from mtmg.stages.probe import driver as probe

TINY_STUDENT = json.dumps({"depth": 2, "embed_dim": 64, "num_heads": 2, "patch_size": 8})
FAST = dict(
    eval_batch_size=64, loader_workers=0, max_iter=30, weight_decays=(1e-4, 1e-2, 1.0), threads=1
)


@pytest.fixture
def one_thread():
    """Tiny fits on one torch thread: on a busy machine more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, ray_session):
    """BigEarthNet (multi-label, L2A) and EuroSAT-MS (single-label, L1C) shards."""
    root = tmp_path_factory.mktemp("probedata")
    synth.make_bigearthnet(root / "ben", n_patches=80, s1=False, size=36, seed=51)
    synth.make_eurosat_ms(root / "ems", n_per_class=8, size=32, seed=52)
    for kind, raw in (("bigearthnet", "ben"), ("eurosat-ms", "ems")):
        out = str(root / f"{raw}-shards")
        prep.shard(prep.ShardConfig(kind, str(root / raw), out, shard_size=40, progress=False))
    return {"ben": str(root / "ben-shards"), "ems": str(root / "ems-shards"), "root": root}


@pytest.fixture(scope="module")
def runs(sets):
    """A patch run and an align run, each made by its stage's worker and writer in this process
    (a few steps of a tiny CLIP and a tiny student: what the probe reads is their layout)."""
    root, cache = sets["root"], str(sets["root"] / "heads")
    pcfg = patch.PatchConfig(
        data=sets["ben"],
        out=str(root / "patch"),
        model="mtmg-tiny-vit",
        pretrained=None,
        lr=3e-3,
        batch_size=16,
        warmup_steps=1,
        alphas=(0.0, 0.5, 1.0),
        augment=False,
        loader_workers=0,
        cache_dir=cache,
    )
    bundle, psets = patch.resolve_inputs(pcfg)
    theta_zs = weights.image_state(bundle.model)
    conf = {
        "cfg": dataclasses.asdict(pcfg),
        "zeroshot": bundle.model.state_dict(),
        "heads": patch.build_heads(pcfg, bundle, psets),
        "sets": psets,
    }
    res = patch.worker(conf)
    Path(pcfg.out).mkdir()
    tables.save_config(config.to_dict(pcfg), Path(pcfg.out) / "config.yaml")
    save_file(theta_zs, str(Path(pcfg.out) / "theta_zs.safetensors"))
    patch.write_outputs(pcfg, Path(pcfg.out), bundle, theta_zs, res["theta_ft"], res, 0.0)
    zs_checkpoint = root / "zero-shot.safetensors"  # the same tower as an open_clip checkpoint
    weights.load_image_state(bundle.model, theta_zs)
    weights.save_checkpoint(bundle.model, zs_checkpoint, build_kwargs=bundle.build_kwargs)

    acfg = align.AlignConfig(
        data=sets["ben"],
        out=str(root / "align"),
        teacher=pcfg.out,
        student_args=TINY_STUDENT,
        student_size=32,
        lr=1e-3,
        warmup_steps=1,
        epochs=1,
        batch_size=16,
        eval_every=0,
        eval_init=False,
        loader_workers=0,
        cache_dir=cache,
    )
    asets = align.resolve_inputs(acfg)
    name, pretrained, model_config = align.resolve_teacher(acfg)
    tb = clip.load_clip(name, pretrained, model_config=model_config)
    head_weights = heads.dataset_heads(tb, name, [(loader.ShardSet.open(sets["ben"]), None)], cache)
    net, init = align.build_student(acfg, head_weights[0].shape[1])
    conf = {
        "cfg": dataclasses.asdict(acfg),
        "teacher": {"model": name, "config": None, "build_kwargs": tb.build_kwargs},
        "spec": net.spec.to_json(),
        "sets": asets,
        "teacher_visual": tb.model.visual.state_dict(),
        "student_init": net.state_dict(),
        "heads": head_weights,
    }
    state = align.worker(conf)
    net.load_state_dict(state.pop("student"), strict=True)
    Path(acfg.out).mkdir()
    tables.save_config(config.to_dict(acfg), Path(acfg.out) / "config.yaml")
    align.write_outputs(acfg, Path(acfg.out), net, state, {"model": name}, init, 0.0)
    return {"patch": pcfg.out, "align": acfg.out, "zs_checkpoint": str(zs_checkpoint)}


def _probe(tmp_path, name, **kw) -> tuple[probe.ProbeConfig, dict]:
    cfg = probe.ProbeConfig(
        out=str(tmp_path / name), cache_dir=str(tmp_path / "cache"), **FAST | kw
    )
    return cfg, probe.run(cfg)


def _train_labels(path: str) -> list[int]:
    ds = loader.ShardSet.open(path)
    bands, modality = tuple(ds.manifest["bands"]), ds.manifest["modality"]
    dec = loader.Decoder(bands, modality, "rgb", loader.Targets.of(ds), 8, 8)
    batches = loader.make_loader(ds, "train", dec, batch_size=64, train=False, num_workers=0)
    return [int(y) for b in batches for y in b["target"]]


def test_fit_separates_synthetic_classes_and_chooses_the_penalty_on_val(one_thread):
    """Classes told apart only by cancelling a shared noise with a pure-noise feature: a weak
    penalty learns that, a strong one cannot (it tends to the class-mean direction)."""
    gen = torch.Generator().manual_seed(0)

    def blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        noise = 4 * torch.randn(n, 1, generator=gen)
        signal = 2 * F.one_hot(y, 3) + noise * torch.tensor([1.0, 2.0, 3.0])
        return torch.cat([signal, noise], 1) + 0.05 * torch.randn(n, 4, generator=gen), y

    train, val, test = blobs(150), blobs(60), blobs(60)
    for optimizer in ("lbfgs", "adamw"):
        got = fit.choose(train, val, 3, (1e-4, 1e-2, 1e2), optimizer=optimizer)
        assert fit.score(got.probe, *test) > 95, optimizer
        assert got.probe.weight_decay != 1e2 and dict(got.grid)[1e2] < 50  # chosen on val
        assert got.val == max(v for _, v in got.grid) and len(got.grid) == 3
    once, twice = (fit.choose(train, val, 3, (1e-4, 1e-2, 1e2)) for _ in range(2))
    assert torch.equal(once.probe.weight, twice.probe.weight)  # deterministic
    # multi-label, one logistic regression per class: class c where feature c is positive
    x = torch.randn(300, 8, generator=gen)
    y = (x[:, :4] > 0).float()
    got = fit.choose((x[:200], y[:200]), (x[200:250], y[200:250]), 4, (1e-4, 1e-1))
    assert fit.score(got.probe, x[250:], y[250:]) > 95


def test_few_shot_samples_are_per_class_and_nested():
    y = torch.tensor([0] * 10 + [1] * 6 + [2] * 1)
    half = fit.subsample(y, 0.5, seed=3)
    assert torch.bincount(y[half]).tolist() == [5, 3, 1]  # every class kept, at least once
    tenth = fit.subsample(y, 0.1, seed=3)
    assert torch.bincount(y[tenth]).tolist() == [1, 1, 1]
    assert set(tenth.tolist()) <= set(half.tolist())  # nested under one seed
    assert not torch.equal(fit.subsample(y, 0.5, seed=4), half)
    multi = torch.zeros(50, 3)
    assert len(fit.subsample(multi, 0.1, seed=0)) == 5
    assert torch.equal(fit.subsample(multi, 1.0, seed=0), torch.arange(50))


def test_patch_run_at_alpha_0_and_1_and_a_checkpoint_then_the_cache(sets, runs, tmp_path, capsys):
    """CLIP at alpha 0 and 1 of a patch run, and the zero-shot tower as a NAME:FILE checkpoint,
    on single-label EuroSAT-MS; a second run reads every feature back from the cache."""
    encoders = (
        f"clip:{runs['patch']}@0",
        f"clip:{runs['patch']}@1",
        f"mtmg-tiny-vit:{runs['zs_checkpoint']}",
        f"clip:{runs['patch']}",
    )
    cfg, first = _probe(tmp_path, "a", data=(sets["ems"],), encoders=encoders, fractions=(0.5, 1))
    out = Path(cfg.out)
    for name in ("probe.parquet", "probe.csv", "probe.md", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    rows = pq.read_table(out / "probe.parquet").to_pylist()
    chosen = json.loads((Path(runs["patch"]) / "summary.json").read_text())["alpha"]
    labels = ["zero-shot CLIP (alpha=0)", "fine-tuned CLIP (alpha=1)"]
    labels.append("mtmg-tiny-vit (zero-shot.safetensors)")
    assert {r["encoder"] for r in rows} >= set(labels)
    assert any(f"alpha={chosen:g}" in r["encoder"] for r in rows)
    labels_train = _train_labels(sets["ems"])
    counts = torch.bincount(torch.tensor(labels_train)).tolist()
    want = {0.5: sum(max(1, round(0.5 * c)) for c in counts if c), 1.0: len(labels_train)}
    for r in rows:
        assert r["metric"] == "top1" and r["split"] in ("val", "test")
        assert r["n_train"] == want[r["fraction"]], r
        assert r["weight_decay"] in FAST["weight_decays"]
    # alpha 0 and 1 are other towers (other features); the checkpoint of theta_zs is alpha 0's
    # tower: its features are the same cache entries, read back within the first run
    feats = first["features"]
    by_enc: dict[str, dict[str, dict]] = {}
    for e in feats:
        by_enc.setdefault(e["encoder"], {})[e["split"]] = e
    zs, ft, ckpt = (by_enc[lab]["train"] for lab in labels)
    assert zs["file"] == ckpt["file"] and zs["file"] != ft["file"]
    assert all(e["cached"] for e in by_enc[labels[2]].values())
    zs_x, ft_x = (load_file(e["file"])["x"] for e in (zs, ft))
    assert zs_x.shape == ft_x.shape and not torch.allclose(zs_x, ft_x)
    # the second run, from the command line, extracts nothing, leaves the cache files alone
    # and says so
    mtimes = {e["file"]: Path(e["file"]).stat().st_mtime_ns for e in feats}
    argv = ["--data", sets["ems"], "--encoders", *encoders, "--fractions", "0.5", "1"]
    argv += ["--out", str(tmp_path / "b"), "--cache-dir", cfg.cache_dir, "--threads", "1"]
    argv += ["--max-iter", "30", "--weight-decays", "1e-4", "1e-2", "1", "--loader-workers", "0"]
    assert command.main(argv) == 0
    said = capsys.readouterr().out
    assert f"features: 0 split(s) extracted, {len(feats)} reused from the cache" in said
    assert f"| zero-shot CLIP (alpha=0) | {rows[0]['dataset']} |" in said  # the table
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["features_extracted"] == 0 and second["features_reused"] == len(feats)
    assert {f: Path(f).stat().st_mtime_ns for f in mtimes} == mtimes
    assert [r["value"] for r in second["rows"]] == [r["value"] for r in first["rows"]]


def test_aligned_and_untrained_students_in_two_label_sets(sets, runs, tmp_path):
    """The aligned student, the student as alignment started it (from the run dir and from its
    config YAML: the same trunk, one cache entry), BigEarthNet-19 and -43, few-shot rows."""
    encoders = (
        f"student:{runs['align']}",
        f"untrained:{runs['align']}",
        f"from YAML=untrained:{runs['align']}/config.yaml",
    )
    cfg, summary = _probe(
        tmp_path,
        "s",
        data=(sets["ben"],),
        encoders=encoders,
        nomenclature=("ben19", "ben43"),
        fractions=(0.25, 1.0),
        report_to=("tensorboard",),
    )
    rows = pq.read_table(Path(cfg.out) / "probe.parquet").to_pylist()
    ea = EventAccumulator(str(Path(cfg.out) / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()  # --report-to: each test row's value, named by encoder, set, label set, share
    for r in (r for r in rows if r["split"] == "test"):
        name = f"test/{r['encoder']}/bigearthnet/{r['nomenclature']}/{r['fraction']}/mAP"
        name = re.sub(r"[^\w./-]", "_", name)  # TensorBoard's tag characters
        assert ea.Scalars(name)[0].value == pytest.approx(r["value"])
    aligned, untrained = "aligned MS encoder", "untrained MS encoder (random init)"
    assert {r["encoder"] for r in rows} == {aligned, untrained, "from YAML"}
    n = loader.ShardSet.open(sets["ben"]).count("train")
    for r in rows:
        assert (r["metric"], r["input"]) == ("mAP", "MS") and r["nomenclature"] in (
            "ben19",
            "ben43",
        )
        assert r["n_train"] == (n if r["fraction"] == 1 else round(0.25 * n))
    assert len(rows) == 3 * 2 * 2 * 2  # encoders x label sets x fractions x (val, test)
    # features once per encoder and split whatever the label sets; the YAML's untrained student
    # is the run dir's (same weights): its features come from the cache
    feats = summary["features"]
    assert len(feats) == 3 * 3 and sum(e["cached"] for e in feats) == 3
    files = {e["encoder"]: e["file"] for e in feats if e["split"] == "train"}
    assert files[untrained] == files["from YAML"] != files[aligned]
    # the untrained student is align's builder on the run's options: its trunk's fingerprint
    acfg = align.AlignConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in config.load_yaml(
                align.AlignConfig, Path(runs["align"]) / "config.yaml"
            ).items()
        }
    )
    net, _ = align.build_student(acfg, 8)
    key = json.loads(Path(files[untrained]).with_suffix(".json").read_text())
    assert key["encoder"]["weights"] == weights.weights_fingerprint(net.trunk)
    # every penalty's validation metric is kept; the chosen one is the best on val
    for r in (r for r in rows if r["split"] == "val"):
        tried = [
            g
            for g in summary["grid"]
            if all(g[k] == r[k] for k in ("encoder", "nomenclature", "fraction"))
        ]
        assert sorted(g["weight_decay"] for g in tried) == sorted(FAST["weight_decays"])
        best = [g for g in tried if g["chosen"]]
        assert len(best) == 1 and best[0]["weight_decay"] == r["weight_decay"]
        assert best[0]["val"] == r["value"] == max(g["val"] for g in tried)
    # the report reads a probe dir: a row per encoder
    rep = report.build([cfg.out], tmp_path / "report")
    names = {r["model"] for r in rep["rows"]}
    assert f"linear probe ({aligned})" in names and f"linear probe ({untrained})" in names


def test_bad_input_is_an_error_naming_it(sets, runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "never"
    base = ["--data", sets["ems"], "--out", str(out)]
    cases = {
        f"clip:{empty}": f"{empty} has no config.yaml",
        f"student:{runs['patch']}": f"{runs['patch']} has no student.json",
        f"untrained:{empty}": f"{empty} has no student.json",
        "nonsense": "no KIND:WHERE",
        "nonsense:x": "'nonsense' is no kind",
        f"clip:{runs['patch']}@high": "alpha 'high' is not a number",
        f"mtmg-tiny-vit:{empty}/gone.pt": f"checkpoint file {empty}/gone.pt not found",
    }
    for spec, said in cases.items():
        assert command.main([*base, "--encoders", spec]) == 2, spec
        err = capsys.readouterr().err
        assert said in err and spec in err, (spec, err)
    assert (
        command.main(
            ["--data", str(empty), "--encoders", f"clip:{runs['patch']}", "--out", str(out)]
        )
        == 2
    )
    assert str(empty) in capsys.readouterr().err
    assert command.main([*base, "--encoders", f"clip:{runs['patch']}", "--fractions", "0"]) == 2
    assert "--fractions" in capsys.readouterr().err
    assert not out.exists()
