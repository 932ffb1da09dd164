"""The alpha sweep: search PAINT's mixing coefficient with Ray Tune, no retraining.

`python sweeps/alpha_sweep.py --run PATCH_RUN --out DIR [options]`, or
`python sweeps/alpha_sweep.py --data SHARDS --supported SHARDS --out DIR [model options]` to
fine-tune once first (`mtmg.patch.run`, into DIR/patch; an existing finished one is reused).

Each trial interpolates theta(alpha) = (1 - alpha) theta_zs + alpha theta_ft and evaluates it
on the validation splits of the patching and supported sets. The driver puts everything a trial
needs in the object store once: the image tower, theta_zs, theta_ft, the zero-shot heads, and
the validation batches decoded once (while they fit in `--eval-cache-gb`; beyond that trials
stream the shards themselves). Trials run in reused actors that keep what they fetched, so a
trial costs an interpolation and an evaluation, not a process start or a disk read; the trial
code (`mtmg.sweeps.alpha.trial`) and, for CPU trials, the image tower (as TorchScript) load
with torch alone, so a trial process starts without importing open_clip or torchvision.

Search: `--search grid` evaluates `--alphas`; `--search optuna` runs TPE over `--alpha-range`
(`--num-samples` trials, the two ends first). The chosen alpha follows `--selection` (PAINT's
rule by default, `mtmg.engine.select`) over all finished trials; `--multi-objective` makes Optuna
optimise (patching metric, supported metric) jointly (over the grid with `--search grid`) and
the Pareto front is reported. Test metrics are reported at alpha 0, the chosen alpha and 1
(taken from the patch run's own test evaluation where it has them: `_run_test_rows`).
When the sweep fine-tunes itself, everything that does not depend on theta_ft (decoded splits,
the packed tower) is prepared while Ray Train trains, and on an embedded Ray the trials start
then too, at the lowest CPU priority, and wait for theta_ft (`_tune_while_fine_tuning`).

Outputs in --out: sweep.parquet/.csv (one row per trial), summary.md, summary.json,
best_config.yaml (an `mtmg.patch --config` at the chosen alpha), spec.yaml (the resolved sweep
spec), alpha_curve.png (Pareto front starred), metrics.parquet/.csv (test rows), and, laid out
like a patch run dir for the alignment stage's teacher: patched.safetensors (a full open_clip
checkpoint at the chosen alpha), config.yaml (the patch run's config) and model_config.json
when the run used one. Ray Tune's experiment lives in OUT/tune (or --storage).

Test hooks (used by tests/test_alpha_sweep.py, harmless otherwise): `--fail-alphas A ...` makes
the trials at those alphas raise; `--trial-delay S` makes every trial sleep S seconds first.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from mtmg import config, errors
from mtmg.data import loader as data
from mtmg.engine import select
from mtmg.models import weights
from mtmg.runtime import tuner as tuning
from mtmg.sweeps.alpha import trial as trial_module
from mtmg.sweeps.alpha.trial import (
    Plan,
    decode_split,
    decode_tests,
    numpy_state,
    pack_visual,
    test_jobs,
    test_rows,
    trial,
)

if TYPE_CHECKING:
    from mtmg.stages.patch import driver as patch

log = logging.getLogger(__name__)
option = config.option
NAME = "alpha_sweep"  # the Tune experiment's name under --storage
TRIAL_MODULES = (trial_module.__name__,)  # what trial processes import (preloaded when embedded)
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
RUN_FILES = ("config.yaml", "theta_zs.safetensors", "theta_ft.safetensors")


@dataclass(frozen=True)
class AlphaSweepConfig(tuning.SweepConfig):
    """Options of the alpha sweep (the common sweep options first)."""

    run: str | None = option(
        None, help="a finished `mtmg.patch` output dir (config.yaml, theta_zs/theta_ft"
        ".safetensors) to sweep"
    )  # fmt: skip
    data: str | None = option(
        None, help="patching shard set: without --run, fine-tune once (into OUT/patch) and "
        "sweep; with --run, replaces the run's"
    )  # fmt: skip
    joint_data: tuple[str, ...] = option(
        (), help="more patching shard sets fine-tuned on together with --data (PAINT's joint "
        "patching, see mtmg.patch); with --run, replace the run's"
    )  # fmt: skip
    supported: tuple[str, ...] = option(
        (), help="supported-task shard sets (with --run: replace the run's)"
    )
    eval_data: tuple[str, ...] = option((), help="more shard sets to report test metrics on")
    model: str | None = option(None, help="fine-tune: open_clip model (default: mtmg.patch's)")
    pretrained: str = option(
        "", help="fine-tune: open_clip tag or checkpoint file, 'none' for random init "
        "(default: mtmg.patch's)"
    )  # fmt: skip
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
        False, help="Optuna multi-objective search of (patching, supported) metrics; the Pareto "
        "front is reported"
    )  # fmt: skip
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
    fail_alphas: tuple[float, ...] = option((), help="test hook: trials at these alphas raise")
    trial_delay: float = option(0.0, help="test hook: every trial sleeps this long (s) first")


# ------------------------------------------------------------------------------- input checks


def check(cfg: AlphaSweepConfig) -> None:
    """Every error in the options and the run dir that can be found before Ray starts."""
    tuning.check(cfg)
    if not cfg.run and not cfg.data:
        raise ValueError("give --run PATCH_RUN_DIR, or --data SHARDS (+ --supported) to fine-tune")
    if cfg.run:
        run = Path(cfg.run)
        if not run.is_dir():
            raise FileNotFoundError(f"--run {run}: no such directory")
        missing = [f for f in RUN_FILES if not (run / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--run {run}: not a finished mtmg.patch run, missing {', '.join(missing)}"
            )
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


def patch_config(cfg: AlphaSweepConfig) -> patch.PatchConfig:
    """The patch run's config: the run's (paths overridable), or the fine-tune's to run."""
    from mtmg.stages.patch import driver as patch

    if cfg.run:
        values = config.load_yaml(patch.PatchConfig, Path(cfg.run) / "config.yaml")
        if (Path(cfg.run) / "model_config.json").is_file():  # the run dir's own copy
            values["model_config"] = str(Path(cfg.run) / "model_config.json")
        values["out"] = str(Path(cfg.run).resolve())
    else:
        values = config.load_yaml(patch.PatchConfig, cfg.patch_config) if cfg.patch_config else {}
        given = {k: getattr(cfg, k) for k in ("model", "model_config", "epochs", "batch_size",
                                              "lr", "warmup_steps", "workers")}  # fmt: skip
        values.update({k: v for k, v in given.items() if v is not None})
        if cfg.pretrained:
            values["pretrained"] = None if cfg.pretrained.lower() == "none" else cfg.pretrained
        # the fine-tune's own alpha evaluation is not the sweep: keep it to the two ends
        values.update(out=str(_run_dir(cfg)), alphas=(0.0, 1.0),
                      cluster=cfg.cluster)  # fmt: skip
    for key in ("data", "joint_data", "supported", "eval_data"):
        if getattr(cfg, key):
            values[key] = getattr(cfg, key)
    for key in ("eval_batch_size", "loader_workers", "cache_dir"):
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    values.update(selection=cfg.selection, tolerance=cfg.tolerance)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if "data" not in values:
        raise ValueError("the patch config names no --data shard set")
    pcfg = patch.PatchConfig(**values)
    paths = dict(data=_abs(pcfg.data), joint_data=tuple(_abs(p) for p in pcfg.joint_data),
                 supported=tuple(_abs(p) for p in pcfg.supported),
                 eval_data=tuple(_abs(p) for p in pcfg.eval_data))  # fmt: skip
    return replace(pcfg, **paths)


