"""The spec of a paper run (`--spec PAPER.yaml`): one section per stage, each a mapping of that
stage's own command-line options (keys as its long options, with _ or -). A section is checked by
the stage's own option parser, so a spec cannot drift from the commands it drives."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from mtmg import config
from mtmg.errors import InputError
from mtmg.sweeps.paper import steps

SET_BY_PIPELINE = ("out", "teacher", "cluster", "resume", "overwrite")


def load(path: str | Path) -> dict[str, dict[str, Any]]:
    """{step name: its options} of the spec at `path`, every section checked."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read the spec: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of stage names to their options")
    unknown = sorted(set(data) - set(steps.NAMES))
    if unknown:
        raise InputError(f"{path}: unknown stage(s) {unknown}; known: {list(steps.NAMES)}")
    missing = [n for n in steps.REQUIRED if n not in data]
    if missing:
        raise InputError(f"{path}: the spec needs the stage(s) {missing}")
    for name, needs in steps.NEEDS.items():
        if name in data and any(n not in data for n in needs):
            raise InputError(f"{path}: the stage {name!r} needs the stage(s) {list(needs)}")
    sections = {}
    for name, section in data.items():
        sections[name] = check(path, steps.step(name), section or {})
    return sections


def check(path: str | Path, step: steps.Step, section: Any) -> dict[str, Any]:
    """`section` with normalised keys; bad keys and values are errors naming file and stage."""
    where = f"{path}: {step.name}"
    if not isinstance(section, dict):
        raise InputError(f"{where}: expected a mapping of option names to values")
    options = {str(k).replace("-", "_"): v for k, v in section.items()}
    cls = step.config_class()
    names = {f.name for f in dataclasses.fields(cls)}
    for key in options:
        if key in SET_BY_PIPELINE or key in step.wiring(Path("OUT"), {}):
            raise InputError(f"{where}: {key!r} is set by the paper pipeline, not the spec")
        if key not in names:
            raise InputError(f"{where}: {key!r} is not an option of python {step.face}")
    try:
        config.from_args(cls, argparse.Namespace(**options, **step.wiring(Path("OUT"), {})))
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: {e}") from e
    return options
