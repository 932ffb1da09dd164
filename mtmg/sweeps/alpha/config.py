"""The alpha sweep's options (`AlphaSweepConfig`), its command-line face (`COMMAND`: light, so
`--help` answers before torch or Ray is imported), the options' checks, and the patch run they
name.

`check` finds every error in the options and the run dir that can be found before Ray starts;
`patch_config` resolves the patch run the sweep interpolates: a finished `--run` (its paths
overridable), or the sweep's own fine-tune into OUT/patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtmg import config
from mtmg.engine import select
from mtmg.sweeps import options
from mtmg.sweeps.command import SweepCommand

if TYPE_CHECKING:
    from mtmg.stages.patch import driver as patch

option = config.option
NAME = "alpha_sweep"  # the Tune experiment's name under --storage
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
RUN_FILES = ("config.yaml", "theta_zs.safetensors", "theta_ft.safetensors")
FINE_TUNE_OPTIONS = (
    "model",
    "model_config",
    "epochs",
    "batch_size",
    "lr",
    "warmup_steps",
    "workers",
)
SET_OPTIONS = ("data", "joint_data", "supported", "eval_data")


@dataclass(frozen=True)
class AlphaSweepConfig(options.SweepConfig):
    """Options of the alpha sweep (the common sweep options first)."""

    run: str | None = option(
        None,
        help="a finished `mtmg.patch` output dir (config.yaml, theta_zs/theta_ft"
        ".safetensors) to sweep",
    )
    data: str | None = option(
        None,
        help="patching shard set: without --run, fine-tune once (into OUT/patch) and "
        "sweep; with --run, replaces the run's",
    )
    joint_data: tuple[str, ...] = option(
        (),
        help="more patching shard sets fine-tuned on together with --data (PAINT's joint "
        "patching, see mtmg.patch); with --run, replace the run's",
    )
    supported: tuple[str, ...] = option(
        (), help="supported-task shard sets (with --run: replace the run's)"
    )
    eval_data: tuple[str, ...] = option(
        (),
        help="more shard sets to report test metrics on: PATH, or PATH:NOMENCLATURE for another "
        "label set of it (e.g. shards/ben:ben5)",
    )
    model: str | None = option(None, help="fine-tune: open_clip model (default: mtmg.patch's)")
    pretrained: str = option(
        "",
        help="fine-tune: open_clip tag or checkpoint file, 'none' for random init "
        "(default: mtmg.patch's)",
    )
    model_config: str | None = option(None, help="fine-tune: JSON of a custom architecture")
    epochs: int | None = option(None, help="fine-tune: epochs (default: mtmg.patch's)")
    batch_size: int | None = option(None, help="fine-tune: batch size (default: mtmg.patch's)")
    lr: float | None = option(None, help="fine-tune: learning rate (default: mtmg.patch's)")
    warmup_steps: int | None = option(None, help="fine-tune: warm-up steps")
    workers: int | None = option(None, help="fine-tune: DDP workers")
    patch_config: str | None = option(
        None, help="fine-tune: YAML of any further `mtmg.patch` options (flags override it)"
    )
    alphas: tuple[float, ...] = option(ALPHAS, help="grid search: the alphas to evaluate")
    alpha_range: tuple[float, ...] = option(
        (0.0, 1.0), help="optuna search: LOW HIGH bounds of alpha, within [0, 1]"
    )
    alpha_step: float = option(0.01, help="optuna search: alpha resolution (0: continuous)")
    multi_objective: bool = option(
        False,
        help="Optuna multi-objective search of (patching, supported) metrics; the Pareto "
        "front is reported",
    )
    selection: str = option(
        "mean", help="alpha selection rule (mean: PAINT's)", choices=sorted(select.RULES)
    )
    tolerance: float = option(1.0, help="constrained rule: allowed supported drop (points)")
    eval_batch_size: int | None = option(None, help="evaluation batch size (default: the run's)")
    loader_workers: int | None = option(None, help="decoding processes (default: the run's)")
    eval_cache_gb: float = option(
        2.0, help="decode validation splits once and share them while they fit in this size"
    )
    cache_dir: str | None = option(None, help="zero-shot head cache (default: the run's)")


COMMAND = SweepCommand(
    NAME,
    AlphaSweepConfig,
    "Alpha sweep of PAINT patching with Ray Tune: interpolate a patch run's theta_zs and "
    "theta_ft, evaluate every alpha on validation splits, choose alpha, report test metrics.",
    "input: --run PATCH_RUN_DIR, or --data SHARDS --supported SHARDS [model options] to\n"
    "fine-tune once first (into OUT/patch).\n"
    "outputs in --out: sweep.parquet/.csv, summary.md, summary.json, best_config.yaml,\n"
    "spec.yaml, alpha_curve.png, metrics.parquet/.csv (test), patched.safetensors and\n"
    "config.yaml (a patch-run layout the alignment teacher loads). Ray Tune's experiment:\n"
    "OUT/tune (--storage); an interrupted sweep continues with --resume.",
    "mtmg.sweeps.alpha.driver",
)


def check_options(cfg: AlphaSweepConfig) -> None:
    """Every error in the options and the run dir that can be found before Ray starts."""
    options.check_common(cfg)
    if not cfg.run and not cfg.data:
        raise ValueError("give --run PATCH_RUN_DIR, or --data SHARDS (+ --supported) to fine-tune")
    if cfg.run:
        _check_run(Path(cfg.run))
    if not cfg.alphas:
        raise ValueError("--alphas: give at least one alpha")
    bad = [a for a in cfg.alphas if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
    if bad:
        raise ValueError(f"--alphas must lie in [0, 1]; got {bad}")
    if len(set(cfg.alphas)) != len(cfg.alphas):
        raise ValueError(f"--alphas has duplicates: {list(cfg.alphas)}")
    if len(cfg.alpha_range) != 2:
        raise ValueError(f"--alpha-range takes LOW HIGH, got {list(cfg.alpha_range)}")
    lo, hi = cfg.alpha_range
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"--alpha-range needs 0 <= LOW < HIGH <= 1, got {lo:g} {hi:g}")
    if cfg.alpha_step < 0 or cfg.alpha_step >= hi - lo:
        raise ValueError(f"--alpha-step must be in [0, {hi - lo:g}), got {cfg.alpha_step:g}")
    if cfg.selection not in select.RULES:
        raise ValueError(f"unknown --selection {cfg.selection!r}")
    if cfg.eval_cache_gb < 0:
        raise ValueError("--eval-cache-gb must not be negative")


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise FileNotFoundError(f"--run {run}: no such directory")
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--run {run}: not a finished mtmg.patch run, missing {', '.join(missing)}"
        )


def run_dir(cfg: AlphaSweepConfig) -> Path:
    """The patch run swept: --run, or the sweep's own fine-tune (OUT/patch)."""
    return Path(cfg.run).resolve() if cfg.run else Path(cfg.out).resolve() / "patch"


