"""Zero-shot baselines (`python -m mtmg.zeroshot`): CLIP checkpoints in the structures RemoteCLIP
and SkyCLIP publish, scored on generated shards as the patching stage scores alpha 0."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmg import prep, synth
from mtmg.errors import InputError
from mtmg.models import clip
from mtmg.report import build as report
from mtmg.stages.align import driver as align
from mtmg.stages.patch import driver as patch
from mtmg.stages.zeroshot import command
from mtmg.stages.zeroshot import driver as zeroshot

from conftest import REPO

TINY = "mtmg-tiny-vit"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ray_session):
    """BigEarthNet and EuroSAT-MS shards; one tiny CLIP saved as RemoteCLIP publishes its
    weights (a plain state dict) and as SkyCLIP does (an open_clip training checkpoint)."""
    root = tmp_path_factory.mktemp("zeroshot")
    synth.make_bigearthnet(root / "ben", n_patches=60, s1=False, seed=41)
    synth.make_eurosat_ms(root / "ems", n_per_class=4, size=32, seed=42)
    for kind, raw in (("bigearthnet", "ben"), ("eurosat-ms", "ems")):
        prep.shard(
            prep.ShardConfig(
                kind, str(root / raw), str(root / f"{raw}-shards"), shard_size=20, progress=False
            )
        )
    torch.manual_seed(4)
    state = clip.load_clip(TINY).model.state_dict()
    remote, sky = root / "RemoteCLIP-tiny.pt", root / "epoch_20.pt"
    torch.save(state, remote)
    torch.save(
        {
            "epoch": 20,
            "name": "skyclip",
            "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {f"module.{k}": v for k, v in state.items()},
        },
        sky,
    )
    return {
        "ben": str(root / "ben-shards"),
        "ems": str(root / "ems-shards"),
        "remote": str(remote),
        "sky": str(sky),
        "cache": str(root / "cache"),
    }


def _zeroshot(inputs, out, **kw) -> zeroshot.ZeroShotConfig:
    models = (f"RemoteCLIP={TINY}:{inputs['remote']}", f"SkyCLIP={TINY}:{inputs['sky']}")
    base = dict(
        data=(inputs["ben"], inputs["ems"]),
        out=str(out),
        models=models,
        cache_dir=inputs["cache"],
        loader_workers=1,
    )
    return zeroshot.ZeroShotConfig(**{**base, **kw})


def test_checkpoints_score_as_the_patch_stage_at_alpha_0(inputs, tmp_path):
    summary = zeroshot.run(_zeroshot(inputs, tmp_path / "zs", report_to=("tensorboard",)))
    out = tmp_path / "zs"
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()  # --report-to: each row's value as a scalar, named by model, set and metric
    for r in rows:
        name = f"test/{r['model']}/{r['dataset']}/{r['nomenclature']}/test/{r['metric']}"
        assert ea.Scalars(name)[0].value == pytest.approx(r["value"])
    got = {(r["model"], r["dataset"]): r for r in rows}
    assert len(rows) == 4 and summary["stage"] == "zeroshot"
    assert {r["nomenclature"] for r in rows} == {"ben19", "eurosat-ms"}
    assert {r["split"] for r in rows} == {"test"}
    assert got[("SkyCLIP", "eurosat-ms")]["chance"] == pytest.approx(10.0)
    for ds in ("bigearthnet", "eurosat-ms"):  # one set of weights in two file structures
        assert got[("RemoteCLIP", ds)]["value"] == got[("SkyCLIP", ds)]["value"]

    # mtmg.patch with the same weights reports the same numbers at alpha 0 (Ray Train workers)
    run = tmp_path / "patch"
    patch.run(
        patch.PatchConfig(
            data=inputs["ben"],
            eval_data=(inputs["ems"],),
            out=str(run),
            model=TINY,
            pretrained=inputs["sky"],
            epochs=1,
            lr=1e-4,
            warmup_steps=1,
            batch_size=16,
            alphas=(0.0, 1.0),
            augment=False,
            loader_workers=1,
            cache_dir=inputs["cache"],
        )
    )
    patched = pq.read_table(run / "metrics.parquet").to_pylist()
    for r in patched:
        if r["split"] == "test" and r["alpha"] == 0.0:
            assert got[("RemoteCLIP", r["dataset"])]["value"] == r["value"], r
            assert got[("RemoteCLIP", r["dataset"])]["n"] == r["n"]

    # per-class values: their mean is mAP, their support-weighted mean top-1
    per_class = pq.read_table(out / "per_class.parquet").to_pylist()
    ben = [c for c in per_class if c["model"] == "SkyCLIP" and c["dataset"] == "bigearthnet"]
    assert len(ben) == 19 and {c["metric"] for c in ben} == {"AP"}
    aps = [c["value"] for c in ben if c["value"] is not None]
    assert sum(aps) / len(aps) == pytest.approx(got[("SkyCLIP", "bigearthnet")]["value"])
    ems = [c for c in per_class if c["model"] == "SkyCLIP" and c["dataset"] == "eurosat-ms"]
    hits = sum(c["value"] * c["n"] for c in ems if c["n"]) / sum(c["n"] for c in ems)
    assert hits == pytest.approx(got[("SkyCLIP", "eurosat-ms")]["value"])
    assert (out / "config.yaml").is_file() and "RemoteCLIP" in (out / "zeroshot.md").read_text()

    # the report adds "<name> zero-shot" rows beside the patch run's
    rep = report.build([run, out], tmp_path / "report")
    named = {(r["model"], r["dataset"]): r["value"] for r in rep["rows"]}
    assert named[("SkyCLIP zero-shot", "eurosat-ms")] == got[("SkyCLIP", "eurosat-ms")]["value"]
    assert any(line.startswith("| RemoteCLIP zero-shot |") for line in rep["table"])
    assert report.run_kind(out) == "zeroshot"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (f"RemoteCLIP={TINY}", f"--models 'RemoteCLIP={TINY}': expected NAME=MODEL:PRETRAINED"),
        (f"{TINY}:x.pt", f"--models '{TINY}:x.pt': expected NAME=MODEL:PRETRAINED"),
        (f"Gone={TINY}:/no/such/RemoteCLIP.pt", "--models Gone=mtmg-tiny-vit:/no/such/Remote"),
        ("Bad=no-such-arch:x.pt", "--models Bad=no-such-arch:x.pt"),
    ],
)
def test_a_bad_spec_is_an_error_naming_it(inputs, tmp_path, capsys, spec, says):
    out = tmp_path / "zs"
    try:  # a spec that does not parse is refused with the options (argparse exits)
        code = command.main(["--data", inputs["ems"], "--out", str(out), "--models", spec])
    except SystemExit as e:
        code = e.code
    assert code == 2 and says in capsys.readouterr().err
    assert not out.exists()


def test_a_model_that_fails_to_load_leaves_out_to_the_corrected_run(inputs, tmp_path, capsys):
    state = torch.load(inputs["remote"])
    wrong = tmp_path / "wrong.safetensors"  # the text tower left out
    save_file({k: v for k, v in state.items() if not k.startswith("transformer.")}, str(wrong))
    out = tmp_path / "zs"
    argv = ["--data", inputs["ems"], "--out", str(out), "--cache-dir", inputs["cache"]]
    argv += ["--loader-workers", "1"]
    assert command.main([*argv, "--models", f"ZS={TINY}:{wrong}"]) == 2
    assert "missing keys" in capsys.readouterr().err and not out.exists()
    assert command.main([*argv, "--models", f"ZS={TINY}:{inputs['remote']}"]) == 0
    assert (out / "zeroshot.md").is_file()
    # the report of it, into an --out that is a file: one line
    afile = tmp_path / "afile"
    afile.write_text("")
    assert report.main([str(out), "--out", str(afile)]) == 2
    assert capsys.readouterr().err == f"error: --out {afile} is a file, not a folder\n"


def test_names_given_twice_and_nothing_to_score_are_refused(inputs):
    spec = f"A={TINY}:{inputs['remote']}"
    with pytest.raises(ValueError, match="the name.s. A are given twice"):
        zeroshot.ZeroShotConfig(data=(inputs["ems"],), out="x", models=(spec, spec))
    with pytest.raises(ValueError, match="nothing to score"):
        zeroshot.ZeroShotConfig(data=(inputs["ems"],), out="x")


def test_a_set_scored_in_another_nomenclature(inputs, tmp_path):
    """`--data PATH:NOMENCLATURE`, as everywhere else: BigEarthNet in ben19 and ben5."""
    ben, model = inputs["ben"], (f"RemoteCLIP={TINY}:{inputs['remote']}",)
    cfg = _zeroshot(inputs, tmp_path / "zs", data=(ben, f"{ben}:ben5"), models=model)
    rows = zeroshot.run(cfg)["rows"]
    assert [(r["nomenclature"], r["path"]) for r in rows] == [("ben19", ben), ("ben5", ben)]
    assert rows[0]["n"] == rows[1]["n"] and rows[0]["value"] != rows[1]["value"]
    per_class = pq.read_table(tmp_path / "zs" / "per_class.parquet").to_pylist()
    assert sum(c["nomenclature"] == "ben5" for c in per_class) == 5
    with pytest.raises(InputError, match="the same set and nomenclature given twice"):
        zeroshot.run(_zeroshot(inputs, tmp_path / "x", data=(ben, f"{ben}:ben19"), models=model))


def test_a_skyclip_checkpoint_teaches_the_alignment(inputs, tmp_path):
    """`mtmg.align --model M --pretrained FILE`: an open_clip training checkpoint as teacher."""
    summary = align.run(
        align.AlignConfig(
            data=inputs["ben"],
            out=str(tmp_path / "align"),
            model=TINY,
            pretrained=inputs["sky"],
            student_args=json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}),
            student_size=32,
            epochs=1,
            lr=1e-3,
            warmup_steps=1,
            batch_size=16,
            eval_every=0,
            eval_init=False,
            loader_workers=1,
            cache_dir=inputs["cache"],
        )
    )
    assert summary["teacher"]["pretrained"] == inputs["sky"] and summary["steps"] > 0
    assert torch.isfinite(torch.tensor(summary["loss"]["last"]["loss"]))
    # the teacher it distils from is the CLIP that mtmg.zeroshot scores
    teacher = [r for r in summary["test"] if r["encoder"] == "teacher"]
    zs = zeroshot.run(_zeroshot(inputs, tmp_path / "zs", data=(inputs["ben"],)))
    assert [r["value"] for r in teacher] == [zs["rows"][1]["value"]]


def test_on_a_running_cluster_as_one_task(inputs, local_cluster, tmp_path):
    """`--cluster`: the scoring runs as a Ray task of the cluster, with the same numbers."""
    spec = f"RemoteCLIP={TINY}:{inputs['remote']}"
    out = tmp_path / "cluster"
    argv = ["--data", inputs["ems"], "--models", spec, "--cache-dir", inputs["cache"]]
    argv += ["--loader-workers", "1", "--out", str(out), "--cluster", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtmg.zeroshot", *argv],
        cwd=REPO,
        env=local_cluster,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ran_on"]["pid"] != proc.pid  # a Ray worker, not the command's process
    here = zeroshot.run(_zeroshot(inputs, tmp_path / "here", data=(inputs["ems"],), models=(spec,)))
    assert [r["value"] for r in summary["rows"]] == [r["value"] for r in here["rows"]]
