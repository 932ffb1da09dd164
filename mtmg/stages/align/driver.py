"""Stage 2, cross-modal alignment: distil a multispectral (or Sentinel-1) student into the
embedding space of a frozen, patched CLIP image tower (the teacher sees the RGB composite of the
same crop of the same patch).

`python -m mtmg.align --data SHARDS --teacher PATCH_RUN --out DIR [options]`

Loss = w_img * D(student, teacher) + w_txt * L(head(student), labels) + w_kd * T^2 KL(teacher
logits || student logits at temperature T), with the frozen zero-shot text head of the training
set (`loss`); a weight of 0 removes its term. The driver checks inputs and builds the heads;
`worker` (`loop`, plain PyTorch, run by Ray Train on N DDP workers) trains with a checkpoint per
epoch, evaluates (`scoring`) on validation every `--eval-every` epochs and on the test splits
at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mtmg import config
from mtmg.data import evalsets, loader, transforms
from mtmg.engine import loop
from mtmg.models import clip, heads, student
from mtmg.report import tables
from mtmg.stages import job
from mtmg.stages.align.config import DISTANCES, AlignConfig
from mtmg.stages.align.loop import worker
from mtmg.stages.align.scoring import headline

__all__ = [
    "DISTANCES",
    "AlignConfig",
    "build_student",
    "headline",
    "resolve_teacher",
    "run",
    "resolve_inputs",
    "worker",
]

Sets = list[tuple[str, str | None]]  # (absolute path, nomenclature): the training set first


def resolve_teacher(cfg: AlignConfig) -> tuple[str, str | None, str | None]:
    """(open_clip model name, weights, model config JSON) of the teacher."""
    if not cfg.teacher:
        return cfg.model, cfg.pretrained, cfg.model_config
    d = Path(cfg.teacher)
    ckpt = d / "patched.safetensors"
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"{d}: no patched.safetensors; --teacher takes the output dir of a finished "
            "`python -m mtmg.patch` (or alpha sweep); for plain CLIP use --model/--pretrained"
        )
    conf_path = d / "config.yaml"
    if not conf_path.is_file():
        raise FileNotFoundError(f"{conf_path} not found: cannot tell the teacher's architecture")
    conf = yaml.safe_load(conf_path.read_text()) or {}
    model_config = d / "model_config.json"
    mc = str(model_config) if model_config.is_file() else conf.get("model_config")
    return conf["model"], str(ckpt), mc


def resolve_inputs(cfg: AlignConfig) -> Sets:
    """Check the shard sets before anything is built: splits and the student's input bands."""
    sets = [(str(Path(cfg.data).resolve()), cfg.nomenclature)]
    sets += [(e.path, e.nomenclature) for e in evalsets.check(cfg.eval_data)]
    opened = [loader.ShardSet.open(path) for path, _ in sets]
    for n, ((path, nomen), ds) in enumerate(zip(sets, opened, strict=True)):
        if n == 0 and not ds.count("train"):
            raise ValueError(f"{path}: no 'train' split to align on")
        if not ds.count("test") and not ds.count("val"):
            raise ValueError(f"{path}: no test or val split to evaluate on")
        if cfg.student_input == "ms" and not ds.has_ms:
            raise ValueError(
                f"{path}: {ds.name} has no multispectral bands (modality "
                f"{ds.manifest['modality']}); the student needs Sentinel-2 shards"
            )
        if cfg.student_input == "s1" and not ds.manifest.get("s1_bands"):
            raise ValueError(f"{path}: no Sentinel-1 bands (shard BigEarthNet with --s1 DIR)")
        ds.classes(nomen)
    if not (cfg.w_img or cfg.w_txt or cfg.w_kd):
        raise ValueError("w_img, w_txt and w_kd are all 0: nothing to train")
    loop.train_steps(opened[0], cfg.batch_size, cfg.epochs, cfg.seed, cfg.workers)  # >= 1 batch
    return sets


