"""The backbone sweep's trials, in their own processes: one (teacher, dataset) patched, or one
(student, init, dataset) aligned."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mtmg.stages.align import driver as align
from mtmg.stages.patch import driver as patch
from mtmg.sweeps import common, trials


@dataclass(frozen=True)
class PatchTrialInputs:
    """What every patch-stage trial needs (small: trials load their own teachers)."""

    base: dict[str, Any]  # PatchConfig fields
    teachers: dict[str, tuple[str, str | None]]  # label -> (open_clip name, pretrained)
    datasets: dict[str, str]  # label -> shard set path
    supported: list[str]
    resources: trials.TrialResources
    progress: bool = True  # per-epoch reports (grid only: Optuna reads every report)


def patch_trial(params: dict[str, Any], inputs: PatchTrialInputs) -> None:
    """One (teacher, dataset): load the teacher, fine-tune, select alpha, report the metrics."""
    from ray import tune

    device = inputs.resources.start()
    name, pretrained = inputs.teachers[params["teacher"]]
    path = inputs.datasets[params["dataset"]]
    common.check_patchable(path)
    cfg = patch.PatchConfig(
        **{
            **inputs.base,
            "model": name,
            "pretrained": pretrained,
            "data": path,
            "supported": tuple(inputs.supported),
        }
    )
    sets = [("patching", path, None)]
    sets += [("supported", s, None) for s in inputs.supported if s != path]
    bundle, head_weights = trials.clip_and_heads(
        name, pretrained, cfg.model_config, cfg, [(p, None) for _, p, _ in sets]
    )
    zeroshot = {k: v.cpu() for k, v in bundle.model.state_dict().items()}
    res = trials.run_patch(
        cfg, sets, zeroshot, head_weights, device, inputs.progress, bundle.build_kwargs
    )
    alpha = res["alpha"]
    val_p, val_s = trials.val_values(res["rows"], alpha)
    test = trials.eval_values(res["rows"], alpha)
    own = test[path]
    sup = [test[s] for s in inputs.supported if s != path and s in test]

    def mean(key: str) -> float | None:
        return sum(d[key] for d in sup) / len(sup) if sup else None

    tune.report(
        {
            "alpha": alpha,
            "val_patching": val_p,
            "val_supported": val_s,
            "objective": val_p if val_s is None else (val_p + val_s) / 2,
            "metric": own["metric"],
            "test_zeroshot": own["zeroshot"],
            "test_patched": own["patched"],
            "test_finetuned": own["finetuned"],
            "test_gain": own["gain"],
            "test_supported_zeroshot": mean("zeroshot"),
            "test_supported": mean("patched"),
            "train_loss": res["stats"][-1]["train_loss"] if res["stats"] else None,
            "steps": res["step"],
            "done_training": True,
        }
    )


@dataclass(frozen=True)
class AlignTrialInputs:
    """What every align-stage trial needs, put in the object store once."""

    base: dict[str, Any]  # AlignConfig fields
    teacher: trials.TeacherInputs  # heads: one per dataset, in `datasets` order
    datasets: dict[str, str]  # label -> path
    inits: dict[str, str | None]  # label -> checkpoint
    objective: str
    resources: trials.TrialResources


def align_trial(params: dict[str, Any], inputs: AlignTrialInputs) -> None:
    """One (student, init, dataset): build the student, align, report validation each epoch
    and the test metrics at the end."""
    device = inputs.resources.start()
    path = inputs.datasets[params["dataset"]]
    init = inputs.inits[params["init"]]
    cfg = align.AlignConfig(
        **{**inputs.base, "student": params["student"], "data": path, "student_init": init}
    )
    head = inputs.teacher.heads[list(inputs.datasets.values()).index(path)]
    student, _ = align.build_student(cfg, int(head.shape[1]))
    trials.align_and_report(
        cfg,
        dataclasses.replace(inputs.teacher, heads=[head]),
        (student.spec.to_json(), student.state_dict()),
        [(path, None)],
        inputs.objective,
        device,
        student_params=sum(p.numel() for p in student.parameters()),
    )
