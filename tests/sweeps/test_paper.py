"""`sweeps/paper.py`: the spec is checked by each stage's own options, the shipped recipe names
only options the stages' `--help` lists, and reruns skip, continue or refuse stages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from mtmg.errors import InputError
from mtmg.sweeps.paper import driver, published, spec, steps

from conftest import REPO

RECIPE = REPO / "recipes" / "paper.yaml"


def _help_options(face: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, *face.split(), "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"--([a-z0-9-]+)", out.stdout))


def test_the_recipe_names_only_options_the_stages_help_lists():
    sections = yaml.safe_load(RECIPE.read_text())
    assert set(sections) <= set(steps.NAMES) and "alpha" in sections and "align" in sections
    for name, section in sections.items():
        listed = _help_options(steps.step(name).face)
        for key in section:
            assert key.replace("_", "-") in listed, (name, key)
    loaded = spec.load(RECIPE)  # and each section builds its stage's config
    assert "shards/bigearthnet:ben5" in loaded["alpha"]["eval_data"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alpha: {data: x}\nprobes: {}\n", "unknown stage(s) ['probes']"),
        ("align: {data: x}\n", "the spec needs the stage(s) ['alpha']"),
        ("alpha: {data: x, learning_rate: 1}\n", "alpha: 'learning_rate' is not an option"),
        ("alpha: {data: x, out: y}\n", "alpha: 'out' is set by the paper pipeline"),
        ("alpha: {data: x}\nalign: {data: x, teacher: t}\n", "'teacher' is set by the paper"),
        ("alpha: [1, 2]\n", "alpha: expected a mapping"),
    ],
)
def test_bad_specs_are_refused_naming_file_stage_and_key(tmp_path, text, message):
    path = tmp_path / "paper.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        spec.load(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_dry_run_writes_each_stage_config_and_reruns_decide_per_stage(tmp_path, capsys):
    path, out = tmp_path / "paper.yaml", tmp_path / "out"
    path.write_text("alpha: {data: shards/ben, alphas: [0.0, 1.0]}\nalign: {data: shards/ben}\n")
    args = ["--spec", str(path), "--out", str(out)]
    assert driver.main([*args, "--dry-run"]) == 0
    given = yaml.safe_load((out / "specs" / "align.yaml").read_text())
    assert given["teacher"] == str(out / "alpha") and given["out"] == str(out / "align")
    assert given["cluster"] is False and "overwrite" not in given
    # a finished stage with the options it finished with is skipped ...
    (out / "alpha").mkdir()
    (out / "alpha" / "summary.json").write_text("{}")
    options = {**spec.load(path)["alpha"], "out": str(out / "alpha")}
    (out / driver.RECORD).write_text(json.dumps({"alpha": options}))
    capsys.readouterr()
    assert driver.main([*args, "--dry-run"]) == 0
    assert "[skip] alpha" in capsys.readouterr().out
    # ... one finished with other options is refused, naming what changed ...
    path.write_text("alpha: {data: shards/ben, alphas: [0.0, 0.5, 1.0]}\n")
    assert driver.main([*args, "--dry-run"]) == 2
    assert "changed: alphas" in capsys.readouterr().err
    # ... unless redone: then it overwrites, and so does every later stage
    path.write_text("alpha: {data: shards/ben, alphas: [0.0, 0.5, 1.0]}\nalign: {data: a}\n")
    (out / "align").mkdir()
    (out / "align" / "summary.json").write_text("{}")
    assert driver.main([*args, "--dry-run", "--redo", "alpha"]) == 0
    for name in ("alpha", "align"):
        assert yaml.safe_load((out / "specs" / f"{name}.yaml").read_text())["overwrite"] is True
    assert driver.main([*args, "--redo", "alphas"]) == 2
    assert "--redo ['alphas']: not a stage" in capsys.readouterr().err


def test_every_encoder_is_probed_the_baselines_too(tmp_path):
    path, out = tmp_path / "paper.yaml", tmp_path / "out"
    sky = "SkyCLIP=ViT-B-32:sky.pt"
    path.write_text(
        "alpha: {data: ben}\nalign: {data: ben}\nprobe: {data: [ben]}\n"
        f"baselines: {{data: [ben], models: ['{sky}']}}\n"
    )
    assert driver.main(["--spec", str(path), "--out", str(out), "--dry-run"]) == 0
    probed = yaml.safe_load((out / "specs" / "probe.yaml").read_text())["encoders"]
    assert probed == [
        f"zero-shot CLIP=clip:{out / 'alpha'}@0",
        f"patched CLIP=clip:{out / 'alpha'}",
        f"aligned MS encoder=student:{out / 'align'}",
        f"untrained MS encoder=untrained:{out / 'align'}",
        sky,
    ]


def test_published_gains_sit_beside_the_measured_ones():
    def row(model, label, metric, value):
        dataset, _, nomen = label.partition(":")
        r = {"model": model, "dataset": dataset, "metric": metric, "value": value, "set": label}
        return {**r, "nomenclature": nomen} if nomen else r

    rows = [
        row("zero-shot CLIP", "bigearthnet", "mAP", 20.0),  # unnamed: BigEarthNet-19
        row("patched CLIP (alpha=0.6)", "bigearthnet", "mAP", 70.0),
        row("zero-shot CLIP", "bigearthnet:ben5", "mAP", 40.0),
        row("patched CLIP (alpha=0.6)", "bigearthnet:ben5", "mAP", 75.5),
        row("zero-shot CLIP", "eurosat-ms", "top1", 30.0),
        row("patched CLIP (alpha=0.6)", "eurosat-ms", "mAP", 99.0),  # another metric
    ]
    comp = {c["result"].split()[0]: c for c in published.comparison(rows)}
    assert comp["BigEarthNet-19"]["mtmg"] == 50.0 and comp["BigEarthNet-19"]["paper"] == 56.86
    assert comp["BigEarthNet-5"]["mtmg"] == 35.5 and comp["BigEarthNet-5"]["column"].endswith("5")
    assert comp["BigEarthNet-43"]["mtmg"] is None and comp["EuroSAT"]["mtmg"] is None
    table = published.markdown(published.comparison(rows))
    assert "| BigEarthNet-5 mAP: patched - zero-shot CLIP | +39.76 | +35.50 |" in table
