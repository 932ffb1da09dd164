"""What the alignment reports: the student's (and the teacher's) zero-shot metrics, the
student-teacher cosine similarity and Recall@K both ways, and the headline a sweep optimises."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from mtmg.data import loader
from mtmg.engine import evaluate, loop, metrics
from mtmg.engine.context import WorkerContext
from mtmg.stages import skeleton
from mtmg.stages.align.config import AlignConfig

if TYPE_CHECKING:
    from mtmg.stages.align.loop import Models


def headline(rows: list[dict[str, Any]], dataset: str, inp: str, prefix: str) -> dict[str, float]:
    """The training set's student metrics a sweep optimises: `<prefix>_zeroshot` (mAP or
    top-1), `<prefix>_r1` (mean of R@1 both ways), `<prefix>_cosine`; empty off rank 0."""
    got = {
        r["metric"]: r["value"]
        for r in rows
        if r["dataset"] == dataset and r["encoder"] == "student"
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
    """Zero-shot metrics of the student (and the teacher), student-teacher cosine similarity
    and Recall@K both ways on `split` of every set ("test" falls back to "val")."""
    m.student.eval()
    amp = loop.amp_dtype(cfg.precision, ctx.device)
    inp = m.student.spec.input
    rows = []
    for i, (path, nomen) in enumerate(sets):
        ds = loader.ShardSet.open(path)
        sp = split if ds.count(split) else ("val" if split == "test" and ds.count("val") else None)
        if sp is None:
            continue
        batches = skeleton.eval_loader(cfg, ctx, ds, sp, m.decoder(ds, nomen))

        def both(b: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.cat([m.student(b[inp]), m.teacher(b["rgb"])], 1)

        got = evaluate.gather(ctx, *evaluate.predict(both, batches, ctx.device, amp))
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

        def zeroshot(emb: torch.Tensor, h=head, t=targets, task=ds.task, key=main) -> float:
            return metrics.classification_metrics(h(emb).cpu(), t, task)[key]

        with torch.no_grad():
            rows.append(row("student", main, zeroshot(s_emb)))
            if teacher:
                rows.append(row("teacher", main, zeroshot(t_emb)))
            rows.append(row("student", "cosine", F.cosine_similarity(s_emb, t_emb).mean()))
        for name, q, g in ((f"{inp}->rgb", s_emb, t_emb), (f"rgb->{inp}", t_emb, s_emb)):
            for k, v in metrics.recall_at_k(q, g, cfg.recall_ks).items():
                rows.append(row("student", f"{k} {name}", v))
    m.student.train()
    return rows
