"""Stage 2, cross-modal alignment: distil a multispectral (or Sentinel-1) student into the
embedding space of a frozen, patched CLIP image tower (the teacher sees the RGB composite of the
same crop of the same patch).

`python -m mtmg.align --data SHARDS --teacher PATCH_RUN --out DIR [options]`

Loss = w_img * D(student, teacher) + w_txt * L(head(student), labels) + w_kd * T^2 KL(teacher
logits || student logits at temperature T), with the frozen zero-shot text head of the training
set; a weight of 0 removes its term. The driver checks inputs and builds the heads; `worker`
(plain PyTorch, run by Ray Train on N DDP workers) trains with a checkpoint per epoch, evaluates
on validation every `--eval-every` epochs and on the test splits at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from mtmg import config, errors, rundir
from mtmg.data import loader as data
from mtmg.data import transforms
from mtmg.engine import evaluate, metrics
from mtmg.engine import loop as training
from mtmg.engine.context import WorkerContext
from mtmg.models import clip as models
from mtmg.models import heads
from mtmg.models import student as st
from mtmg.report import tables as results
from mtmg.runtime import train as jobs
from mtmg.runtime.cluster import init_ray

log = logging.getLogger(__name__)
option = config.option
DISTANCES = ("mse", "mse-norm", "cosine")


@dataclass(frozen=True)
class AlignConfig:
    data: str = option(help="shard set to align on (train split; val/test for evaluation)")
    out: str = option(help="output directory")
    eval_data: tuple[str, ...] = option((), help="more shard sets to evaluate the student on")
    teacher: str | None = option(
        None, help="a mtmg.patch (or alpha sweep) output dir: its patched CLIP is the teacher"
    )
    model: str = option("ViT-B-32", help="teacher open_clip model, when no --teacher dir")
    pretrained: str | None = option("openai", help="teacher pretrained tag or local file")
    model_config: str | None = option(None, help="JSON of a custom open_clip architecture")
    student: str = option("vit_small_patch16_224", help="timm ViT of the student")
    student_args: str | None = option(
        None, help="JSON of timm keyword overrides, e.g. '{\"depth\": 6}'"
    )
    student_size: int | None = option(None, help="student input size (default: the arch's)")
    student_input: str = option(
        "ms", help="ms: 13 Sentinel-2 bands; s1: VV, VH", choices=["ms", "s1"]
    )
    student_init: str | None = option(None, help="SSL4EO-S12 (timm) checkpoint for the trunk")
    allow_partial_init: bool = option(False, help="accept an init that misses trunk tensors")
    nomenclature: str | None = option(None, help="label set (default: ben19 for BigEarthNet)")
    templates: str | None = option(None, help="prompt templates file (default: the manifest's)")
    distance: str = option("mse", help="D: mse (raw, paper code), mse-norm, cosine",
                           choices=list(DISTANCES))  # fmt: skip
    w_img: float = option(1.0, help="weight of the embedding distance D (0: off)")
    w_txt: float = option(0.05, help="weight of the zero-shot head loss (0: off)")
    w_kd: float = option(0.0, help="weight of KL to the teacher's zero-shot logits (0: off)")
    kd_temperature: float = option(1.0, help="temperature of the KL term")
    lr: float = option(1e-4, help="AdamW learning rate")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    warmup_steps: int = option(2000, help="linear warm-up steps, then cosine to 0")
    epochs: int = option(5, help="training epochs")
    batch_size: int = option(256, help="global batch size (split over workers)")
    grad_clip: float = option(0.0, help="gradient-norm clip (0: off, as the paper's code)")
    augment: bool = option(True, help="random-resized crop and flips, the same for both views")
    gpu_augment: bool | None = option(
        None, help="crop/resize batches on the accelerator (default: on a GPU)"
    )
    precision: str = option(
        "auto", help="bf16 autocast on GPU with auto", choices=["auto", "fp32", "bf16"]
    )
    eval_every: int = option(1, help="validate every N epochs (0: only the final test)")
    eval_init: bool = option(True, help="also evaluate the untrained student (epoch 0)")
    recall_ks: tuple[int, ...] = option((1, 5, 10, 20, 50), help="K of retrieval Recall@K")
    workers: int = option(1, help="DDP workers")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker (and torch threads)")
    gpu: bool | None = option(None, help="use GPUs (default: when the cluster has them)")
    loader_workers: int = option(2, help="data-loading processes per worker")
    eval_batch_size: int = option(256, help="evaluation batch size per worker")
    seed: int = option(0, help="seed of shuffling, augmentation and initialisation")
    max_failures: int = option(1, help="restarts from the last checkpoint after a worker failure")
    cache_dir: str | None = option(None, help="zero-shot head cache (default ~/.cache/mtmg)")
    cluster: bool = option(False, help="connect to a running Ray cluster (RAY_ADDRESS or auto)")
    overwrite: bool = option(False, help="--out holds a run of other inputs: delete it first")


# ------------------------------------------------------------------------------------ losses


def distance(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """D(student, teacher) over a batch of embeddings: mean squared error of the raw or the
    L2-normalised embeddings, or 1 - cosine similarity."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "mse-norm":
        return F.mse_loss(F.normalize(student, dim=-1), F.normalize(teacher, dim=-1))
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown distance {kind!r} (choose from {', '.join(DISTANCES)})")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    multi_label: bool,
) -> torch.Tensor:
    """T^2 * KL(teacher || student) of the softened predictions: over classes (softmax) for
    single-label tasks, per class (sigmoid, mean over classes) for multi-label ones."""
    t = temperature
    s, q = student_logits / t, teacher_logits / t
    if multi_label:
        p = torch.sigmoid(q)
        kl = F.binary_cross_entropy_with_logits(s, p) - F.binary_cross_entropy_with_logits(q, p)
    else:
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(q, -1), log_target=True,
                      reduction="batchmean")  # fmt: skip
    return kl * t * t


