"""What the sweeps' trials run in their own processes: a stage's worker (`mtmg.patch`,
`mtmg.align`) without a Ray Train worker group, reporting to Tune.

- `TrialResources`: threads, device and the test hooks (`mtmg.faults`) of every trial.
- `load_teacher`: an alignment teacher and its heads, loaded once by the driver.
- `align_and_report`: an alignment run reporting validation metrics every epoch, then test
  (`final_metrics`) on every set it evaluates.
- `run_patch`, `eval_values`, `val_values`: a patching run, its metrics at the chosen alpha.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtmg import faults
from mtmg.data import loader
from mtmg.engine import select
from mtmg.engine.context import WorkerContext
from mtmg.models import clip, heads
from mtmg.stages.align import driver as align
from mtmg.stages.patch import driver as patch


@dataclass(frozen=True)
class TrialResources:
    """What a trial may use, and the faults a test injects (none outside mtmg's tests)."""

    threads: int
    gpu: bool
    faults: faults.Faults = faults.NONE

    @classmethod
    def of(cls, cfg: Any) -> TrialResources:
        """From a sweep config's resources per trial; the faults are read once, here."""
        return cls(max(1, int(cfg.cpus_per_trial)), cfg.gpus_per_trial > 0, faults.current())

    def start(self) -> torch.device:
        """Call first in a trial: torch's threads, the injected faults; returns the device."""
        torch.set_num_threads(self.threads)
        self.faults.at_trial_start()
        return torch.device("cuda" if self.gpu and torch.cuda.is_available() else "cpu")


def objective(metrics: dict[str, float], kind: str) -> float | None:
    """An alignment sweep's objective from `align.headline` metrics (validation, in %)."""
    zs, r1 = metrics.get("val_zeroshot"), metrics.get("val_r1")
    if kind == "zeroshot":
        return zs
    if kind == "retrieval":
        return r1
    return None if zs is None or r1 is None else zs + r1


@dataclass(frozen=True)
class TeacherInputs:
    """The teacher of an alignment trial: how to rebuild it, its image tower, its heads."""

    model: dict[str, Any]  # {"model", "build_kwargs", "config"}: `align.worker`'s "teacher"
    visual: dict[str, torch.Tensor]
    heads: list[torch.Tensor]


def clip_and_heads(
    name: str,
    pretrained: str | None,
    model_config: str | None,
    cfg: Any,
    sets: list[tuple[str, str | None]],
) -> tuple[clip.ClipBundle, list[torch.Tensor]]:
    """A CLIP model (a random init seeded by `cfg.seed`) and its zero-shot heads of `sets`
    (path, nomenclature), with the head cache and templates of the stage config `cfg`."""
    torch.manual_seed(cfg.seed)
    bundle = clip.load_clip(name, pretrained, model_config=model_config)
    head_weights = heads.dataset_heads(
        bundle,
        name,
        [(loader.ShardSet.open(p), n) for p, n in sets],
        cfg.cache_dir,
        cfg.templates,
    )
    return bundle, head_weights


def load_teacher(base: align.AlignConfig, sets: list[tuple[str, str | None]]) -> TeacherInputs:
    """The teacher of `base` and its zero-shot heads of `sets` (path, nomenclature), loaded
    once by the driver."""
    name, pretrained, model_config = align.resolve_teacher(base)
    bundle, head_weights = clip_and_heads(name, pretrained, model_config, base, sets)
    model = {
        "model": name,
        "build_kwargs": bundle.build_kwargs,
        "config": str(Path(model_config).resolve()) if model_config else None,
    }
    return TeacherInputs(model, bundle.model.visual.state_dict(), head_weights)


def align_and_report(
    cfg: align.AlignConfig,
    teacher: TeacherInputs,
    student: tuple[Any, dict[str, torch.Tensor]],
    sets: list[tuple[str, str | None]],
    kind: str,
    device: torch.device,
    labels: Sequence[str] = (),
    **extra: Any,
) -> None:
    """`align.worker` in this trial from `student` (spec JSON, initial weights): validation
    metrics and the objective (`kind`) reported every epoch, then the test metrics of `sets[0]`
    (`test_*`) and of each other set under its name in `labels` (`<label>/test_*`), with `extra`
    and `done_training`."""
    from ray import tune

    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        if "epoch" not in metrics:  # the final "done" report: test metrics follow below
            return
        last.update({k: v for k, v in metrics.items() if v is not None})
        last["objective"] = objective(last, kind)
        tune.report(dict(last))

    conf = {
        "cfg": dataclasses.asdict(cfg),
        "teacher": teacher.model,
        "teacher_visual": teacher.visual,
        "spec": student[0],
        "student_init": student[1],
        "heads": teacher.heads,
        "sets": sets,
    }
    rows = align.worker(conf, WorkerContext(device=device, reporter=report))["rows"]
    test = final_metrics(cfg, rows, sets[0])
    for label, entry in zip(labels, sets[1:], strict=True):
        test.update({f"{label}/{k}": v for k, v in final_metrics(cfg, rows, entry).items()})
    tune.report({**last, **test, **extra, "done_training": True})


def final_metrics(
    cfg: align.AlignConfig, rows: list[dict[str, Any]], entry: tuple[str, str | None]
) -> dict[str, Any]:
    """`align.headline` test metrics of one set (path, nomenclature) from an alignment run's
    rows: its final scores on the test split, or on val where it has none (as scored)."""
    path, nomen = entry
    ds = loader.ShardSet.open(path)
    final = [r for r in rows if r["path"] == path and r["epoch"] == cfg.epochs]
    test = [r for r in final if r["split"] == "test"] or final
    return align.headline(test, ds.name, cfg.student_input, "test", ds.nomenclature(nomen))


def run_patch(
    cfg: patch.PatchConfig,
    sets: list[tuple[str, str, str | None]],
    zeroshot: dict[str, torch.Tensor],
    head_weights: list[torch.Tensor],
    device: torch.device,
    progress: bool = True,
    build_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`mtmg.patch.worker` in this Tune trial's process: fine-tune (with `progress`, the
    training loss reported to Tune every epoch; not for a searcher that reads every report),
    then evaluate every alpha; returns the worker's result."""
    from ray import tune

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        if progress and "train_loss" in metrics:  # the final "done" report is the caller's
            tune.report({"epoch": metrics["epoch"], "train_loss": metrics["train_loss"]})

    conf = {
        "cfg": dataclasses.asdict(cfg),
        "zeroshot": zeroshot,
        "heads": head_weights,
        "sets": sets,
        "build_kwargs": build_kwargs,
    }
    return patch.worker(conf, WorkerContext(device=device, reporter=report))


def eval_values(
    rows: list[dict[str, Any]], alpha: float, per_nomenclature: bool = False
) -> dict[Any, dict[str, Any]]:
    """path (with `per_nomenclature`: (path, nomenclature)) -> {metric, zeroshot, patched,
    finetuned, gain} from a patch run's test rows (alpha 0, the chosen alpha, 1)."""
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        if "selected" not in r:  # validation rows of the alpha grid
            continue
        key = (r["path"], r["nomenclature"]) if per_nomenclature else r["path"]
        d = out.setdefault(key, {"metric": r["metric"], "split": r["split"]})
        if r["alpha"] == 0.0:
            d["zeroshot"] = r["value"]
        if r["alpha"] == 1.0:
            d["finetuned"] = r["value"]
        if r["alpha"] == alpha:
            d["patched"] = r["value"]
    for d in out.values():
        d["gain"] = d["patched"] - d["zeroshot"]
    return out


def val_values(rows: list[dict[str, Any]], alpha: float) -> tuple[float, float | None]:
    """Validation (patching, supported) means at `alpha` (supported None without one)."""
    c = select.curves(rows, "val")
    sup = c.get("supported")
    return c["patching"][alpha], (sup[alpha] if sup else None)