def run_finished(run: Path) -> bool:
    """Whether `run` holds a finished patch run (the sweep's own fine-tune is then reused)."""
    return all((run / f).is_file() for f in (*RUN_FILES, "summary.json"))


def spec(cfg: AlphaSweepConfig) -> dict[str, Any]:
    """The resolved sweep spec saved as spec.yaml (with the patch run swept)."""
    return {**options.resolved_spec(cfg), "run": str(run_dir(cfg))}


def patch_config(cfg: AlphaSweepConfig) -> patch.PatchConfig:
    """The patch run's config: the run's (paths overridable), or the fine-tune's to run."""
    from mtmg.data import evalsets
    from mtmg.stages.patch import driver as patch

    values = _run_values(cfg) if cfg.run else _fine_tune_values(cfg)
    for key in SET_OPTIONS:
        if getattr(cfg, key):
            values[key] = getattr(cfg, key)
    for key in ("eval_batch_size", "loader_workers", "cache_dir"):
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    values.update(selection=cfg.selection, tolerance=cfg.tolerance, report_to=cfg.report_to)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if "data" not in values:
        raise ValueError("the patch config names no --data shard set")
    pcfg = patch.PatchConfig(**values)
    return replace(
        pcfg,
        data=abs_path(pcfg.data),
        joint_data=tuple(abs_path(p) for p in pcfg.joint_data),
        supported=tuple(abs_path(p) for p in pcfg.supported),
        eval_data=tuple(evalsets.absolute(p) for p in pcfg.eval_data),
    )


def _run_values(cfg: AlphaSweepConfig) -> dict[str, Any]:
    from mtmg.stages.patch import driver as patch

    run = Path(cfg.run)
    values = config.load_yaml(patch.PatchConfig, run / "config.yaml")
    if (run / "model_config.json").is_file():  # the run dir's own copy
        values["model_config"] = str(run / "model_config.json")
    values["out"] = str(run.resolve())
    return values


def _fine_tune_values(cfg: AlphaSweepConfig) -> dict[str, Any]:
    from mtmg.stages.patch import driver as patch

    values = config.load_yaml(patch.PatchConfig, cfg.patch_config) if cfg.patch_config else {}
    given = {k: getattr(cfg, k) for k in FINE_TUNE_OPTIONS}
    values.update({k: v for k, v in given.items() if v is not None})
    if cfg.pretrained:
        values["pretrained"] = None if cfg.pretrained.lower() == "none" else cfg.pretrained
    # the fine-tune's own alpha evaluation is not the sweep: keep it to the two ends
    values.update(out=str(run_dir(cfg)), alphas=(0.0, 1.0), cluster=cfg.cluster)
    return values


def abs_path(path: str) -> str:
    """A local path made absolute (trial actors change their cwd); URIs as they are."""
    return path if "://" in path else str(Path(path).resolve())