def build_student(
    cfg: AlignConfig, embed_dim: int
) -> tuple[student.Student, student.InitReport | None]:
    """The student (seeded), its trunk initialised from `--student-init` when given."""
    try:
        args = json.loads(cfg.student_args) if cfg.student_args else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--student-args is not JSON: {e}") from e
    if not isinstance(args, dict):
        raise ValueError("--student-args must be a JSON object of timm keyword arguments")
    if cfg.drop_path:
        args = {"drop_path_rate": cfg.drop_path, **args}
    size = cfg.student_size or student.default_img_size(cfg.student)
    spec = student.StudentSpec(cfg.student, cfg.student_input, size, embed_dim, args)
    torch.manual_seed(cfg.seed)
    net = student.build_student(spec)
    report = None
    if cfg.student_init:
        report = student.load_trunk(net, cfg.student_init, cfg.allow_partial_init)
    return net, report


def run(cfg: AlignConfig) -> dict[str, Any]:
    """The whole stage; returns the summary also written to OUT/summary.json."""
    t0 = time.perf_counter()
    sets = resolve_inputs(cfg)
    with job.claimed("align", cfg) as out, job.tracked("align", cfg, out) as dest:
        summary = _align(cfg, sets, t0, out, dest)
        test = summary["test"]
        name = loader.ShardSet.open(sets[0][0]).name
        results = headline(test, name, cfg.student_input, "test")
        job.finish_tracking(dest, summary["steps"], results, {"test": test})
        return summary


def _align(cfg: AlignConfig, sets: Sets, t0: float, out: Path, dest: Any) -> dict[str, Any]:
    """`run` once OUT is this run's: teacher, heads, student, the Ray Train job, the outputs."""
    name, pretrained, model_config = resolve_teacher(cfg)
    torch.manual_seed(cfg.seed)
    tb = clip.load_clip(name, pretrained, model_config=model_config)
    datasets = [(loader.ShardSet.open(p), n) for p, n in sets]
    head_weights = heads.dataset_heads(tb, name, datasets, cfg.cache_dir, cfg.templates)
    net, report = build_student(cfg, head_weights[0].shape[1])
    out.mkdir(parents=True, exist_ok=True)
    tables.save_config(config.to_dict(cfg), out / "config.yaml")
    if model_config:
        shutil.copyfile(model_config, out / "teacher_model_config.json")
    conf = {
        "teacher": {
            "model": name,
            "config": str(Path(model_config).resolve()) if model_config else None,
            "build_kwargs": tb.build_kwargs,
        },
        "spec": net.spec.to_json(),
        "sets": sets,
        "tracking": dest,
    }
    shared = {
        "teacher_visual": tb.model.visual.state_dict(),
        "student_init": net.state_dict(),
        "heads": head_weights,
    }
    tensors, state = job.fit(
        worker, cfg, conf, shared=shared, out=out, name="align", weights="student"
    )
    net.load_state_dict(tensors, strict=True)
    teacher = {"model": name, "pretrained": pretrained, "dir": cfg.teacher}
    return write_outputs(cfg, out, net, state, teacher, report, time.perf_counter() - t0)


def write_outputs(cfg, out: Path, net, state, teacher, report, seconds) -> dict[str, Any]:
    """The student and how to rebuild it, the metrics table, loss curves, summary.json."""
    scaling = (
        "ms: clamp(x / 10000, 0, 1), 13 bands L1C order (B10 zero for L2A); "
        f"s1: dB clamped to {transforms.S1_DB_RANGE} -> [0, 1]"
    )
    meta = {
        "teacher": teacher,
        "data": cfg.data,
        "init": str(report) if report else None,
        "input_scaling": scaling,
    }
    student.save_student(net, out, meta)
    rows = tables.write_metrics(state["rows"], out)
    losses = state["losses"]
    curves = {
        "total": [r["loss"] for r in losses],
        **{k: [r[k] for r in losses] for k in ("img", "txt", "kd")},
    }
    title = f"alignment: {cfg.student} -> {teacher['model']}"
    steps = [r["step"] for r in losses]
    tables.plot_loss_curves(steps, curves, out / "loss_curves.png", title=title)
    final = [r for r in rows if r["epoch"] == cfg.epochs and r["split"] != "val"]
    init = [r for r in rows if r["epoch"] == 0 and r["split"] != "val"]
    summary = {
        "teacher": teacher,
        "student": net.spec.to_json(),
        "steps": state["step"],
        "epochs": state["stats"],
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "test": final,
        "untrained_test": init,
        "student_dir": str(out),
        "load_with": f"mtmg.models.student.load_student({str(out)!r}).encode(x)",
    }
    return job.write_summary(out, summary, seconds)
