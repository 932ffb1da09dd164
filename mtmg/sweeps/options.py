"""The options every sweep has, and the stage settings its trials start from.

- `SweepConfig`: `--cluster`, resources per trial, `--max-concurrent`, `--num-samples`,
  `--seed`, `--storage`, `--resume`, `--search`, `--spec FILE.yaml`; a sweep's own config
  subclasses it. `parse` resolves defaults < `--spec` < `--config` < flags.
- `stage_config`: a stage config (`PatchConfig`, `AlignConfig`) from a YAML file
  (`--patch-config`), `KEY=VALUE` overrides (`--patch lr=1e-4`, parsed as the stage's own flag
  would be) and the sweep's named flags; an unknown key is an error that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mtmg import config, tracking

option = config.option
T = TypeVar("T")

SEARCHES = ("grid", "optuna")
OBJECTIVES = ("zeroshot", "retrieval", "sum")  # of an alignment trial (`trials.objective`)
EMPTY_DEFAULT = " (default: )"  # what `config.build_parser` adds to an option defaulting to ""


@dataclass(frozen=True)
class SweepConfig:
    """Options common to all sweeps."""

    out: str = option(help="output directory: table, summary, best config, plots")
    cluster: bool = option(
        False, help="connect to a running Ray cluster (RAY_ADDRESS or auto); else embedded Ray"
    )
    cpus_per_trial: float = option(1.0, help="CPUs reserved per trial (fractions allowed)")
    gpus_per_trial: float = option(0.0, help="GPUs per trial (fractions allowed, e.g. 0.25)")
    max_concurrent: int | None = option(
        None, help="at most this many trials at once (default: as many as resources allow)"
    )
    num_samples: int = option(12, help="trials of an Optuna search")
    seed: int = option(0, help="seed of the search algorithm")
    storage: str | None = option(
        None,
        help="Ray Tune experiment storage: local path, NFS or a pyarrow URI "
        "(s3://, gs://, file://); default OUT/tune",
    )
    resume: bool = option(
        False, help="continue an interrupted sweep in the same storage; finished trials are kept"
    )
    retry_failed: bool = option(False, help="with --resume: run failed trials again")
    overwrite: bool = option(
        False, help="OUT holds a sweep of other settings: delete it and start afresh"
    )
    search: str = option("grid", help="search algorithm", choices=list(SEARCHES))
    report_to: tuple[str, ...] = option(
        (),
        help="also track every trial (one run each, grouped by sweep) in tensorboard, mlflow "
        "and/or wandb (comma-separated)",
    )
    spec: str | None = option(
        None,
        help="sweep spec YAML: search space and fixed settings, keys as the long options "
        "(spec.yaml of an earlier sweep works); flags override it",
    )


@dataclass(frozen=True)
class StageSweepConfig(SweepConfig):
    """The common options, and the stage settings every sweep names (over --patch/--align)."""

    model: str | None = option(
        None, help="open_clip model of the CLIP (when aligning: the teacher, if no --teacher)"
    )
    pretrained: str = option(
        "",
        help="its weights: an open_clip tag or file, 'none' for random init "
        "(default: the stage's, openai)",
    )
    epochs: int | None = option(None, help="epochs per trial (default: the stage's)")
    cache_dir: str | None = option(None, help="zero-shot head cache")


def parse(cls: type[T], argv: Sequence[str] | None, description: str, epilog: str = "") -> T:
    """A sweep config from the command line: defaults < --spec < --config < flags."""
    parser = config.build_parser(cls, description, epilog)
    for action in parser._actions:  # "" means "the stage's": each such help says it itself
        if action.help and action.help.endswith(EMPTY_DEFAULT):
            action.help = action.help.removesuffix(EMPTY_DEFAULT)
    ns = parser.parse_args(argv)
    try:
        values: dict[str, Any] = {}
        if getattr(ns, "spec", None):
            values.update(config.load_yaml(cls, ns.spec, "--spec"))
            values["spec"] = ns.spec
        if ns.config:
            values.update(config.load_yaml(cls, ns.config, "--config"))
        values.update({k: v for k, v in vars(ns).items() if k != "config"})
        return config.from_args(cls, argparse.Namespace(config=None, **values))
    except (TypeError, ValueError, OSError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def check_common(cfg: SweepConfig) -> None:
    """Errors in the common options, before Ray starts."""
    if cfg.cpus_per_trial < 0 or cfg.gpus_per_trial < 0:
        raise ValueError("--cpus-per-trial and --gpus-per-trial must not be negative")
    if cfg.cpus_per_trial == 0 and cfg.gpus_per_trial == 0:
        raise ValueError("a trial needs some resource: --cpus-per-trial or --gpus-per-trial > 0")
    if cfg.max_concurrent is not None and cfg.max_concurrent < 1:
        raise ValueError("--max-concurrent must be at least 1")
    if cfg.num_samples < 1:
        raise ValueError("--num-samples must be at least 1")
    if cfg.search not in SEARCHES:
        raise ValueError(f"unknown --search {cfg.search!r}; choose one of {list(SEARCHES)}")
    if cfg.retry_failed and not cfg.resume:
        raise ValueError("--retry-failed only applies with --resume")
    tracking.check(cfg.report_to)


def resolved_spec(cfg: SweepConfig) -> dict[str, Any]:
    """The options as plain data, loadable again with --spec (spec/resume left out)."""
    d = config.to_dict(cfg)
    for k in ("spec", "resume", "retry_failed", "overwrite"):
        d.pop(k, None)
    return d


# ------------------------------------------------------------------------ stage overrides


def override_key(item: str) -> str:
    """The option name of a `KEY=VALUE` override (dashes read as underscores)."""
    return item.partition("=")[0].strip().replace("-", "_")


def overrides(cls: type, items: Sequence[str], flag: str) -> dict[str, Any]:
    """Typed field values of `cls` from `KEY=VALUE` items, each VALUE read as the stage's own
    command-line flag reads it (a list: comma-separated; a bool: true/false; none: None)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    parser = config.build_parser(cls, "")
    parser.exit_on_error = False
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name = override_key(item)
        if not sep or not name:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        if name not in names:
            known = sorted(names)
            raise ValueError(f"{flag} {item!r}: unknown option {key.strip()!r}; known: {known}")
        args = typing.get_args(hints[name])
        if type(None) in args and value.strip().lower() in ("none", "null"):
            out[name] = None
            continue
        try:
            ns = parser.parse_args(_as_flags(name, hints[name], value.strip()))
        except argparse.ArgumentError as e:
            raise ValueError(f"{flag} {item!r}: {e}") from None
        v = getattr(ns, name)
        out[name] = tuple(v) if isinstance(v, list) else v
    return out


