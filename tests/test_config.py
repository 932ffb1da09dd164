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
