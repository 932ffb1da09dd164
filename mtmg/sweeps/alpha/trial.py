"""An alpha-sweep trial (`mtmg.sweeps.alpha.driver`): theta(alpha) evaluated on validation splits.

What runs in a trial's process lives here, apart from the driver, so that a trial process
imports torch and mtmg's small modules only: no open_clip and no torchvision (their import is
much of a cold trial process's start, bench/results/NOTES.md). For CPU trials the image tower
travels as TorchScript (`pack_visual`), which loads without the code that defined it; a tower
that does not script, or one for GPU trials, travels as the module itself (its process then
imports open_clip to unpickle it).
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtmg.engine import evaluate, select
from mtmg.models import weights
from mtmg.models.heads import ZeroShotHead


@dataclass(frozen=True)
class Plan:
    """What trials need besides the object-store refs (small, picklable)."""

    sets: tuple[tuple[str, str, str | None, str], ...]  # (role, path, nomenclature, label)
    names: tuple[str, ...]  # dataset names (manifest)
    tasks: tuple[str, ...]
    decoder: tuple  # image_size, mean, std
    eval_batch_size: int
    loader_workers: int
    amp: bool
    selection: str
    tolerance: float
    threads: int
    gpu: bool
    fail_alphas: tuple[float, ...] = ()
    trial_delay: float = 0.0
    cache_gb: float = 2.0  # decode a split once while it fits (test splits, streamed sets)
    shared: dict[str, Any] = field(default_factory=dict, compare=False)


class _Holder(torch.nn.Module):
    """An open_clip-like module holding only the image tower (`visual.*` keys)."""

    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__()
        self.visual = visual


def numpy_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # read-only object-store buffers: only ever read
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _torch_batches(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Object-store numpy batches as tensors (zero-copy views, only ever read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in b.items()} for b in batches]  # fmt: skip


class Evaluator:
    """theta(alpha) on a split of every set; built once per process from the object store."""

    def __init__(self, plan: Plan, refs: dict[str, Any], *, worker: bool = True) -> None:
        import ray

        if worker:  # Ray gives a worker 1 thread; use the CPUs the trial reserved
            torch.set_num_threads(max(1, plan.threads))
        self.plan = plan
        cuda = plan.gpu and torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.amp = torch.bfloat16 if plan.amp and cuda else None
        self.model = _Holder(unpack_visual(ray.get(refs["visual"]))).to(self.device).eval()
        self.zs, self.ft = _tensors(ray.get(refs["zs"])), _tensors(ray.get(refs["ft"]))
        self.heads = [ZeroShotHead(torch.from_numpy(w)).to(self.device)
                      for w in ray.get(refs["heads"])]  # fmt: skip
        # (set, split) -> batches decoded once: shared validation splits, test splits (test_rows)
        self.kept: dict[tuple[int, str], list[dict[str, Any]]] = {
            (i, "val"): _torch_batches([b for part in ray.get(ray.get(r)) for b in part])
            for i, r in refs["val"].items() if r is not None
        }  # fmt: skip
        self.base: float | None = None  # constrained rule: supported metric at alpha 0

    def _batches(self, i: int, split: str) -> Any:
        if (i, split) in self.kept:
            return self.kept[(i, split)]
        return loader(self.plan, i, split)  # too large to share: stream the shards

    def rows(self, alpha: float, jobs: list[tuple[int, str]]) -> list[dict[str, Any]]:
        weights.load_image_state(self.model, weights.interpolate(self.zs, self.ft, alpha))
        out = []
        for i, split in jobs:
            role, path, _, label = self.plan.sets[i]
            task = self.plan.tasks[i]
            # TorchScript: run the graph as eager would, without profiling runs (they slow a fresh
            # process's first calls) or fusion passes; numbers are the same
            with torch.jit.optimized_execution(False):
                m = evaluate.classification(
                    _ctx(self.device), lambda b, h=self.heads[i]: h(self.model.visual(b["rgb"])),
                    self._batches(i, split), task, self.amp,
                )  # fmt: skip
            main = "mAP" if task == "multi-label" else "top1"
            out.append({"dataset": self.plan.names[i], "label": label, "path": path,
                        "role": role, "split": split, "alpha": alpha, "metric": main,
                        "value": m[main], "n": m["n"]})  # fmt: skip
        return out

    def supported_at_zero(self, jobs: list[tuple[int, str]]) -> float | None:
        if self.base is None:
            self.base = role_mean(self.rows(0.0, jobs), "supported")
        return self.base


def _ctx(device: torch.device) -> Any:
    from mtmg.engine.context import WorkerContext

    return WorkerContext(device=device)


def loader(plan: Plan, i: int, split: str, rank: int = 0, world: int = 1) -> Any:
    """The batches of one split of set `i` (part `rank` of `world`), decoded from its shards."""
    from mtmg.data import loader as data  # imports torchvision: only where a split is streamed

    _, path, nomen, _ = plan.sets[i]
    ds = data.ShardSet.open(path)
    size, mean, std = plan.decoder
    dec = data.Decoder(tuple(ds.manifest["bands"]), ds.manifest["modality"], "rgb",
                       data.Targets.of(ds, nomen), size, size, mean, std)  # fmt: skip
    return data.make_loader(ds, split, dec, batch_size=plan.eval_batch_size, train=False,
                            rank=rank, world=world, num_workers=plan.loader_workers)  # fmt: skip


def decode_split(
    plan: Plan, i: int, split: str, max_bytes: float, rank: int = 0, world: int = 1
) -> list[dict[str, Any]] | None:
    """A split's batches decoded once (part `rank` of `world`), or None over `max_bytes`.

    With one torch thread: decoding applies small per-sample tensor ops, which torch's thread
    pool does not speed up, and when other processes keep the CPUs busy its threads wait on
    each other (bench/results/NOTES.md).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate.materialize(loader(plan, i, split, rank, world), max_bytes)
    finally:
        torch.set_num_threads(threads)