def loss_parts(
    cfg: AlignConfig,
    s_emb: torch.Tensor,
    t_emb: torch.Tensor,
    head: heads.ZeroShotHead,
    target: torch.Tensor,
    multi_label: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total, unweighted parts); a term whose weight is 0 is not computed at all."""
    parts: dict[str, torch.Tensor] = {}
    if cfg.w_img:
        parts["img"] = distance(s_emb, t_emb, cfg.distance)
    if cfg.w_txt or cfg.w_kd:
        s_logits = head(s_emb)
        if cfg.w_txt:
            fn = F.binary_cross_entropy_with_logits if multi_label else F.cross_entropy
            parts["txt"] = fn(s_logits, target)
        if cfg.w_kd:
            parts["kd"] = kd_loss(s_logits, head(t_emb), cfg.kd_temperature, multi_label)
    if not parts:
        raise ValueError("w_img, w_txt and w_kd are all 0: nothing to train")
    w = {"img": cfg.w_img, "txt": cfg.w_txt, "kd": cfg.w_kd}
    return sum(w[k] * v for k, v in parts.items()), parts


# ------------------------------------------------------------------------- worker (Ray Train)


@dataclass
class Models:
    """What a worker holds: the frozen teacher tower, the student, the zero-shot heads."""

    teacher: torch.nn.Module
    student: st.Student
    heads: list[heads.ZeroShotHead]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def decoder(self, ds: data.ShardSet, nomenclature: str | None, **kw: Any) -> data.Decoder:
        spec = self.student.spec
        return data.Decoder(
            tuple(ds.manifest["bands"]), ds.manifest["modality"], f"rgb+{spec.input}",
            data.Targets.of(ds, nomenclature), self.image_size, spec.img_size, self.mean,
            self.std, **kw,
        )  # fmt: skip


def worker(conf: dict[str, Any], ctx: WorkerContext | None = None) -> dict[str, Any]:
    """Align, evaluating as configured; returns the student's weights and the run's state. Runs
    on each DDP worker (`mtmg.runtime.train.fit`), or alone (a test, a Tune trial: pass `ctx`
    with a reporter there)."""
    cfg = AlignConfig(**conf["cfg"])
    ctx = ctx or WorkerContext()
    torch.manual_seed(cfg.seed)
    teacher = conf["teacher"]
    tb = models.load_clip(teacher["model"], None, model_config=teacher["config"],
                          build_kwargs=teacher.get("build_kwargs"))  # fmt: skip
    tb.model.visual.load_state_dict(conf["teacher_visual"], strict=True)
    student = st.Student(st.StudentSpec.from_json(conf["spec"]))
    student.load_state_dict(conf["student_init"], strict=True)
    m = Models(
        tb.model.visual.to(ctx.device).eval().requires_grad_(False), student.to(ctx.device),
        [heads.ZeroShotHead.from_weights(w).to(ctx.device)
         for w in conf["heads"]],
        tb.image_size, tb.mean, tb.std,
    )  # fmt: skip
    state = _train(cfg, ctx, m, conf["sets"], conf.get("fail_once"))
    return {"student": student.state_dict(), **state}


def _train(cfg: AlignConfig, ctx, m: Models, sets, fail_once=None) -> dict[str, Any]:
    """The alignment loop; resumes from the latest Ray Train checkpoint when there is one.

    `fail_once=(marker, step)` (tests) kills the worker once at that step, to exercise resume.
    """
    ds = data.ShardSet.open(sets[0][0])
    decoder = m.decoder(
        ds, sets[0][1], augment=transforms.Augment() if cfg.augment else None, seed=cfg.seed,
        defer_augment=cfg.augment and (cfg.gpu_augment or (
            cfg.gpu_augment is None and ctx.device.type == "cuda")),
    )  # fmt: skip
    multi_label = ds.task == "multi-label"
    steps = training.train_steps(ds, cfg.batch_size, cfg.epochs, cfg.seed, ctx.world)
    params = [p for p in m.student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, training.lr_lambda(cfg.warmup_steps, sum(steps)))
    state: dict[str, Any] = {"epoch": 0, "step": 0, "losses": [], "stats": [], "rows": []}
    saved = training.load_epoch(ctx, "student", opt, sched)
    if saved:
        tensors, state = saved
        m.student.load_state_dict(tensors, strict=True)
        if state.get("done"):
            return state
        log.info("resuming at epoch %d, step %d", state["epoch"], state["step"])
    elif cfg.eval_init:
        state["rows"] += _evaluate(cfg, ctx, m, sets, "val", 0)
        state["rows"] += _evaluate(cfg, ctx, m, sets, "test", 0)
    model = ctx.wrap(m.student)
    amp = training.amp_dtype(cfg.precision, ctx.device)
    head = m.heads[0]
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        loader = data.make_loader(
            ds, "train", replace(decoder, epoch=epoch),
            batch_size=max(1, cfg.batch_size // ctx.world), train=True, rank=ctx.rank,
            world=ctx.world, num_workers=cfg.loader_workers, seed=cfg.seed, epoch=epoch,
        )  # fmt: skip
        total = torch.zeros(2, device=ctx.device)
        meter = training.ThroughputMeter(ctx.device)
        for batch in loader:
            batch = data.device_batch(batch, decoder, ctx.device)
            x, y = batch[m.student.spec.input], batch["target"]
            with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
                with torch.no_grad():
                    t_emb = m.teacher(batch["rgb"])
                s_emb = model(x)
            loss, parts = loss_parts(cfg, s_emb.float(), t_emb.float(), head, y, multi_label)
            training.optimizer_step(loss, opt, sched, params, cfg.grad_clip, state["step"])
            state["step"] += 1
            meter.step(len(y))
            training.inject_failure(fail_once, state["step"])
            total += torch.stack([loss.detach() * len(y), torch.tensor(len(y), device=ctx.device)])
            state["losses"].append(
                {"step": state["step"], "loss": loss.item(),
                 **{k: parts[k].item() if k in parts else None for k in ("img", "txt", "kd")}}
            )  # fmt: skip
        if ctx.world > 1:
            torch.distributed.all_reduce(total)
        stats = {
            "epoch": epoch + 1,
            "step": state["step"],
            "train_loss": float(total[0] / total[1]),
            "samples_per_s": meter.rate(),
        }
        state["stats"].append(stats)
        state["epoch"] = epoch + 1
        log.info("epoch %d: %s", epoch + 1, stats)
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            val = _evaluate(cfg, ctx, m, sets, "val", epoch + 1)
            state["rows"] += val
            stats.update(headline(val, ds.name, m.student.spec.input, "val"))
        training.save_epoch(ctx, "student", m.student.state_dict(), state, stats, opt, sched)
    state["rows"] += _evaluate(cfg, ctx, m, sets, "test", cfg.epochs, teacher=True)
    state["done"] = True
    training.save_epoch(ctx, "student", m.student.state_dict(), state, {"done": 1})
    return state


def headline(rows: list[dict[str, Any]], dataset: str, inp: str, prefix: str) -> dict[str, float]:
    """The training set's student metrics a sweep optimises: `<prefix>_zeroshot` (mAP or
    top-1), `<prefix>_r1` (mean of R@1 both ways), `<prefix>_cosine`; empty off rank 0."""
    got = {r["metric"]: r["value"] for r in rows
           if r["dataset"] == dataset and r["encoder"] == "student"}  # fmt: skip
    if not got:
        return {}
    main = next(k for k in got if k in metrics.MAIN_METRIC.values())
    r1 = (got[f"R@1 {inp}->rgb"] + got[f"R@1 rgb->{inp}"]) / 2 if f"R@1 {inp}->rgb" in got else None
    out = {f"{prefix}_zeroshot": got[main], f"{prefix}_cosine": got["cosine"]}
    return {**out, f"{prefix}_r1": r1} if r1 is not None else out


def _evaluate(cfg, ctx, m: Models, sets, split: str, epoch: int, teacher: bool = False):
    """Zero-shot metrics of the student (and the teacher), student-teacher cosine similarity
    and Recall@K both ways on `split` of every set ("test" falls back to "val")."""
    m.student.eval()
    amp = training.amp_dtype(cfg.precision, ctx.device)
    inp = m.student.spec.input
    rows = []
    for i, (path, nomen) in enumerate(sets):
        ds = data.ShardSet.open(path)
        sp = split if ds.count(split) else ("val" if split == "test" and ds.count("val") else None)
        if sp is None:
            continue
        loader = data.make_loader(
            ds, sp, m.decoder(ds, nomen), batch_size=cfg.eval_batch_size, train=False,
            rank=ctx.rank, world=ctx.world, num_workers=cfg.loader_workers,
        )  # fmt: skip
        got = evaluate.gather(ctx, *evaluate.predict(
            lambda b: torch.cat([m.student(b[inp]), m.teacher(b["rgb"])], 1),
            loader, ctx.device, amp,
        ))  # fmt: skip
        if got is None:
            continue
        keys, emb, targets = got
        s_emb, t_emb = emb.split(emb.shape[1] // 2, dim=1)
        head = m.heads[i]
        s_emb, t_emb = s_emb.to(ctx.device), t_emb.to(ctx.device)
        base = {"dataset": ds.name, "path": path, "split": sp, "epoch": epoch, "n": len(keys)}
        main = metrics.MAIN_METRIC[ds.task]

        def row(encoder: str, metric: str, value: float, b=base) -> dict[str, Any]:
            return {**b, "encoder": encoder, "metric": metric, "value": float(value)}

        with torch.no_grad():
            rows.append(row("student", main, metrics.classification_metrics(
                head(s_emb).cpu(), targets, ds.task)[main]))  # fmt: skip
            if teacher:
                rows.append(row("teacher", main, metrics.classification_metrics(
                    head(t_emb).cpu(), targets, ds.task)[main]))  # fmt: skip
            rows.append(row("student", "cosine", F.cosine_similarity(s_emb, t_emb).mean()))
        for name, q, g in ((f"{inp}->rgb", s_emb, t_emb), (f"rgb->{inp}", t_emb, s_emb)):
            for k, v in metrics.recall_at_k(q, g, cfg.recall_ks).items():
                rows.append(row("student", f"{k} {name}", v))
    m.student.train()
    return rows


# ------------------------------------------------------------------------------------ driver


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


def validate(cfg: AlignConfig) -> list[tuple[str, str | None]]:
    """Check the shard sets before anything is built: splits and the student's input bands."""
    sets = [(str(Path(cfg.data).resolve()), cfg.nomenclature)]
    sets += [(str(Path(p).resolve()), None) for p in cfg.eval_data]
    for n, (path, nomen) in enumerate(sets):
        ds = data.ShardSet.open(path)
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
    return sets


