"""The sweep's inputs: what every trial reads, put in Ray's object store once.

`prepare` makes what does not depend on theta_ft: the validation splits decoded (while they fit
in `--eval-cache-gb`; beyond that trials stream the shards), the image tower packed, and the
test splits decoded where the driver computes the test metrics itself. A split is decoded once
per shard set path, in the set's stored nomenclature, for every nomenclature it is scored in.
`load` adds the patch run's weights and zero-shot heads once the run is finished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file

from mtmg import faults
from mtmg.data import loader
from mtmg.models import weights
from mtmg.sweeps.alpha import config, early, trial

if TYPE_CHECKING:
    from mtmg.models import clip
    from mtmg.stages.patch import driver as patch

log = logging.getLogger(__name__)
Sets = list[tuple[str, str, str | None]]  # (role, shard set path, nomenclature)


@dataclass
class Sweep:
    """The sweep as its phases see it once the options and inputs are checked."""

    cfg: config.AlphaSweepConfig
    pcfg: patch.PatchConfig
    bundle: clip.ClipBundle  # the driver's own model: takes theta(alpha) for the checkpoint
    sets: Sets
    run_dir: Path
    out: Path
    on_cluster: bool
    resuming: bool  # Tune's experiment exists (--resume)
    fine_tune: bool  # the sweep fine-tunes itself first
    trial_inputs: trial.AlphaTrialInputs
    spec: dict[str, Any]  # the resolved sweep spec (spec.yaml)
    t0: float = field(default_factory=time.perf_counter)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def tests_in_driver(self) -> bool:
        """Whether the driver computes the test metrics itself (embedded CPU sweeps), rather
        than a Ray task on a node with a trial's resources."""
        return not (self.on_cluster or self.cfg.gpus_per_trial)


@dataclass
class Prepared:
    """What `prepare` makes: refs of the decoded validation splits (by path) and the packed
    tower, and the test splits decoded for the driver's own test metrics (by path, split)."""

    val: dict[str, Any]
    visual: Any
    tests: dict[tuple[str, str], list[dict[str, Any]]]


@dataclass
class SweptRun:
    """What the trials and the driver's test metrics take from a finished patch run."""

    shared: dict[str, Any]  # the object-store refs every trial reads
    theta_zs: dict[str, torch.Tensor]
    theta_ft: dict[str, torch.Tensor]
    tests: dict[tuple[str, str], list[dict[str, Any]]]  # `Prepared.tests`
    ready_at: float = field(default_factory=time.perf_counter)  # when the trials could start


def trial_inputs(
    cfg: config.AlphaSweepConfig,
    pcfg: patch.PatchConfig,
    bundle: clip.ClipBundle,
    sets: Sets,
    injected: faults.Faults,
) -> trial.AlphaTrialInputs:
    """What every trial takes besides the object-store refs."""
    opened = [loader.ShardSet.open(p) for _, p, _ in sets]
    resolved = [
        (role, p, ds.nomenclature(n)) for (role, p, n), ds in zip(sets, opened, strict=True)
    ]
    records = zip(resolved, _labels(resolved, opened), opened, strict=True)
    return trial.AlphaTrialInputs(
        sets=tuple(
            trial.EvalSet(
                *s,
                label,
                ds.name,
                ds.task,
                tuple(ds.classes(s[2])),
                loader.Targets.of(ds, s[2]).mapping,
            )
            for s, label, ds in records
        ),
        decoder=(bundle.image_size, tuple(bundle.mean), tuple(bundle.std)),
        eval_batch_size=pcfg.eval_batch_size,
        loader_workers=pcfg.loader_workers,
        amp=pcfg.precision != "fp32",
        selection=cfg.selection,
        tolerance=cfg.tolerance,
        threads=max(1, int(cfg.cpus_per_trial)),
        gpu=cfg.gpus_per_trial > 0,
        cache_gb=cfg.eval_cache_gb,
        faults=injected,
    )