def role_mean(rows: list[dict[str, Any]], role: str) -> float | None:
    vals = [r["value"] for r in rows if r["role"] == role]
    return sum(vals) / len(vals) if vals else None


_EVALUATORS: dict[str, Evaluator] = {}  # one per process and sweep: reused actors keep it
_HANDED: dict[str, dict[str, Any]] = {}  # the refs a Handoff gave this process, by its key


def shared_refs(plan: Plan) -> dict[str, Any]:
    """The object-store refs of the sweep's shared inputs. Trials started while the sweep's
    fine-tune runs get a `mtmg.runtime.handoff.Handoff` instead, and wait there for them (once per
    process)."""
    handoff = plan.shared.get("handoff")
    if handoff is None:
        return plan.shared
    key = plan.shared["key"]
    if key not in _HANDED:
        import ray

        _HANDED.clear()
        _HANDED[key] = ray.get(handoff.get.remote())
    return _HANDED[key]


def _evaluator(plan: Plan, refs: dict[str, Any]) -> Evaluator:
    key = refs["zs"].hex()
    if key not in _EVALUATORS:
        _EVALUATORS.clear()
        _EVALUATORS[key] = Evaluator(plan, refs)
    return _EVALUATORS[key]


def objective(p: float, s: float | None, rule: str, tolerance: float, base: float | None) -> float:
    """A trial's single objective for the search: `select.score`, the rule that also picks the
    sweep's alpha, so that Optuna's best trial is the alpha the sweep chooses."""
    return select.score(rule, p, s, base, tolerance)


def trial(config: dict[str, Any], plan: Plan) -> None:
    """One Tune trial: evaluate theta(alpha) on the validation splits and report."""
    from ray import tune

    t0, started = time.perf_counter(), time.time()
    alpha = round(float(config["alpha"]), 6)
    if any(abs(alpha - a) < 1e-9 for a in plan.fail_alphas):
        raise RuntimeError(f"injected failure at alpha={alpha:g} (--fail-alphas test hook)")
    if plan.trial_delay:
        time.sleep(plan.trial_delay)
    t1 = time.perf_counter()
    refs = shared_refs(plan)  # waits here for the fine-tune's weights when started before them
    waited = time.perf_counter() - t1
    ev = _evaluator(plan, refs)
    jobs = [(i, "val") for i, s in enumerate(plan.sets) if s[0] in ("patching", "supported")]
    rows = ev.rows(alpha, jobs)
    p, s = role_mean(rows, "patching"), role_mean(rows, "supported")
    base = None
    if plan.selection == "constrained" and s is not None:
        base = ev.supported_at_zero([j for j in jobs if plan.sets[j[0]][0] == "supported"])
    metrics = {"alpha": alpha, "patching": p,
               "objective": objective(p, s, plan.selection, plan.tolerance, base)}  # fmt: skip
    if s is not None:
        metrics["supported"] = s
    if base is not None:  # the same in every trial: the driver's base for `select.select_alpha`
        metrics["supported_base"] = base
    metrics.update({f"val/{r['label']}": r["value"] for r in rows})
    metrics.update(eval_s=time.perf_counter() - t0 - waited, wait_s=waited, started=started)
    tune.report(metrics)


def test_jobs(plan: Plan) -> list[tuple[int, str]]:
    """(set, split) of the test metrics: each set's test split, its val split where it has
    none (as `mtmg.patch` reports them)."""
    from mtmg.data import loader as data

    return [(i, "test" if data.ShardSet.open(s[1]).count("test") else "val")
            for i, s in enumerate(plan.sets)]  # fmt: skip


def decode_tests(plan: Plan) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """The test splits decoded once (those within the cache budget), for `test_rows(kept=)`."""
    got = {(i, split): decode_split(plan, i, split, plan.cache_gb * 2**30)
           for i, split in test_jobs(plan)}  # fmt: skip
    return {k: v for k, v in got.items() if v is not None}


def test_rows(
    plan: Plan,
    alphas: list[float],
    chosen: float,
    worker: bool = True,
    kept: dict[tuple[int, str], list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Test metrics (val where a set has no test split) at the given alphas; each split is
    decoded once for all of them (`decode_tests`, or given already decoded in `kept`)."""
    ev = Evaluator(plan, plan.shared, worker=worker)
    ev.kept.update(decode_tests(plan) if kept is None else kept)
    jobs = test_jobs(plan)
    return [{**r, "selected": a == chosen} for a in alphas for r in ev.rows(a, jobs)]


def pack_visual(visual: torch.nn.Module, script: bool = True) -> tuple[str, Any]:
    """The image tower for the object store: ("torchscript", bytes) where it scripts, else
    ("module", the module). TorchScript loads with torch alone (see the module docstring).

    The sweep scripts towers for CPU trials only: on GPUs TorchScript's own CUDA paths (fusion,
    autocast) would meet bf16 evaluation, and a trial process's start matters less there.
    """
    if not script:
        return "module", visual
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(visual.eval())
            buf = io.BytesIO()
            torch.jit.save(scripted, buf)
        return "torchscript", buf.getvalue()
    except Exception:  # noqa: BLE001 - not scriptable (e.g. some timm towers): send it as is
        return "module", visual


def unpack_visual(packed: tuple[str, Any]) -> torch.nn.Module:
    kind, obj = packed
    if kind == "torchscript":
        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; it works
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(obj), map_location="cpu")
    return obj