def build_student(cfg: AlignConfig, embed_dim: int) -> tuple[st.Student, st.InitReport | None]:
    """The student (seeded), its trunk initialised from `--student-init` when given."""
    try:
        args = json.loads(cfg.student_args) if cfg.student_args else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--student-args is not JSON: {e}") from e
    if not isinstance(args, dict):
        raise ValueError("--student-args must be a JSON object of timm keyword arguments")
    spec = st.StudentSpec(
        cfg.student, cfg.student_input, cfg.student_size or st.default_img_size(cfg.student),
        embed_dim, args,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    student = st.build_student(spec)
    report = None
    if cfg.student_init:
        report = st.load_trunk(student, cfg.student_init, cfg.allow_partial_init)
    return student, report


def run(cfg: AlignConfig, *, fail_once: tuple[str, int] | None = None) -> dict[str, Any]:
    """The whole stage; returns the summary also written to OUT/summary.json."""
    t0 = time.perf_counter()
    sets = validate(cfg)
    with rundir.claim("align", cfg, cfg.out, overwrite=cfg.overwrite):
        return _align(cfg, sets, t0, fail_once)


def _align(cfg: AlignConfig, sets, t0: float, fail_once) -> dict[str, Any]:
    """`run` once OUT is this run's: teacher, heads, student, the Ray Train job, the outputs."""
    out = Path(cfg.out).resolve()
    init_ray(cfg.cluster)  # no cluster: an error before anything is written
    name, pretrained, model_config = resolve_teacher(cfg)
    torch.manual_seed(cfg.seed)
    tb = models.load_clip(name, pretrained, model_config=model_config)
    datasets = [(data.ShardSet.open(p), n) for p, n in sets]
    head_weights = heads.dataset_heads(tb, name, datasets, cfg.cache_dir, cfg.templates)
    student, report = build_student(cfg, head_weights[0].shape[1])
    out.mkdir(parents=True, exist_ok=True)
    results.save_config(config.to_dict(cfg), out / "config.yaml")
    if model_config:
        shutil.copyfile(model_config, out / "teacher_model_config.json")
    conf = {
        "cfg": {k: tuple(v) if isinstance(v, list) else v for k, v in config.to_dict(cfg).items()},
        "teacher": {
            "model": name,
            "config": str(Path(model_config).resolve()) if model_config else None,
            "build_kwargs": tb.build_kwargs,
        },  # fmt: skip
        "spec": student.spec.to_json(),
        "sets": sets,
        "fail_once": fail_once,
    }
    shared = {"teacher_visual": tb.model.visual.state_dict(), "student_init": student.state_dict(),
              "heads": head_weights}  # fmt: skip
    tensors, state = jobs.run_job(worker, conf, cfg, shared=shared, out=out, name="align",
                                  weights="student")  # fmt: skip
    student.load_state_dict(tensors, strict=True)
    teacher = {"model": name, "pretrained": pretrained, "dir": cfg.teacher}
    return write_outputs(cfg, out, student, state, teacher, report, time.perf_counter() - t0)


def write_outputs(cfg, out: Path, student, state, teacher, report, seconds) -> dict[str, Any]:
    """The student and how to rebuild it, the metrics table, loss curves, summary.json."""
    st.save_student(student, out, {
        "teacher": teacher, "data": cfg.data, "init": str(report) if report else None,
        "input_scaling": "ms: clamp(x / 10000, 0, 1), 13 bands L1C order (B10 zero for L2A); "
                         f"s1: dB clamped to {transforms.S1_DB_RANGE} -> [0, 1]",
    })  # fmt: skip
    rows = state["rows"]
    results.write_table(rows, out / "metrics")
    losses = state["losses"]
    results.plot_loss_curves(
        [r["step"] for r in losses],
        {"total": [r["loss"] for r in losses],
         **{k: [r[k] for r in losses] for k in ("img", "txt", "kd")}},
        out / "loss_curves.png", title=f"alignment: {cfg.student} -> {teacher['model']}",
    )  # fmt: skip
    final = [r for r in rows if r["epoch"] == cfg.epochs and r["split"] != "val"]
    init = [r for r in rows if r["epoch"] == 0 and r["split"] != "val"]
    summary = {
        "teacher": teacher,
        "student": student.spec.to_json(),
        "steps": state["step"],
        "epochs": state["stats"],
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "test": final,
        "untrained_test": init,
        "student_dir": str(out),
        "load_with": f"mtmg.models.student.load_student({str(out)!r}).encode(x)",
        "seconds": round(seconds, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.align --data SHARDS --teacher PATCH_RUN --out DIR [options]`."""
    cfg = config.parse(
        AlignConfig,
        argv,
        "Cross-modal alignment: distil a multispectral student into a (patched) CLIP's "
        "embedding space (Ray Train DDP).",
        "outputs in --out: config.yaml, metrics.parquet/.csv (dataset x split x epoch x encoder\n"
        "x metric: zero-shot mAP/top1, cosine to the teacher, Recall@K both ways),\n"
        "loss_curves.png, student.safetensors + student.json\n"
        "(mtmg.models.student.load_student(DIR).encode(x)), summary.json.\n"
        "Re-running with the same --out resumes from the last epoch checkpoint.",
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = run(cfg)
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted(errors.RESUME_RUN)
    before = {(r["dataset"], r["metric"]): r["value"] for r in summary["untrained_test"]}
    print(f"{'dataset':<15} {'split':<5} {'encoder':<8} {'metric':<16} {'value':>7} untrained")
    for r in summary["test"]:
        b = before.get((r["dataset"], r["metric"])) if r["encoder"] == "student" else None
        print(f"{r['dataset']:<15} {r['split']:<5} {r['encoder']:<8} {r['metric']:<16} "
              f"{r['value']:>7.2f} {'' if b is None else f'{b:.2f}':>9}")  # fmt: skip
    print(f"outputs in {Path(cfg.out).resolve()}")
    return 0
