"""The dataset sweep: which patching dataset, or mixture of datasets (PAINT's joint
patching), helps which evaluation dataset.

`python sweeps/dataset_sweep.py --patching ENTRY ... [--eval-data SHARDS ...]
[--supported SHARDS ...] --model NAME --pretrained TAG --out DIR` runs one Tune trial per
entry of `--patching`: a shard set, or shard sets joined by `+` (`A+B`: a mixture). The trial
fine-tunes CLIP's image tower on that set, or on the mixture's sets together (`mtmg.patch`'s
joint patching: every step one batch of each set, each through its own head and loss), in the
trial's own process (`mtmg.patch.worker`), selects alpha on validation (PAINT's rule with the
supported sets, the patching metric the mean over the entry's sets; `mtmg.engine.select`) and
evaluates zero-shot (alpha 0), patched (chosen alpha) and fine-tuned (alpha 1) weights on the
test split (val where there is none) of every evaluation dataset: every patching set (alone or
in a mixture), the supported sets and `--eval-data`. The zero-shot weights and every dataset's
zero-shot head are built once by the driver and go to the object store once.

Result: the patching-entries x evaluation-datasets matrix of gains over zero-shot (patched
minus zero-shot metric, in points of mAP or top-1) as gains.parquet/.csv (long form, with the
zero-shot, patched and fine-tuned values), a heat map (gains.png) and summary.md; one row per
trial in sweep.parquet/.csv (a mixture's row is labelled `A+B`, its `self_gain` the mean gain
on its own sets); best_config.yaml is the `mtmg.patch --config` of the entry with the largest
mean gain (`--data A --joint-data B` for a mixture). A patching dataset that cannot be patched
(no train or val split) fails its own trials, recorded with its error naming the set; the
others finish.

An entry that is itself a shard set is one set even when its path holds a `+`; an entry that
reads both as one set and as a mixture is refused as ambiguous.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from mtmg.data import evalsets, loader
from mtmg.errors import InputError
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import command, common, options, trials
from mtmg.sweeps.dataset import summary, trial
from mtmg.sweeps.dataset.config import COMMAND, MIX, SWEPT, DatasetSweepConfig
from mtmg.sweeps.dataset.config import NAME as NAME  # the Tune experiment's name, for callers


def check_options(cfg: DatasetSweepConfig) -> None:
    """Errors in the options, before anything is loaded."""
    options.check_common(cfg)
    if not cfg.patching:
        raise ValueError("give --patching SHARDS ... (the datasets to patch on)")
    if cfg.search != "grid":
        raise ValueError("the dataset sweep runs every patching dataset: use --search grid")
    if len(set(cfg.patching)) != len(cfg.patching):
        raise ValueError("--patching: repeated entries")
    options.check_overrides(patch.PatchConfig, cfg.patch, "--patch", SWEPT)


def _is_shard_set(path: str) -> bool:
    try:
        loader.ShardSet.open(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def parse_entry(entry: str) -> tuple[str, ...]:
    """The absolute shard sets of a --patching entry: one set, or a mixture `A+B+...`.

    An entry that is a shard set is that set (a path may hold a `+`); one that is also a
    mixture of shard sets is ambiguous. A part that is no shard set fails later, named."""
    if MIX not in entry:
        return (common.absolute(entry),)
    parts = entry.split(MIX)
    whole = _is_shard_set(entry)
    if whole and all(p and _is_shard_set(p) for p in parts):
        raise ValueError(
            f"--patching {entry}: both a shard set and a mixture of shard sets "
            "(rename or link the set whose path holds '+')"
        )
    if whole:
        return (common.absolute(entry),)
    if not all(parts):
        raise ValueError(f"--patching {entry}: an empty part in a mixture")
    mix = tuple(common.absolute(p) for p in parts)
    if len(set(mix)) != len(mix):
        raise ValueError(f"--patching {entry}: a shard set twice in one mixture")
    return mix


def entries(patching: Sequence[str]) -> list[tuple[str, ...]]:
    """The shard sets of every --patching entry; the same set of sets twice is an error."""
    out = [parse_entry(e) for e in patching]
    seen = [frozenset(m) for m in out]
    for e, s in zip(patching, seen, strict=True):
        if seen.count(s) > 1:
            raise ValueError(f"--patching {e}: the same shard sets appear in another entry")
    return out


def patch_config(
    cfg: DatasetSweepConfig, patching: list[str], supported: list[str], paths: list[str]
) -> patch.PatchConfig:
    """The patching settings every trial starts from (its sets vary per trial)."""
    fixed = {
        "out": str(Path(cfg.out).resolve() / "trial"),
        "workers": 1,
        "data": patching[0],
        "joint_data": (),
        "supported": tuple(supported),
        "eval_data": tuple(p for p in paths if p not in patching and p not in supported),
    }
    values = {**options.named_values(cfg), **fixed}
    return options.stage_config(patch.PatchConfig, cfg.patch_config, cfg.patch, "--patch", values)


def evaluation_entries(
    patching: list[str], supported: list[str], eval_data: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Every set the trials score, as entries `PATH[:NOMENCLATURE]` (patching and supported
    sets in their default nomenclature first), and each one's nomenclature resolved; an eval
    entry that repeats one of them is an error naming it."""
    keys = [*patching, *(s for s in supported if s not in patching)]
    nomens = [loader.ShardSet.open(p).nomenclature() for p in keys]
    for e in evalsets.check(eval_data):
        nomen = e.open().nomenclature(e.nomenclature)
        if (e.path, nomen) in zip(keys, nomens, strict=True):
            raise InputError(f"--eval-data {e}: already scored (a patching or supported set)")
        keys.append(str(e))
        nomens.append(nomen)
    return keys, nomens


