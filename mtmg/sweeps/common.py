"""The skeleton of every Ray Tune sweep, written once: check, claim OUT, load the inputs, start
Ray, run the trials, write the tables; errors and Ctrl-C end it as every mtmg command ends
(`mtmg.errors`).

A sweep's driver describes itself as a `Sweep` (its `SweepCommand`, checks, `prepare`) and
runs the config its command parsed (`mtmg.sweeps.command`) with `execute(SWEEP, cfg)`.
`prepare` loads what the trials share before Ray starts and returns a `Prepared`: the trial
function, its inputs (sent to the object store once), the search and how to write the outputs
from the trial rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtmg import config, errors, rundir
from mtmg.data import loader
from mtmg.runtime import tuner
from mtmg.sweeps import options, outputs
from mtmg.sweeps.command import SweepCommand
from mtmg.sweeps.outputs import absolute as absolute  # the drivers' `common.absolute`

log = logging.getLogger(__name__)
# the metric a trial's last report carries: with it the trial finished, `done` flag or not
FINAL_KEY = "done_training"


@dataclass(frozen=True)
class Prepared:
    """What a sweep's `prepare` hands the skeleton, its inputs loaded."""

    trial: Callable[..., None]  # trial(params, inputs), in the trial's process
    inputs: Any
    search: dict[str, Any]  # `tuner.run_tuner` arguments: param_space or search_alg, ...
    write: Callable[[list[dict[str, Any]]], dict[str, Any]]  # rows -> summary, outputs written


@dataclass(frozen=True)
class Sweep:
    """One sweep: its command (name, options, help), checks and steps."""

    command: SweepCommand
    check_options: Callable[[Any], None]
    prepare: Callable[[Any], Prepared]
    trial_modules: tuple[str, ...] = ()  # imported by embedded Ray's workers as they start

    @property
    def name(self) -> str:
        """The Tune experiment's name and OUT's kind."""
        return self.command.name