def _as_flags(name: str, hint: Any, value: str) -> list[str]:
    flag = "--" + name.replace("_", "-")
    kinds = {hint, *typing.get_args(hint)}
    if bool in kinds:
        word = value.lower()
        if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise argparse.ArgumentError(None, f"expected true or false, got {value!r}")
        return [flag if word in ("1", "true", "yes", "on") else f"--no-{flag[2:]}"]
    if any(typing.get_origin(k) in (tuple, list) for k in kinds):
        return [flag, *[v.strip() for v in value.split(",") if v.strip()]]
    return [flag, value]


def stage_config(
    cls: type[T], yaml_path: str | None, items: Sequence[str], flag: str, values: dict[str, Any]
) -> T:
    """A stage config for every trial: defaults < `yaml_path` < `items` (`KEY=VALUE`, from
    `flag`) < `values` (the sweep's named flags that were given, what the sweep decides);
    local paths made absolute here, since trials run in folders of their own."""
    from mtmg.sweeps import outputs  # pyarrow: not imported for --help

    resolved = config.load_yaml(cls, yaml_path) if yaml_path else {}
    resolved.update(overrides(cls, items, flag))
    resolved.update(values)
    return cls(**outputs.absolute_paths(resolved))


def given(**values: Any) -> dict[str, Any]:
    """The named flags that were given (not None, empty or an empty list)."""
    return {k: v for k, v in values.items() if v not in (None, "", ())}


def named_values(cfg: StageSweepConfig) -> dict[str, Any]:
    """The stage settings of `StageSweepConfig` that were given ('none' weights: None)."""
    out = given(model=cfg.model, epochs=cfg.epochs, cache_dir=cfg.cache_dir)
    if cfg.pretrained:
        out["pretrained"] = None if cfg.pretrained.lower() == "none" else cfg.pretrained
    return out


def check_overrides(cls: type, items: Sequence[str], flag: str, swept: Sequence[str]) -> None:
    """Errors in `KEY=VALUE` overrides, before anything is loaded: unknown keys, bad values,
    and the keys the sweep sets itself (`swept`)."""
    for k in overrides(cls, items, flag):
        if k in swept:
            raise ValueError(f"{flag} {k}=...: the sweep sets {k} itself")