def prepare(cfg: DatasetSweepConfig) -> common.Prepared:
    """Every dataset checked and labelled; the zero-shot weights and every head, once."""
    mixes = entries(cfg.patching)
    patching = common.unique_paths([p for m in mixes for p in m])
    supported = common.unique_paths(cfg.supported)
    keys, nomens = evaluation_entries(patching, supported, cfg.eval_data)
    parsed = [evalsets.EvalEntry.parse(k) for k in keys]
    for e in parsed:
        common.check_evaluable(e.path)
    common.check_supported(supported)
    labels = common.entry_labels([(e.path, e.nomenclature) for e in parsed])
    names = {MIX.join(labels[keys.index(p)] for p in m): m for m in mixes}
    if len(names) != len(mixes):
        raise ValueError(f"--patching: entries with the same label ({', '.join(names)})")
    base = patch_config(cfg, patching, supported, keys)
    bundle, head_weights = trials.clip_and_heads(
        base.model,
        base.pretrained,
        base.model_config,
        base,
        [(e.path, e.nomenclature) for e in parsed],
    )
    inputs = trial.DatasetTrialInputs(
        dataclasses.asdict(base),
        {k: v.cpu() for k, v in bundle.model.state_dict().items()},
        head_weights,
        keys,
        labels,
        names,
        supported,
        trials.TrialResources.of(cfg),
        bundle.build_kwargs,
        nomens,
    )
    out = Path(cfg.out).resolve()
    return common.Prepared(
        trial.trial,
        inputs,
        common.search(cfg, {"patching": list(names)}),
        lambda rows: summary.write(cfg, base, inputs, out, rows),
    )


SWEEP = common.Sweep(COMMAND, check_options, prepare, trial_modules=(trial.__name__,))


def execute(cfg: DatasetSweepConfig) -> int:
    """The sweep of parsed options, as its command runs it (`common.execute`)."""
    return common.execute(SWEEP, cfg)


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/dataset_sweep.py --patching SHARDS|A+B ... --out DIR [options]`."""
    return command.main(COMMAND, argv)
