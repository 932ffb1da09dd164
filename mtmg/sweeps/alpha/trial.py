"""An alpha-sweep trial: theta(alpha) evaluated on the validation splits, and the test metrics.

What runs in a trial's process lives here, apart from the driver, so that a trial process
imports torch and mtmg's small modules only: no open_clip and no torchvision (their import is
much of a cold trial process's start). The image tower arrives packed (`early.pack_visual`:
TorchScript for CPU trials, which loads without the code that defined it).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from mtmg import faults
from mtmg.engine import evaluate, select
from mtmg.models import weights
from mtmg.models.heads import ZeroShotHead
from mtmg.sweeps.alpha import early


class EvalSet(NamedTuple):
    """A shard set the sweep evaluates."""

    role: str  # patching, supported or eval
    path: str
    nomenclature: str | None
    label: str  # unique among the sets: the name of its metric column (val/LABEL)
    name: str  # the dataset's name (its manifest's)
    task: str  # multi-label or single-label (the manifest's)
    classes: tuple[str, ...] = ()  # of the nomenclature: the per-class rows' names
    # stored nomenclature index -> this one's (-1: dropped), as `loader.Targets.mapping`; None:
    # the stored one. Splits are decoded in the stored nomenclature, once per path.
    mapping: tuple[int, ...] | None = None


@dataclass(frozen=True)
class AlphaTrialInputs:
    """What a trial needs besides the object-store refs (small, picklable)."""

    sets: tuple[EvalSet, ...]
    decoder: tuple  # image_size, mean, std
    eval_batch_size: int
    loader_workers: int
    amp: bool
    selection: str
    tolerance: float
    threads: int
    gpu: bool
    cache_gb: float = 2.0  # decode a split once while it fits (test splits, streamed sets)
    faults: faults.Faults = faults.NONE
    shared: dict[str, Any] = field(default_factory=dict, compare=False)


class _Holder(torch.nn.Module):
    """An open_clip-like module holding only the image tower (`visual.*` keys)."""

    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__()
        self.visual = visual


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # read-only object-store buffers: only ever read
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _torch_batches(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Object-store numpy batches as tensors (zero-copy views, only ever read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [
            {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in b.items()}
            for b in batches
        ]


class Evaluator:
    """theta(alpha) on a split of every set; built once per process from the object store."""

    def __init__(
        self, inputs: AlphaTrialInputs, refs: dict[str, Any], *, worker: bool = True
    ) -> None:
        import ray

        if worker:  # Ray gives a worker 1 thread; use the CPUs the trial reserved
            torch.set_num_threads(max(1, inputs.threads))
        self.inputs = inputs
        cuda = inputs.gpu and torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.amp = torch.bfloat16 if inputs.amp and cuda else None
        visual = early.unpack_visual(ray.get(refs["visual"]))
        self.model = _Holder(visual).to(self.device).eval()
        self.zs, self.ft = _tensors(ray.get(refs["zs"])), _tensors(ray.get(refs["ft"]))
        self.heads = [
            ZeroShotHead(torch.from_numpy(w)).to(self.device) for w in ray.get(refs["heads"])
        ]
        # (path, split) -> batches decoded once in the stored nomenclature: shared validation
        # splits, test splits (test_rows)
        self.kept: dict[tuple[str, str], list[dict[str, Any]]] = {
            (path, "val"): _torch_batches([b for part in ray.get(ray.get(r)) for b in part])
            for path, r in refs["val"].items()
            if r is not None
        }
        self.base: float | None = None  # constrained rule: supported metric at alpha 0

    def _batches(self, i: int, split: str) -> Any:
        key = (self.inputs.sets[i].path, split)
        if key in self.kept:
            return self.kept[key]
        return stream_split(self.inputs, i, split)  # too large to share: stream the shards

    def rows(self, alpha: float, jobs: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """One metric row per (set, split) job at theta(alpha), in their order; the sets of
        one path share a pass of the image tower (`evaluate.classification_by_heads`)."""
        weights.load_image_state(self.model, weights.interpolate(self.zs, self.ft, alpha))
        sets, got = self.inputs.sets, {}
        for (_, split), group in evaluate.group_jobs(jobs, [s.path for s in sets]).items():
            scored = [
                (self.heads[i], evaluate.TargetMap(sets[i].mapping, self.heads[i].num_classes))
                for i in group
            ]
            # TorchScript: run the graph as eager would, without profiling runs or fusion passes
            with torch.jit.optimized_execution(False):
                ms = evaluate.classification_by_heads(
                    _ctx(self.device),
                    lambda b: self.model.visual(b["rgb"]),
                    scored,
                    self._batches(group[0], split),
                    sets[group[0]].task,
                    self.amp,
                )
            for i, m in zip(group, ms, strict=True):
                got[(i, split)] = _row(sets[i], split, alpha, m)
        return [got[j] for j in jobs]

    def supported_at_zero(self, jobs: list[tuple[int, str]]) -> float | None:
        """The constrained rule's base: the supported metric at alpha 0, once per process."""
        if self.base is None:
            self.base = role_mean(self.rows(0.0, jobs), "supported")
        return self.base


def _row(s: EvalSet, split: str, alpha: float, m: dict[str, Any]) -> dict[str, Any]:
    main = "mAP" if s.task == "multi-label" else "top1"
    return {
        "dataset": s.name,
        "nomenclature": s.nomenclature,
        "label": s.label,
        "path": s.path,
        "role": s.role,
        "split": split,
        "alpha": alpha,
        "metric": main,
        "value": m[main],
        "n": m["n"],
        "per_class": evaluate.class_values(list(s.classes), m),
    }


