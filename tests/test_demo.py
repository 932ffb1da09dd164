"""The README's demo on a smaller run: raw files to the report, with the method's effects."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from conftest import REPO


def _row(rows, model_prefix, dataset, metric):
    """The value of a report cell; `dataset` as its column names it (BigEarthNet's zero-shot
    metrics per nomenclature: "bigearthnet:ben19"; its retrieval: "bigearthnet")."""
    got = [
        r["value"]
        for r in rows
        if r["model"].startswith(model_prefix) and r["set"] == dataset and r["metric"] == metric
    ]
    assert len(got) == 1, (model_prefix, dataset, metric, got)
    return got[0]


def test_demo_end_to_end_and_rerun(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "mtmg.demo", "--out", str(out), "--patches", "360", "--quick"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rep = out / "paper" / "report"
    for name in (
        "paper.md",
        "paper.csv",
        "paper_gains.png",
        "summary.md",
        "summary.json",
        "table.parquet",
        "table.csv",
        "alpha_curve.png",
        "loss_curves.png",
        "loss_sweep.png",
        "timings.json",
    ):
        assert (rep / name).exists(), name
    rows = json.loads((rep / "summary.json").read_text())["rows"]
    zs = {
        d: _row(rows, "zero-shot CLIP", d, m)
        for d, m in (("bigearthnet:ben19", "mAP"), ("imagefolder", "top1"))
    }
    ft = {
        d: _row(rows, "fine-tuned CLIP", d, m)
        for d, m in (("bigearthnet:ben19", "mAP"), ("imagefolder", "top1"))
    }
    patched = {
        d: _row(rows, "patched CLIP", d, m)
        for d, m in (("bigearthnet:ben19", "mAP"), ("imagefolder", "top1"))
    }
    # the small CLIP is zero-shot capable on the supported task, poor on the patching task
    assert zs["imagefolder"] > 80 and zs["bigearthnet:ben19"] < 40
    # fine-tuning raises the patching metric and costs supported accuracy (PAINT's trade-off)
    assert ft["bigearthnet:ben19"] > zs["bigearthnet:ben19"] + 20
    assert ft["imagefolder"] < zs["imagefolder"] - 5
    # the chosen alpha (constrained rule, 5 points on validation) keeps the supported task close
    # to zero-shot and most of the patching gain
    assert patched["imagefolder"] > zs["imagefolder"] - 5
    gain = patched["bigearthnet:ben19"] - zs["bigearthnet:ben19"]
    assert gain > 0.5 * (ft["bigearthnet:ben19"] - zs["bigearthnet:ben19"]), (zs, patched, ft)

    # the aligned MS encoder lands in CLIP's space: cosine and retrieval far above its start
    def both(model: str, metric: str) -> float:
        return (
            sum(_row(rows, model, "bigearthnet", f"{metric} {d}") for d in ("ms->rgb", "rgb->ms"))
            / 2
        )

    before, after = (_row(rows, m, "bigearthnet", "cosine") for m in ("untrained", "aligned"))
    assert after > before + 0.3, (before, after)
    assert both("aligned", "R@10") > both("untrained", "R@10") + 10
    chance = 100 / 72  # R@1 over the 72 test patches of 360
    assert both("aligned", "R@1") > 5 * chance
    # ... and classifies zero-shot through CLIP's text head: well above its untrained version,
    # more than half the way to the patched teacher's RGB metric
    untrained, aligned = (
        _row(rows, m, "bigearthnet:ben19", "mAP") for m in ("untrained", "aligned")
    )
    assert aligned > untrained + 10
    assert aligned - untrained > 0.5 * (patched["bigearthnet:ben19"] - untrained), (
        untrained,
        aligned,
    )
    # BigEarthNet-5 and -43 too: zero-shot, patched, fine-tuned CLIP and the aligned encoder
    for nomen in ("ben5", "ben43"):
        for model in ("zero-shot CLIP", "patched CLIP", "fine-tuned CLIP", "aligned MS"):
            assert 0 < _row(rows, model, f"bigearthnet:{nomen}", "mAP") <= 100, (model, nomen)
    table = "\n".join(json.loads((rep / "summary.json").read_text())["table"])
    assert "bigearthnet:ben5 mAP" in table and "bigearthnet:ben43 mAP" in table
    # linear probes of both students on BigEarthNet's test split are in the report
    for who in ("aligned MS encoder", "untrained MS encoder"):
        assert 0 <= _row(rows, f"linear probe ({who}", "bigearthnet:ben19", "mAP") <= 100
    # the paper's published gains sit beside the demo's, BigEarthNet-5/19/43 all measured
    paper = {c["result"].split()[0]: c for c in pq.read_table(rep / "paper.parquet").to_pylist()}
    for name in ("BigEarthNet-5", "BigEarthNet-19", "BigEarthNet-43"):
        assert paper[name]["mtmg"] is not None and paper[name]["paper"] > 0, paper[name]
    assert paper["BigEarthNet-19"]["mtmg"] == round(
        patched["bigearthnet:ben19"] - zs["bigearthnet:ben19"], 2
    )
    # the same protocol through its own command: every stage finished, so every stage skipped
    again = [sys.executable, "sweeps/paper.py", "--spec", str(out / "paper.yaml")]
    r = subprocess.run(
        [*again, "--out", str(out / "paper")], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count("[skip]") == 4 and "| BigEarthNet-5 mAP" in r.stdout
    # a rerun skips every step
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and "[done]" not in r.stdout and r.stdout.count("[skip]") >= 11
    # ... and a rerun with other options is refused instead of skipping to the old results
    r = subprocess.run(
        [*cmd[:-2], "400", "--quick"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert r.returncode == 2 and "--patches 360 -> 400" in r.stderr and "--fresh" in r.stderr


def test_demo_and_report_help_and_bad_input(cli):
    for command in ("demo --help", "report --help"):
        r = cli[command]
        assert r.returncode == 0 and "--out" in r.stdout, command
    r = cli["demo --patches 10"]
    assert r.returncode == 2 and "--patches must be at least 120" in r.stderr
    assert not (cli.tmp / "demo").exists()
    r = cli["report without runs"]
    assert r.returncode == 2 and "runs" in r.stderr


def test_the_report_says_what_chance_is():
    """EuroSAT-MS zero-shot top-1 of the demo CLIP is a chance draw: the report gives chance."""
    from mtmg.demo import chance_note

    def manifest(name, task, k):
        classes = [f"c{i}" for i in range(k)]
        return {
            "dataset": name,
            "task": task,
            "label_nomenclature": name,
            "nomenclatures": {name: {"classes": classes}},
        }

    sets = [manifest("eurosat-ms", "single-label", 10), manifest("bigearthnet", "multi-label", 43)]
    note = chance_note(sets + [manifest("imagefolder", "single-label", 6)])
    assert note.startswith("Top-1 chance: eurosat-ms 10.0 (10 classes), imagefolder 16.7 (6")
    assert "bigearthnet" not in note and "arbitrary" in note


def test_the_demo_spec_is_a_valid_paper_spec_and_carries_report_to(tmp_path):
    """What the demo hands `sweeps/paper.py`: every stage's options as its parser reads them."""
    import argparse

    import yaml

    from mtmg import config, demo, tracking
    from mtmg.sweeps.paper import spec, steps

    sets = tuple(tmp_path / n for n in ("ben", "ems", "img"))
    text = demo._paper_spec(tmp_path, sets, tmp_path / "clip.pt", False, "tensorboard")
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(text))
    loaded = spec.load(path)
    assert sorted(loaded) == ["align", "alpha", "losses", "probe"]
    for name in ("alpha", "align", "losses", "probe"):
        step = steps.step(name)
        options = {**loaded[name], **step.wiring(tmp_path / "paper", loaded)}
        cfg = config.from_args(step.config_class(), argparse.Namespace(**options))
        assert tracking.check(cfg.report_to) == ("tensorboard",), name
