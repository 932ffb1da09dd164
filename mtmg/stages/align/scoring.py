"""What the alignment reports: the student's (and the teacher's) zero-shot metrics, the
student-teacher cosine similarity and Recall@K both ways, and the headline a sweep optimises."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from mtmg.data import evalsets, loader
from mtmg.engine import evaluate, loop, metrics
from mtmg.engine.context import WorkerContext
from mtmg.stages import skeleton
from mtmg.stages.align.config import AlignConfig

if TYPE_CHECKING:
    from mtmg.stages.align.loop import Models


def headline(
    rows: list[dict[str, Any]], dataset: str, inp: str, prefix: str, nomenclature: str | None = None
) -> dict[str, float]:
    """The training set's student metrics a sweep optimises: `<prefix>_zeroshot` (mAP or
    top-1), `<prefix>_r1` (mean of R@1 both ways), `<prefix>_cosine`; empty off rank 0.
    `nomenclature`: the training set's, where the set is also evaluated in others."""
    got = {
        r["metric"]: r["value"]
        for r in rows
        if r["dataset"] == dataset
        and r["encoder"] == "student"
        and (nomenclature is None or r.get("nomenclature") in (None, nomenclature))
    }
    if not got:
        return {}
    main = next(k for k in got if k in metrics.MAIN_METRIC.values())
    r1 = (got[f"R@1 {inp}->rgb"] + got[f"R@1 rgb->{inp}"]) / 2 if f"R@1 {inp}->rgb" in got else None
    out = {f"{prefix}_zeroshot": got[main], f"{prefix}_cosine": got["cosine"]}
    return {**out, f"{prefix}_r1": r1} if r1 is not None else out


def score(
    cfg: AlignConfig,
    ctx: WorkerContext,
    m: Models,
    sets: list[tuple[str, str | None]],
    split: str,
    epoch: int,
    teacher: bool = False,
) -> list[dict[str, Any]]:
    """Zero-shot metrics of the student (and the teacher) in every (set, nomenclature), with
    per-class values; student-teacher cosine similarity and Recall@K both ways once per set
    (no nomenclature); on `split` ("test" falls back to "val"). A set is decoded and embedded
    once for all its nomenclatures."""
    m.student.eval()
    rows = []
    for path in dict.fromkeys(p for p, _ in sets):
        ds = loader.ShardSet.open(path)
        sp = split if ds.count(split) else ("val" if split == "test" and ds.count("val") else None)
        got = _embed(cfg, ctx, m, ds, sp) if sp is not None else None
        if got is None:
            continue
        keys, s_emb, t_emb, targets = got
        base = {"dataset": ds.name, "path": path, "split": sp, "epoch": epoch, "n": len(keys)}
        main = metrics.MAIN_METRIC[ds.task]
        for i, (p, wanted) in enumerate(sets):
            if p != path:
                continue
            nomen = ds.nomenclature(wanted)
            t = evalsets.remap(targets, ds, nomen)
            at = {**base, "nomenclature": nomen}
            with torch.no_grad():
                for encoder, emb in (("student", s_emb), ("teacher", t_emb))[: 1 + teacher]:
                    logits = m.heads[i](emb).cpu()
                    value = metrics.classification_metrics(logits, t, ds.task)[main]
                    values, support = metrics.per_class(logits, t, ds.task)
                    per_class = list(zip(ds.classes(nomen), values, support, strict=True))
                    row = {**at, "encoder": encoder, "metric": main, "value": float(value)}
                    rows.append({**row, "per_class": per_class})
        rows += _retrieval(cfg, m.student.spec.input, base, s_emb, t_emb)
    m.student.train()
    return rows


def _embed(cfg: AlignConfig, ctx: WorkerContext, m: Models, ds: loader.ShardSet, split: str):
    """(keys, student and teacher embeddings, targets in the stored nomenclature) of a split,
    on rank 0 (None elsewhere)."""
    inp = m.student.spec.input
    stored = ds.manifest["label_nomenclature"]
    batches = skeleton.eval_loader(cfg, ctx, ds, split, m.decoder(ds, stored))

    def both(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([m.student(b[inp]), m.teacher(b["rgb"])], 1)

    amp = loop.amp_dtype(cfg.precision, ctx.device)
    got = evaluate.gather(ctx, *evaluate.predict(both, batches, ctx.device, amp))
    if got is None:
        return None
    keys, emb, targets = got
    s_emb, t_emb = emb.split(emb.shape[1] // 2, dim=1)
    return keys, s_emb.to(ctx.device), t_emb.to(ctx.device), targets


def _retrieval(cfg: AlignConfig, inp: str, base: dict, s_emb, t_emb) -> list[dict[str, Any]]:
    """The student's cosine similarity to the teacher and Recall@K both ways."""
    at = {**base, "nomenclature": None, "encoder": "student"}
    with torch.no_grad():
        cos = float(F.cosine_similarity(s_emb, t_emb).mean())
    rows = [{**at, "metric": "cosine", "value": cos}]
    for name, q, g in ((f"{inp}->rgb", s_emb, t_emb), (f"rgb->{inp}", t_emb, s_emb)):
        for k, v in metrics.recall_at_k(q, g, cfg.recall_ks).items():
            rows.append({**at, "metric": f"{k} {name}", "value": float(v)})
    return rows