def _ctx(device: torch.device) -> Any:
    from mtmg.engine.context import WorkerContext

    return WorkerContext(device=device)


def stream_split(
    inputs: AlphaTrialInputs, i: int, split: str, rank: int = 0, world: int = 1
) -> Any:
    """The batches of one split of set `i`'s shard set (part `rank` of `world`), decoded from its
    shards with targets in the stored nomenclature: the same for every set of that path."""
    from mtmg.data import loader  # imports torchvision: only where a split is streamed

    ds = loader.ShardSet.open(inputs.sets[i].path)
    size, mean, std = inputs.decoder
    targets = loader.Targets.of(ds, ds.manifest["label_nomenclature"])
    dec = loader.Decoder.of(ds, "rgb", targets, size, mean=mean, std=std)
    return loader.make_loader(
        ds,
        split,
        dec,
        batch_size=inputs.eval_batch_size,
        train=False,
        rank=rank,
        world=world,
        num_workers=inputs.loader_workers,
    )


def decode_split(
    inputs: AlphaTrialInputs, i: int, split: str, max_bytes: float, rank: int = 0, world: int = 1
) -> list[dict[str, Any]] | None:
    """A split of set `i`'s shard set decoded once (part `rank` of `world`; `stream_split`), or
    None over `max_bytes`.

    With one torch thread: decoding applies small per-sample tensor ops, which torch's thread
    pool does not speed up, and when other processes keep the CPUs busy its threads wait on
    each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate.materialize(stream_split(inputs, i, split, rank, world), max_bytes)
    finally:
        torch.set_num_threads(threads)


def role_mean(rows: list[dict[str, Any]], role: str) -> float | None:
    """The mean metric of the rows of one role (several sets of a role weigh the same)."""
    vals = [r["value"] for r in rows if r["role"] == role]
    return sum(vals) / len(vals) if vals else None


_EVALUATORS: dict[str, Evaluator] = {}  # one per process and sweep: reused actors keep it


def _evaluator(inputs: AlphaTrialInputs, refs: dict[str, Any]) -> Evaluator:
    key = refs["zs"].hex()
    if key not in _EVALUATORS:
        _EVALUATORS.clear()
        _EVALUATORS[key] = Evaluator(inputs, refs)
    return _EVALUATORS[key]


def trial(config: dict[str, Any], inputs: AlphaTrialInputs) -> None:
    """One Tune trial: evaluate theta(alpha) on the validation splits and report its metrics
    and its objective, `select.score`: the rule that also chooses the sweep's alpha."""
    from ray import tune

    t0, started = time.perf_counter(), time.time()
    alpha = round(float(config["alpha"]), 6)
    inputs.faults.at_trial_start(alpha)
    t1 = time.perf_counter()
    refs = early.shared_refs(inputs.shared)  # early trials wait here for the fine-tune
    waited = time.perf_counter() - t1
    ev = _evaluator(inputs, refs)
    jobs = [(i, "val") for i, s in enumerate(inputs.sets) if s.role in ("patching", "supported")]
    rows = ev.rows(alpha, jobs)
    p, s = role_mean(rows, "patching"), role_mean(rows, "supported")
    base = None
    if inputs.selection == "constrained" and s is not None:
        base = ev.supported_at_zero([j for j in jobs if inputs.sets[j[0]].role == "supported"])
    score = select.score(inputs.selection, p, s, base, inputs.tolerance)
    metrics = {"alpha": alpha, "patching": p, "objective": score}
    if s is not None:
        metrics["supported"] = s
    if base is not None:  # the same in every trial: the base of the final choice
        metrics["supported_base"] = base
    metrics.update({f"val/{r['label']}": r["value"] for r in rows})
    metrics.update(eval_s=time.perf_counter() - t0 - waited, wait_s=waited, started=started)
    tune.report(metrics)


def test_jobs(inputs: AlphaTrialInputs) -> list[tuple[int, str]]:
    """(set, split) of the test metrics: each set's test split, its val split where it has
    none (as `mtmg.patch` reports them)."""
    from mtmg.data import loader

    return [
        (i, "test" if loader.ShardSet.open(s.path).count("test") else "val")
        for i, s in enumerate(inputs.sets)
    ]


def decode_tests(inputs: AlphaTrialInputs) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The test splits decoded once per (path, split) (those within the cache budget), for
    `test_rows(kept=)`."""
    got: dict[tuple[str, str], list[dict[str, Any]] | None] = {}
    for i, split in test_jobs(inputs):
        key = (inputs.sets[i].path, split)
        if key not in got:
            got[key] = decode_split(inputs, i, split, inputs.cache_gb * 2**30)
    return {k: v for k, v in got.items() if v is not None}


def test_rows(
    inputs: AlphaTrialInputs,
    alphas: list[float],
    chosen: float,
    worker: bool = True,
    kept: dict[tuple[str, str], list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Test metrics (val where a set has no test split) at the given alphas; each split is
    decoded once for all of them (`decode_tests`, or given already decoded in `kept`)."""
    ev = Evaluator(inputs, inputs.shared, worker=worker)
    ev.kept.update(decode_tests(inputs) if kept is None else kept)
    jobs = test_jobs(inputs)
    return [{**r, "selected": a == chosen} for a in alphas for r in ev.rows(a, jobs)]