def _abs(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def _run_finished(run: Path) -> bool:
    return all((run / f).is_file() for f in (*RUN_FILES, "summary.json"))


def _run_dir(cfg: AlphaSweepConfig) -> Path:
    """The patch run swept: --run, or the sweep's own fine-tune (OUT/patch)."""
    return Path(cfg.run).resolve() if cfg.run else Path(cfg.out).resolve() / "patch"


def _spec(cfg: AlphaSweepConfig) -> dict[str, Any]:
    """The resolved sweep spec saved as spec.yaml (with the patch run swept)."""
    return {**tuning.resolved_spec(cfg), "run": str(_run_dir(cfg))}


# ------------------------------------------------------------------------------------- driver


def _labels(sets: list[tuple[str, str, str | None]]) -> list[str]:
    names = [f"{role}/{data.ShardSet.open(p).name}" for role, p, _ in sets]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def _decode(
    plan: Plan, i: int, rank: int, world: int, max_bytes: float
) -> tuple[bool, list[dict[str, Any]] | None]:
    """Part `rank` of `world` of a validation split decoded as numpy batches, in this process
    (no loader processes: never fork a process that runs Ray's threads); (False, None) when over
    the budget."""
    got = decode_split(replace(plan, loader_workers=0), i, "val", max_bytes, rank, world)
    if got is None:
        return False, None
    return True, [{k: v.numpy() if torch.is_tensor(v) else v for k, v in b.items()} for b in got]


def _decode_all(plan: Plan, sets: list[int], on_cluster: bool) -> dict[int, Any]:
    """Validation splits decoded once into the object store: set index -> ref of the list of
    its parts (refs of batch lists), or None when over `plan.cache_gb` (--eval-cache-gb;
    trials then stream the shards).

    On a cluster, parallel Ray tasks (one per part) write the batches straight into the object
    store; embedded, the driver decodes them itself (no extra worker processes to start).
    """
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(_decode).options(num_cpus=1, num_returns=2)
    parts: dict[int, list] = {}
    for i in sets:
        world = max(1, min(cpus, len(data.ShardSet.open(plan.sets[i][1]).shards("val"))))
        world = world if on_cluster else 1
        budget = plan.cache_gb * 2**30 / len(sets) / world
        if on_cluster:
            parts[i] = [task.remote(plan, i, r, world, budget) for r in range(world)]
        else:
            ok, batches = _decode(plan, i, 0, 1, budget)
            parts[i] = [(ray.put(ok), ray.put(batches))]
    out = {}
    for i, refs in parts.items():
        if all(ray.get([ok for ok, _ in refs])):
            out[i] = ray.put([b for _, b in refs])
        else:
            log.warning("%s: validation split over --eval-cache-gb; trials stream it",
                        plan.sets[i][1])  # fmt: skip
            out[i] = None
    return out


def _run_test_rows(
    run_dir: Path, plan: Plan, chosen: float, device: str
) -> tuple[list[dict[str, Any]], list[float]]:
    """Test rows at alpha 0, `chosen` and 1 that the patch run already has, and the alphas
    still to evaluate.

    `mtmg.patch` evaluates theta(alpha) on the test splits at 0, its own chosen alpha and 1 with
    the same heads and interpolation; where it did so on the same kind of device and precision
    that the sweep's test evaluation would use (`device`, `plan.amp`), its numbers are taken
    over (`source`: "patch run") instead of being computed again. An alpha that a set lacks
    (another --supported or --eval-data, another chosen alpha) is evaluated by the sweep.
    """
    path = run_dir / "metrics.parquet"
    amp = "bf16" if plan.amp and device == "cuda" else "fp32"
    known: dict[tuple, dict[str, Any]] = {}
    if path.is_file():
        import pyarrow.parquet as pq

        for r in pq.read_table(path).to_pylist():
            # the run's test-phase rows (`selected` set), evaluated as the sweep would
            if r.get("selected") is not None and (r.get("device"), r.get("amp")) == (device, amp):
                known[(r["role"], _abs(r["path"]), r["split"], float(r["alpha"]))] = r
    jobs = test_jobs(plan)
    rows: list[dict[str, Any]] = []
    todo: list[float] = []
    for a in sorted({0.0, chosen, 1.0}):
        got = [known.get((plan.sets[i][0], _abs(plan.sets[i][1]), split, a)) for i, split in jobs]
        if not all(got):
            todo.append(a)
            continue
        for (i, split), r in zip(jobs, got, strict=True):
            role, set_path, _, label = plan.sets[i]
            rows.append({"dataset": plan.names[i], "label": label, "path": set_path,
                         "role": role, "split": split, "alpha": a, "metric": r["metric"],
                         "value": r["value"], "n": r["n"], "selected": a == chosen,
                         "source": "patch run"})  # fmt: skip
    return rows, todo


def _search(cfg: AlphaSweepConfig, has_supported: bool) -> tuple[dict | None, Any, int]:
    """(param_space, search algorithm, num_samples) of the sweep."""
    from ray import tune

    if cfg.search == "grid" and not cfg.multi_objective:
        return {"alpha": tune.grid_search([float(a) for a in cfg.alphas])}, None, 1
    import optuna

    lo, hi = cfg.alpha_range
    step = cfg.alpha_step or None
    if cfg.search == "grid":  # multi-objective over the grid: Optuna evaluates exactly it
        lo, hi, step = 0.0, 1.0, None
        points, n = [{"alpha": float(a)} for a in cfg.alphas], len(cfg.alphas)
    else:
        points, n = [{"alpha": lo}, {"alpha": hi}][: cfg.num_samples], cfg.num_samples
    space = {"alpha": optuna.distributions.FloatDistribution(lo, hi, step=step)}
    if cfg.multi_objective:
        metric, mode = ["patching", "supported"], ["max", "max"]
    else:
        metric, mode = "objective", "max"
    return None, tuning.optuna_search(space, metric, mode, seed=cfg.seed, points=points), n


def _plan(cfg: AlphaSweepConfig, pcfg: patch.PatchConfig, bundle, sets) -> Plan:
    labels = _labels(sets)
    return Plan(
        sets=tuple((r, p, n, lab) for (r, p, n), lab in zip(sets, labels, strict=True)),
        names=tuple(data.ShardSet.open(p).name for _, p, _ in sets),
        tasks=tuple(data.ShardSet.open(p).task for _, p, _ in sets),
        decoder=(bundle.image_size, tuple(bundle.mean), tuple(bundle.std)),
        eval_batch_size=pcfg.eval_batch_size, loader_workers=pcfg.loader_workers,
        amp=pcfg.precision != "fp32", selection=cfg.selection, tolerance=cfg.tolerance,
        threads=max(1, int(cfg.cpus_per_trial)), gpu=cfg.gpus_per_trial > 0,
        fail_alphas=tuple(cfg.fail_alphas), trial_delay=cfg.trial_delay,
        cache_gb=cfg.eval_cache_gb,
    )  # fmt: skip


def _in_background(fn: Callable[..., Any], *args: Any, name: str = "mtmg-prepare") -> Future:
    """`fn(*args)` in a daemon thread (a Ctrl-C'd sweep does not wait for it to finish)."""
    fut: Future = Future()

    def target() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the result
            fut.set_exception(e)

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


def _prepare(plan: Plan, visual: torch.nn.Module, on_cluster: bool, tests: bool) -> dict:
    """What the trials and the test metrics need that does not depend on theta_ft: the
    validation splits decoded into the object store, the image tower packed (its weights are
    replaced by theta(alpha) in every trial), and, when `tests`, the test splits decoded for
    the driver's own test evaluation."""
    import ray

    val = [i for i, s in enumerate(plan.sets) if s[0] in ("patching", "supported")]
    return {
        "val": _decode_all(plan, val, on_cluster),
        "visual": ray.put(pack_visual(visual, script=not plan.gpu)),
        "tests": decode_tests(replace(plan, loader_workers=0)) if tests else {},
    }


@dataclass
class _Inputs:
    """What the trials and the driver's test metrics take from a finished patch run."""

    shared: dict[str, Any]  # the object-store refs every trial reads (`Plan.shared`)
    theta_zs: dict[str, torch.Tensor]
    theta_ft: dict[str, torch.Tensor]
    tests: dict  # test splits decoded for the driver's own test evaluation (`_prepare`)
    ready_at: float = field(default_factory=time.perf_counter)  # when the trials could start


def _load_run(run_dir: Path, pcfg: patch.PatchConfig, bundle, sets, prepared: dict) -> _Inputs:
    """The run's weights and heads into the object store, beside what `_prepare` made."""
    import ray

    from mtmg.stages.patch import driver as patch

    if (run_dir / "patched.safetensors").is_file():  # the run's text tower, exactly
        bundle.model.load_state_dict(load_file(str(run_dir / "patched.safetensors")), strict=True)
    theta_zs = load_file(str(run_dir / "theta_zs.safetensors"))
    theta_ft = load_file(str(run_dir / "theta_ft.safetensors"))
    weights.load_image_state(bundle.model, theta_zs)  # also checks the run's tensors fit
    heads = patch.build_heads(pcfg, bundle, sets)  # as the fine-tune built them (cached)
    shared = {
        "visual": prepared["visual"],
        "zs": ray.put(numpy_state(theta_zs)),
        "ft": ray.put(numpy_state(theta_ft)),
        "heads": ray.put([h.cpu().numpy() for h in heads]),
        "val": prepared["val"],
    }
    return _Inputs(shared, theta_zs, theta_ft, prepared["tests"])


def _early_trials(cfg: AlphaSweepConfig, on_cluster: bool, found: bool) -> bool:
    """Whether the trials start while the sweep's own fine-tune runs (`_tune_while_fine_tuning`):
    CPU trials of a new sweep on the embedded Ray, where they hold trial slots
    (`mtmg.runtime.cluster.TRIAL_SLOT`), not the CPUs Ray Train's workers hold. Not on a
    cluster: there the trials would hold CPUs idle for as long as the fine-tune takes."""
    import ray

    from mtmg.runtime.cluster import TRIAL_SLOT

    slots = ray.cluster_resources().get(TRIAL_SLOT, 0)
    return not (on_cluster or found or cfg.gpus_per_trial) and slots >= cfg.cpus_per_trial


def _tune_while_fine_tuning(
    plan: Plan, fine_tune: Callable[[Callable[[], None]], _Inputs], tune_args: dict[str, Any]
) -> tuple[Any, _Inputs]:
    """Run `fine_tune(on_train_start)` in a thread, with the Tune trials started from its
    `on_train_start`: (ResultGrid, the inputs the fine-tune made).

    A trial process starts by booting a Ray worker and importing Ray Tune and torch, seconds of
    CPU that would otherwise all come after the fine-tune. Started with the Train job, they do
    so at the lowest CPU priority (`handoff.LOW_PRIORITY_ENV`: on the CPU time the fine-tune
    leaves idle, not slowing it; bench/results/NOTES.md), then wait at a `Handoff` for the refs
    of theta_ft and the rest (`trial.shared_refs`).

    Tune runs in the main thread, so Ctrl-C stops it as usual; the trials have not run then:
    the sweep ends, and `--resume` fine-tunes from Ray Train's checkpoint and runs them. When
    the fine-tune fails, the waiting trials fail with it and the experiment is deleted (nothing
    in it to resume).
    """
    from mtmg.runtime.cluster import TRIAL_SLOT
    from mtmg.runtime.handoff import LOW_PRIORITY_ENV, Handoff

    handoff = Handoff.remote()
    training = threading.Event()

    def hand_over() -> _Inputs:
        try:
            got = fine_tune(training.set)
        except BaseException as e:
            handoff.fail.remote(f"the sweep's fine-tune failed: {tuning.error_text(e)}")
            raise
        handoff.put.remote(got.shared)
        return got

    job = _in_background(hand_over, name="mtmg-fine-tune")
    job.add_done_callback(lambda _: training.set())
    training.wait()
    if job.done() and job.exception() is not None:
        job.result()  # failed before its Train job: raises
    cfg = tune_args["cfg"]
    early = replace(plan, shared={"handoff": handoff, "key": uuid.uuid4().hex})
    grid = tuning.run_tuner(tuning.bind(trial, plan=early),
                            resources={TRIAL_SLOT: cfg.cpus_per_trial},
                            trial_env=LOW_PRIORITY_ENV, **tune_args)  # fmt: skip
    if not job.done() and any(r.error is None for r in grid):  # trials left waiting: Ctrl-C
        raise KeyboardInterrupt(
            "alpha sweep interrupted during its fine-tune; run it again with --resume"
        )
    try:
        return grid, job.result()
    except BaseException:
        tuning.remove_experiment(cfg, NAME)
        raise


def run(cfg: AlphaSweepConfig) -> dict[str, Any]:
    """The whole sweep; returns the summary also written to OUT/summary.json. OUT is the
    sweep's alone while it runs (`tune.claim`)."""
    check(cfg)
    with tuning.claim(cfg, NAME):
        return _sweep(cfg)


def _sweep(cfg: AlphaSweepConfig) -> dict[str, Any]:
    import ray

    from mtmg.report import tables as results
    from mtmg.stages.patch import driver as patch

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    out = Path(cfg.out).resolve()
    found = tuning.can_resume(cfg, NAME)
    pcfg = patch_config(cfg)
    if cfg.multi_objective and not pcfg.supported:
        raise ValueError("--multi-objective needs a supported set (--supported)")
    if cfg.run:  # not before a fine-tune: see tune.preload
        tuning.preload(cfg, TRIAL_MODULES)
    run_dir = _run_dir(cfg)
    fine_tune = not cfg.run and not _run_finished(run_dir)
    if not cfg.run and not fine_tune:
        log.info("reusing the finished fine-tune in %s", run_dir)
    bundle, sets = patch.validate(pcfg)  # input errors before Ray starts
    on_cluster = tuning.init(cfg)
    plan = _plan(cfg, pcfg, bundle, sets)
    if on_cluster:
        from mtmg.runtime.cluster import check_paths_visible

        local = [p for _, p, _ in sets if "://" not in p]
        store, _ = tuning.experiment(cfg, NAME)
        check_paths_visible(local, store if "://" not in store else str(out))
    # Prepared while the fine-tune runs: the driver only waits for Ray Train then, and the
    # training workers leave CPUs idle (decoding the validation splits of a real dataset takes
    # minutes). `bundle` is this function's own (mtmg.patch builds its model itself) and is
    # not touched until the preparation is done.
    in_driver = not (on_cluster or cfg.gpus_per_trial)  # where the test metrics are computed
    ready: list[Future] = []

    def start() -> None:  # not before: its Python work would slow the fine-tune's launch
        ready.append(_in_background(_prepare, plan, bundle.model.visual.cpu(), on_cluster,
                                    in_driver))  # fmt: skip

    def inputs() -> _Inputs:  # once theta_ft exists
        if not ready:
            start()
        t = time.perf_counter()
        got = _load_run(run_dir, pcfg, bundle, sets, ready[0].result())
        times["prepare_s"] = time.perf_counter() - t
        return got

    def fine_tuned(on_train_start: Callable[[], None] | None = None) -> _Inputs:
        def started() -> None:
            start()
            if on_train_start is not None:
                on_train_start()

        # validates again (its own model), then fine-tunes under Ray Train
        patch.run(pcfg, on_train_start=started)
        times["fine_tune_s"] = time.perf_counter() - t0
        return inputs()

    out.mkdir(parents=True, exist_ok=True)
    spec = _spec(cfg)
    results.save_config(spec, out / "spec.yaml")
    param_space, search_alg, n = _search(cfg, bool(pcfg.supported))
    tune_args = dict(cfg=cfg, name=NAME, param_space=param_space, search_alg=search_alg,
                     num_samples=n)  # fmt: skip
    if fine_tune and _early_trials(cfg, on_cluster, found):
        grid, got = _tune_while_fine_tuning(plan, fine_tuned, tune_args)
    else:
        got = fine_tuned() if fine_tune else inputs()
        grid = tuning.run_tuner(tuning.bind(trial, plan=replace(plan, shared=got.shared)),
                                **tune_args)  # fmt: skip
    times["tune_s"] = time.perf_counter() - got.ready_at  # Tune's time once the weights exist
    plan = replace(plan, shared=got.shared)
    rows = tuning.trial_rows(grid, final_key="patching")  # a trial reports once, at its end
    rows.sort(key=lambda r: (r.get("alpha") is None, r.get("alpha") or r.get("config/alpha") or 0))
    ok = [r for r in rows if r["status"] == "TERMINATED" and r.get("patching") is not None]
    if not ok:
        errors = "; ".join(f"alpha={r.get('config/alpha')}: {r['error']}" for r in rows[:3])
        raise RuntimeError(f"no trial of the sweep finished ({errors})")
    val_rows = [
        {"alpha": r["alpha"], "role": s[0], "split": "val", "value": r[f"val/{s[3]}"],
         "dataset": s[3]}
        for r in ok for s in plan.sets if f"val/{s[3]}" in r and r[f"val/{s[3]}"] is not None
    ]  # fmt: skip
    # the alpha-0 supported metric the trials' objectives used: Optuna's best is the chosen alpha
    base = next((r["supported_base"] for r in ok if r.get("supported_base") is not None), None)
    chosen = select.select_alpha(val_rows, cfg.selection, cfg.tolerance, base=base)
    front: list[float] = []
    if pcfg.supported:
        curves = select.curves(val_rows)
        pts = [(a, (curves["patching"][a], curves["supported"][a])) for a in curves["patching"]]
        front = sorted(tuning.pareto_front(pts))
    for r in rows:
        r["chosen"] = r.get("alpha") == chosen and r["status"] == "TERMINATED"
        r["pareto"] = r.get("alpha") in front and r["status"] == "TERMINATED"
    t3 = time.perf_counter()
    test, todo = _run_test_rows(run_dir, plan, chosen, "cuda" if cfg.gpus_per_trial else "cpu")
    if todo and not in_driver:  # where the trials ran: a node with their resources
        task = ray.remote(test_rows).options(
            num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial or None
        )
        test += ray.get(task.remote(plan, todo, chosen))
    elif todo:  # embedded: this process (decoding without forking it: Ray's threads run here)
        test += test_rows(replace(plan, loader_workers=0), todo, chosen, worker=False,
                          kept=got.tests)  # fmt: skip
    for r in test:
        r.setdefault("source", "sweep")
    order = {(s[0], s[1]): i for i, s in enumerate(plan.sets)}
    test.sort(key=lambda r: (r["alpha"], order[(r["role"], r["path"])]))
    times["test_s"] = time.perf_counter() - t3
    summary = _write(cfg, pcfg, out, run_dir, bundle, got.theta_zs, got.theta_ft, rows, val_rows,
                     test, chosen, front, spec, grid.experiment_path, on_cluster)  # fmt: skip
    times["total_s"] = time.perf_counter() - t0
    summary["timings"] = {k: round(v, 3) for k, v in times.items()}
    tuning.write_outputs(out, rows, summary_md=summary.pop("_md"), summary=summary, spec=spec,
                         best_config=summary.pop("_best"))  # fmt: skip
    return summary


def _write(cfg, pcfg, out, run_dir, bundle, theta_zs, theta_ft, rows, val_rows, test, chosen,
           front, spec, experiment_path, on_cluster) -> dict[str, Any]:  # fmt: skip
    """Checkpoint, plot, metrics table and the summary (written by the caller)."""
    from mtmg.report import tables as results

    weights.load_image_state(bundle.model, weights.interpolate(theta_zs, theta_ft, chosen))
    weights.save_checkpoint(bundle.model, out / "patched.safetensors",
                            metadata={"alpha": repr(chosen), "source": str(run_dir)},
                            build_kwargs=bundle.build_kwargs)  # fmt: skip
    run_cfg = {**config.to_dict(pcfg), "out": str(run_dir)}
    if pcfg.model_config:
        shutil.copyfile(pcfg.model_config, out / "model_config.json")
        run_cfg["model_config"] = str(out / "model_config.json")
    results.save_config(run_cfg, out / "config.yaml")
    best = {**run_cfg, "alphas": [chosen], "out": str(out / "patch-best")}
    results.plot_alpha_curve(
        select.curves(val_rows), chosen, out / "alpha_curve.png", pareto=front,
        title=f"{pcfg.model}: alpha sweep, {len(select.curves(val_rows)['patching'])} alphas "
        "(validation)",
    )  # fmt: skip
    results.write_table(test, out / "metrics")
    failed = [{"alpha": r.get("config/alpha"), "trial_id": r["trial_id"], "error": r["error"]}
              for r in rows if r["status"] != "TERMINATED"]  # fmt: skip
    summary: dict[str, Any] = {
        "alpha": chosen,
        "selection": cfg.selection,
        "search": cfg.search,
        "multi_objective": cfg.multi_objective,
        "model": pcfg.model,
        "run": str(run_dir),
        "on_cluster": on_cluster,
        "trials": {"total": len(rows), "finished": len(rows) - len(failed), "failed": len(failed)},
        "failed": failed,
        "pareto_front": [
            {k: r.get(k) for k in ("alpha", "patching", "supported")} for r in rows if r["pareto"]
        ],  # fmt: skip
        "test": test,
        "patched_checkpoint": str(out / "patched.safetensors"),
        "load_with": f"open_clip.create_model({pcfg.model!r}, pretrained='patched.safetensors')",
        "best_config": str(out / "best_config.yaml"),
        "experiment": experiment_path,
    }
    summary["_md"] = _markdown(summary, rows, cfg)
    summary["_best"] = best
    return summary


def _markdown(summary: dict[str, Any], rows: list[dict[str, Any]], cfg) -> str:
    cols = ["alpha", "patching", "supported", "objective", "status", "pareto", "chosen",
            "time_s", "error"]  # fmt: skip
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
    test_cols = ["role", "dataset", "split", "alpha", "metric", "value", "n", "selected",
                 "source"]  # fmt: skip
    lines = [
        f"# Alpha sweep: {summary['model']}",
        "",
        f"Chosen alpha **{summary['alpha']:g}** ({cfg.selection} rule: "
        f"{select.RULES[cfg.selection]}), over {summary['trials']['finished']} finished trials "
        f"({cfg.search} search{', multi-objective' if cfg.multi_objective else ''}); "
        f"{summary['trials']['failed']} failed.",
        "",
        "Best config (`python -m mtmg.patch --config best_config.yaml`): `best_config.yaml`; "
        "patched checkpoint: `patched.safetensors`.",
        "",
        "## Test metrics (alpha 0, chosen, 1)",
        "",
        tuning.markdown_table(summary["test"], test_cols),
        "",
    ]
    if summary["pareto_front"]:
        lines += ["## Pareto front (validation)", "",
                  tuning.markdown_table(summary["pareto_front"], ["alpha", "patching",
                                                                  "supported"]), ""]  # fmt: skip
    if cfg.selection == "constrained":
        picked = next((r for r in rows if r.get("chosen")), {})
        base = next((r["supported_base"] for r in rows if r.get("supported_base") is not None),
                    None)  # fmt: skip
        if not select.feasible(picked.get("supported"), base, cfg.tolerance):
            lines[4:4] = [  # under the chosen alpha
                f"Note: no alpha in the searched range keeps supported within tolerance: least "
                f"drop (supported {picked['supported']:.2f} at alpha {summary['alpha']:g}, "
                f"{base:.2f} at alpha 0, --tolerance {cfg.tolerance:g}).",
                "",
            ]
    lines += ["## Trials (validation)", "", tuning.markdown_table(rows, cols), ""]
    if summary["failed"]:
        lines += ["## Failed trials", ""]
        lines += [
            f"- alpha={f['alpha']} ({f['trial_id']}): {f['error']}" for f in summary["failed"]
        ]
        lines += ["", "Re-run them with `--resume --retry-failed`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python sweeps/alpha_sweep.py --run DIR --out DIR [options]`."""
    cfg = tuning.parse(
        AlphaSweepConfig,
        argv,
        "Alpha sweep of PAINT patching with Ray Tune: interpolate a patch run's theta_zs and "
        "theta_ft, evaluate every alpha on validation splits, choose alpha, report test metrics.",
        "input: --run PATCH_RUN_DIR, or --data SHARDS --supported SHARDS [model options] to\n"
        "fine-tune once first (into OUT/patch).\n"
        "outputs in --out: sweep.parquet/.csv, summary.md, summary.json, best_config.yaml,\n"
        "spec.yaml, alpha_curve.png, metrics.parquet/.csv (test), patched.safetensors and\n"
        "config.yaml (a patch-run layout the alignment teacher loads). Ray Tune's experiment:\n"
        "OUT/tune (--storage); an interrupted sweep continues with --resume.",
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        summary = run(cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt as e:
        return errors.interrupted(str(e) or errors.RESUME_SWEEP)
    print(f"chosen alpha = {summary['alpha']:g} ({cfg.selection} rule on validation; "
          f"{summary['trials']['finished']} trials finished, "
          f"{summary['trials']['failed']} failed)")  # fmt: skip
    if summary["pareto_front"]:
        print(
            "Pareto front: alpha " + ", ".join(f"{p['alpha']:g}" for p in summary["pareto_front"])
        )
    for r in summary["test"]:
        mark = "*" if r["selected"] else " "
        print(f"{mark} {r['dataset']:<24} {r['split']:<5} alpha={r['alpha']:<6g} "
              f"{r['metric']}={r['value']:.2f}")  # fmt: skip
    print(f"outputs in {Path(cfg.out).resolve()}")
    return 0
