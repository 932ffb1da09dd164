"""mtmg.config: dataclass defaults < YAML < flags, typed values, repeated list flags."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mtmg import config

option = config.option


@dataclass(frozen=True)
class Demo:
    out: str = option(help="where")
    sets: tuple[str, ...] = option((), help="shard sets")
    lr: float = option(1e-5, help="learning rate")
    workers: int | None = option(None, help="workers")
    augment: bool = option(True, help="augment")


def test_defaults_yaml_and_flags(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("lr: 0.001\nsets: [a, b]\nworkers: 3\n")
    cfg = config.parse(Demo, ["--out", "o", "--config", str(yml), "--workers", "none"], "d")
    assert cfg == Demo(out="o", sets=("a", "b"), lr=1e-3, workers=None, augment=True)
    cfg = config.parse(
        Demo, ["--out", "o", "--config", str(yml), "--sets", "c", "--no-augment"], "d"
    )
    assert cfg.sets == ("c",) and cfg.lr == 1e-3 and cfg.augment is False  # flags replace YAML


def test_repeated_list_flags_add_up():
    cfg = config.parse(Demo, ["--out", "o", "--sets", "a", "b", "--sets", "c"], "d")
    assert cfg.sets == ("a", "b", "c")


def test_bad_input_names_the_option_or_key(tmp_path, capsys):
    with pytest.raises(SystemExit):
        config.parse(Demo, [], "d")
    assert "--out" in capsys.readouterr().err
    yml = tmp_path / "c.yaml"
    yml.write_text("learning_rate: 1\n")
    with pytest.raises(SystemExit):
        config.parse(Demo, ["--out", "o", "--config", str(yml)], "d")
    err = capsys.readouterr().err
    assert str(yml) in err and "learning_rate" in err
    with pytest.raises(SystemExit):
        config.parse(Demo, ["--out", "o", "--lr", "fast"], "d")
    assert "--lr" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "cannot read it (No such file or directory)"),
        ("lr: [0.1,\nsets: a\n", "not valid YAML (line 3: expected ',' or ']'"),
        ("lr: 0.1\n  sets: a\n", "not valid YAML (line 2: mapping values are not allowed"),
        (b"\xff\xfe\x00", "cannot read it (not a text file)"),
    ],
)
def test_a_config_that_cannot_be_read_is_an_error_naming_it(tmp_path, capsys, text, says):
    from mtmg.prep import main as shard_main

    yml = tmp_path / "c.yaml"
    if isinstance(text, str):
        yml.write_text(text)
    elif text is not None:
        yml.write_bytes(text)
    with pytest.raises(SystemExit) as e:
        config.parse(Demo, ["--out", "o", "--config", str(yml)], "d")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --config {yml}: {says}" in err and "Traceback" not in err
    # a command's main says the same (data_prep/shard.py, here)
    with pytest.raises(SystemExit) as e:
        shard_main(["bigearthnet", "--config", str(yml), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and f"--config {yml}: {says}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
