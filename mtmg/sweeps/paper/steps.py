"""The stages of the paper's protocol, in order: which command runs each, where its outputs go,
and the options the pipeline sets itself (the spec gives all the others)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (OUT, the spec's sections) -> the options the pipeline sets for a step
Wiring = Callable[[Path, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One stage: its spec section (and OUT/<name>), the command that runs it, its options."""

    name: str
    title: str
    face: str  # the command users type: "sweeps/alpha_sweep.py", "-m mtmg.align"
    command: str  # the module whose `main(argv) -> int` the face runs
    config: str  # "module:Class" of the command's options (what `--config` accepts)
    done: str  # the file in OUT/<name> that a finished run leaves
    wiring: Wiring
    sweep: bool = False  # a Ray Tune sweep: continue an interrupted one with `resume`
    reported: bool = True  # its OUT/<name> is a run dir `mtmg.report` reads

    def config_class(self) -> type:
        module, _, cls = self.config.partition(":")
        return getattr(importlib.import_module(module), cls)

    def main(self) -> Callable[[list[str]], int]:
        return importlib.import_module(self.command).main


STEPS = (
    Step(
        "alpha",
        "alpha sweep: fine-tune CLIP on the patching task, interpolate, choose alpha, test",
        "sweeps/alpha_sweep.py",
        "mtmg.sweeps.alpha.driver",
        "mtmg.sweeps.alpha.config:AlphaSweepConfig",
        "summary.json",
        lambda out, spec: {"out": str(out / "alpha")},
        sweep=True,
    ),
    Step(
        "align",
        "alignment: distil the multispectral student into the patched CLIP",
        "-m mtmg.align",
        "mtmg.stages.align.command",
        "mtmg.stages.align.config:AlignConfig",
        "summary.json",
        lambda out, spec: {"out": str(out / "align"), "teacher": str(out / "alpha")},
    ),
    Step(
        "losses",
        "loss ablation: the alignment with other distillation loss weights (loss sweep)",
        "sweeps/loss_sweep.py",
        "mtmg.sweeps.loss.driver",
        "mtmg.sweeps.loss.config:LossSweepConfig",
        "summary.json",
        lambda out, spec: {"out": str(out / "losses"), "teacher": str(out / "alpha")},
        sweep=True,
    ),
    Step(
        "probe",
        "linear probes: zero-shot and patched CLIP, aligned and untrained student, baselines",
        "-m mtmg.probe",
        "mtmg.stages.probe.command",
        "mtmg.stages.probe.config:ProbeConfig",
        "summary.json",
        lambda out, spec: {
            "out": str(out / "probe"),
            "encoders": [
                f"zero-shot CLIP=clip:{out / 'alpha'}@0",
                f"patched CLIP=clip:{out / 'alpha'}",
                f"aligned MS encoder=student:{out / 'align'}",
                f"untrained MS encoder=untrained:{out / 'align'}",
                *spec.get("baselines", {}).get("models", []),  # NAME=MODEL:PRETRAINED, as probe's
            ],
        },
    ),
    Step(
        "baselines",
        "baselines: remote-sensing CLIPs (RemoteCLIP, SkyCLIP, ...) scored zero-shot",
        "-m mtmg.zeroshot",
        "mtmg.stages.zeroshot.command",
        "mtmg.stages.zeroshot.config:ZeroShotConfig",
        "summary.json",
        lambda out, spec: {"out": str(out / "baselines")},
    ),
)
NAMES = tuple(s.name for s in STEPS)
REQUIRED = ("alpha",)  # the others are optional: a spec without them skips them
NEEDS = {"losses": ("align",), "probe": ("align",)}  # what a stage's wiring reads besides alpha


def step(name: str) -> Step:
    return next(s for s in STEPS if s.name == name)