def execute(sweep: Sweep, cfg: options.SweepConfig) -> int:
    """A sweep's command once its options are parsed: prints the summary; exit 0, 1 when no
    trial finished, 2 on bad input, 130 on Ctrl-C."""
    try:
        summary = run(sweep, cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted(errors.RESUME_SWEEP)
    print((Path(cfg.out) / "summary.md").read_text())
    if summary["best"] is None:
        print("error: no trial finished", file=sys.stderr)
        return 1
    return 0


def run(sweep: Sweep, cfg: options.SweepConfig) -> dict[str, Any]:
    """The whole sweep; returns the summary also written to OUT/summary.json. OUT is the
    sweep's alone while it runs (`claim`)."""
    sweep.check_options(cfg)
    with claim(cfg, sweep.name):
        prepared = sweep.prepare(cfg)
        if sweep.trial_modules:
            tuner.preload(cfg, sweep.trial_modules)
        tuner.init(cfg)
        tuner.can_resume(cfg, sweep.name)
        trainable = tuner.bind(prepared.trial, inputs=prepared.inputs)
        grid = tuner.run_tuner(trainable, cfg, name=sweep.name, **prepared.search)
        return prepared.write(outputs.trial_rows(grid, final_key=FINAL_KEY))


@contextlib.contextmanager
def claim(cfg: options.SweepConfig, name: str) -> Iterator[None]:
    """Own OUT while the sweep runs (`mtmg.rundir.claim`: locked, fingerprinted); with
    --overwrite the old sweep, its Tune experiment included, is deleted first."""
    with rundir.claim(name, _fingerprinted(cfg), cfg.out, overwrite=cfg.overwrite) as same:
        if cfg.overwrite:
            tuner.remove_experiment(cfg, name)
        if cfg.resume and not same:
            raise ValueError(
                f"--resume: no sweep to resume in {Path(cfg.out).resolve()}; "
                "run without --resume to start one"
            )
        yield


def _fingerprinted(cfg: Any) -> Any:
    """The config less the stage overrides that say how a trial runs, not what it computes."""
    drop: dict[str, tuple[str, ...]] = {}
    for f in ("patch", "align"):
        items = getattr(cfg, f, None)
        if items:
            keep = (i for i in items if options.override_key(i) not in rundir.OPERATIONAL)
            drop[f] = tuple(keep)
    return dataclasses.replace(cfg, **drop) if drop else cfg


def search(
    cfg: options.SweepConfig,
    grid: dict[str, Sequence[Any]],
    optuna_space: dict[str, Any] | None = None,
    *,
    num_samples: int | None = None,
    asha_max_t: int | None = None,
) -> dict[str, Any]:
    """`tuner.run_tuner` arguments: every combination of `grid`, or with --search optuna
    `num_samples` (default --num-samples) trials of an Optuna search over `optuna_space`
    maximising the reported `objective`, stopped early by ASHA with `asha_max_t`."""
    if cfg.search == "grid":
        return {"param_space": tuner.grid_space(grid)}
    return {
        "search_alg": tuner.optuna_search(optuna_space or {}, "objective", "max", seed=cfg.seed),
        "num_samples": num_samples or cfg.num_samples,
        "scheduler": tuner.asha("objective", asha_max_t) if asha_max_t else None,
    }


# ----------------------------------------------------------------------------- data sets


def unique_paths(paths: Sequence[str]) -> list[str]:
    """The absolute paths, each once, in order."""
    return list(dict.fromkeys(absolute(p) for p in paths))


def dataset_labels(paths: Sequence[str]) -> list[str]:
    """Table names of shard sets: the dataset name, the directory name where names repeat."""
    names = [loader.ShardSet.open(p).name for p in paths]
    return [n if names.count(n) == 1 else Path(p).name for n, p in zip(names, paths, strict=True)]


def entry_labels(entries: Sequence[tuple[str, str | None]]) -> list[str]:
    """Table names of (path, nomenclature) entries: `dataset_labels` of the paths, with
    `:NOMENCLATURE` where an entry names one (`bigearthnet:ben5`)."""
    paths = list(dict.fromkeys(p for p, _ in entries))
    label = dict(zip(paths, dataset_labels(paths), strict=True))
    return [label[p] + (f":{n}" if n else "") for p, n in entries]


def check_patchable(path: str) -> None:
    """A patching dataset needs train and val splits (checked in its own trial)."""
    ds = loader.ShardSet.open(path)
    for split in ("train", "val"):
        if not ds.count(split):
            raise ValueError(f"{path}: the patching dataset has no {split!r} split")


def check_evaluable(path: str) -> None:
    """An evaluation dataset needs a test or val split (checked before Ray starts)."""
    ds = loader.ShardSet.open(path)
    if not ds.count("test") and not ds.count("val"):
        raise ValueError(f"{path}: no test or val split to evaluate on")


def check_supported(paths: Sequence[str]) -> None:
    """Supported datasets need a val split: the alpha rule reads it."""
    for s in paths:
        if not loader.ShardSet.open(s).count("val"):
            raise ValueError(f"{s}: the supported dataset has no 'val' split")


# -------------------------------------------------------------------------------- summary


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, the highest objective first (no objective last)."""
    return sorted(rows, key=lambda r: -(r.get("objective") or float("-inf")))


def failed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of trials that raised."""
    return [r for r in rows if r["status"] == "ERROR"]


def failed_md(rows: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> list[str]:
    """The summary's 'Failed trials' section (nothing when none failed)."""
    bad = failed(rows)
    if not bad:
        return []
    return ["## Failed trials", "", *[f"- {label(r)}: {r['error']}" for r in bad], ""]


def best_md(
    best: dict[str, Any], keys: Sequence[str], extra: Sequence[str], stage: str
) -> list[str]:
    """The summary's 'Best configuration' section of the best trial's `keys`."""
    return [
        "## Best configuration",
        "",
        *[f"- {k} = {best[f'config/{k}']}" for k in keys],
        f"- validation objective = {best['objective']:.2f}",
        *extra,
        "",
        f"Run it: `python -m {stage} --config best_config.yaml`",
        "",
    ]


def failed_summary(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """summary.json's failed trials: their `keys`, trial id and error."""
    return [
        {**{k: r.get(f"config/{k}") for k in keys}, "trial_id": r["trial_id"], "error": r["error"]}
        for r in failed(rows)
    ]


def write_outputs(
    cfg: options.SweepConfig,
    out: Path,
    rows: list[dict[str, Any]],
    md: list[str],
    summary: dict[str, Any],
    best_config: dict[str, Any] | None,
    stage: str,
    base: Any,
) -> None:
    """`outputs.write_outputs` with the sweep's spec and `<stage>_config.yaml`, the stage
    config (`base`) every trial started from."""
    outputs.write_outputs(
        out,
        rows,
        summary_md="\n".join(md),
        summary=summary,
        spec=options.resolved_spec(cfg),
        best_config=best_config,
        stage_configs={f"{stage}_config": config.to_dict(base)},
    )