def _labels(sets: Sets, opened: list[loader.ShardSet]) -> list[str]:
    """Unique metric-column names: role/dataset, with :nomenclature where a dataset repeats
    (BigEarthNet in several label sets), then #index where that still repeats."""
    names = [f"{role}/{ds.name}" for (role, _, _), ds in zip(sets, opened, strict=True)]
    names = [
        n if names.count(n) == 1 else f"{n}:{nomen}"
        for n, (_, _, nomen) in zip(names, sets, strict=True)
    ]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def prepare(sweep: Sweep) -> Prepared:
    """What the trials and the test metrics need that does not depend on theta_ft (the image
    tower's weights are replaced by theta(alpha) in every trial)."""
    import ray

    ti = sweep.trial_inputs
    val = [i for i, s in enumerate(ti.sets) if s.role in ("patching", "supported")]
    visual = sweep.bundle.model.visual.cpu()
    return Prepared(
        val=_decode_all(ti, val, sweep.on_cluster),
        visual=ray.put(early.pack_visual(visual, script=not ti.gpu)),
        tests=trial.decode_tests(replace(ti, loader_workers=0)) if sweep.tests_in_driver else {},
    )


def load(sweep: Sweep, prepared: Prepared) -> SweptRun:
    """The run's weights and heads into the object store, beside what `prepare` made."""
    import ray

    from mtmg.stages.patch import driver as patch

    run, bundle = sweep.run_dir, sweep.bundle
    if (run / "patched.safetensors").is_file():  # the run's text tower, exactly
        bundle.model.load_state_dict(load_file(str(run / "patched.safetensors")), strict=True)
    theta_zs = load_file(str(run / "theta_zs.safetensors"))
    theta_ft = load_file(str(run / "theta_ft.safetensors"))
    weights.load_image_state(bundle.model, theta_zs)  # also checks the run's tensors fit
    heads = patch.build_heads(sweep.pcfg, bundle, sweep.sets)  # as the fine-tune built them
    shared = {
        "visual": prepared.visual,
        "zs": ray.put(_numpy_state(theta_zs)),
        "ft": ray.put(_numpy_state(theta_ft)),
        "heads": ray.put([h.cpu().numpy() for h in heads]),
        "val": prepared.val,
    }
    return SweptRun(shared, theta_zs, theta_ft, prepared.tests)


def _numpy_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _decode(
    ti: trial.AlphaTrialInputs, i: int, rank: int, world: int, max_bytes: float
) -> tuple[bool, list[dict[str, Any]] | None]:
    """Part `rank` of `world` of a validation split decoded as numpy batches, in this process
    (no loader processes: never fork a process that runs Ray's threads); (False, None) when over
    the budget."""
    got = trial.decode_split(replace(ti, loader_workers=0), i, "val", max_bytes, rank, world)
    if got is None:
        return False, None
    return True, [{k: v.numpy() if torch.is_tensor(v) else v for k, v in b.items()} for b in got]


def _decode_all(ti: trial.AlphaTrialInputs, sets: list[int], on_cluster: bool) -> dict[str, Any]:
    """Validation splits decoded once into the object store, once per shard set path (in its
    stored nomenclature, for every set of that path): path -> ref of the list of its parts (refs
    of batch lists), or None when over `ti.cache_gb` (trials then stream the shards).

    On a cluster, parallel Ray tasks (one per part) write the batches straight into the object
    store; embedded, the driver decodes them itself (no extra worker processes to start).
    """
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(_decode).options(num_cpus=1, num_returns=2)
    first: dict[str, int] = {}  # path -> the first of its sets
    for i in sets:
        first.setdefault(ti.sets[i].path, i)
    parts: dict[str, list] = {}
    for path, i in first.items():
        world = max(1, min(cpus, len(loader.ShardSet.open(path).shards("val"))))
        world = world if on_cluster else 1
        budget = ti.cache_gb * 2**30 / len(first) / world
        if on_cluster:
            parts[path] = [task.remote(ti, i, r, world, budget) for r in range(world)]
        else:
            ok, batches = _decode(ti, i, 0, 1, budget)
            parts[path] = [(ray.put(ok), ray.put(batches))]
    out = {}
    for path, refs in parts.items():
        if all(ray.get([ok for ok, _ in refs])):
            out[path] = ray.put([b for _, b in refs])
        else:
            log.warning("%s: validation split over --eval-cache-gb; trials stream it", path)
            out[path] = None
    return out
