"""Evaluation metrics: average precision / macro mAP, top-1 accuracy, cross-modal Recall@K.

All functions are pure and torch-based. Conventions:

- `average_precision` returns a fraction in [0, 1] (NaN without positives), matching
  scikit-learn's `average_precision_score` including its handling of tied scores.
- Every dict-returning metric reports percentages (x100): `mAP`, `per_class_ap`, `top1`, `R@K`.
- Distributed gathering is not done here; callers gather scores/targets before computing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MAIN_METRIC",
    "ScoreAccumulator",
    "average_precision",
    "classification_metrics",
    "multilabel_ap",
    "per_class",
    "recall_at_k",
    "top1_accuracy",
]

MAIN_METRIC: dict[str, str] = {"multi-label": "mAP", "single-label": "top1"}


def _binary_targets(targets: Tensor) -> Tensor:
    """Check that `targets` hold only 0/1 (or bools) and return them as a bool tensor."""
    if targets.dtype == torch.bool:
        return targets
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("targets must contain only 0 and 1")
    return targets != 0


def _ap_columns(scores: Tensor, targets: Tensor) -> Tensor:
    """AP of every column of `scores` [N, C] against bool `targets` [N, C]; float64 [C].

    Uses AP = (1 / P) * sum over positives of the precision at the end of the positive's
    group of tied scores, which equals sklearn's sum_n (R_n - R_{n-1}) P_n with thresholds at
    the distinct score values. Columns without positives give NaN.
    """
    n, c = scores.shape
    if n == 0:
        return torch.full((c,), math.nan, dtype=torch.float64)
    s = scores.detach().to(torch.float64)
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    t = targets.detach().to(s.device)
    order = torch.argsort(s, dim=0, descending=True, stable=True)
    s = torch.gather(s, 0, order)
    t = torch.gather(t, 0, order).to(torch.float64)
    tps = torch.cumsum(t, dim=0)
    idx = torch.arange(n, device=s.device).unsqueeze(1).expand(n, c)
    # Position j ends its tie group when the next score differs (or j is the last row).
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:-1] = s[1:] != s[:-1]
    ends = torch.where(is_end, idx, torch.full_like(idx, n))
    group_end = torch.flip(torch.cummin(torch.flip(ends, [0]), dim=0).values, [0])
    precision_at_end = torch.gather(tps, 0, group_end) / (group_end + 1).to(torch.float64)
    n_pos = t.sum(dim=0)
    ap = (precision_at_end * t).sum(dim=0) / n_pos
    return torch.where(n_pos > 0, ap, torch.full_like(ap, math.nan)).cpu()


def average_precision(scores: Tensor, targets: Tensor) -> float:
    """Average precision of one ranking (fraction in [0, 1]); NaN when there is no positive.

    Same definition as sklearn's `average_precision_score`: sum over distinct score thresholds
    of (R_n - R_{n-1}) * P_n, tied scores forming one threshold.
    """
    if scores.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(
            f"expected 1-D scores and targets of equal shape, got "
            f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    return float(_ap_columns(scores.unsqueeze(1), _binary_targets(targets).unsqueeze(1))[0])


def multilabel_ap(scores: Tensor, targets: Tensor) -> dict[str, Any]:
    """Per-class AP and macro mAP (both in %) over classes with at least one positive.

    Returns `{"mAP": float, "per_class_ap": list[float | None], "n_classes_evaluated": int}`;
    classes without positives get `None` and are left out of the mean (mAP is NaN if none
    is evaluated).
    """
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"expected 2-D scores and targets of equal shape, got "
            f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    ap = _ap_columns(scores, _binary_targets(targets)) * 100.0
    valid = ~torch.isnan(ap)
    n_eval = int(valid.sum())
    m_ap = float(ap[valid].mean()) if n_eval > 0 else math.nan
    per_class = [
        float(v) if ok else None for v, ok in zip(ap.tolist(), valid.tolist(), strict=True)
    ]
    return {"mAP": m_ap, "per_class_ap": per_class, "n_classes_evaluated": n_eval}


def top1_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in % (argmax, first index on ties); NaN for an empty batch."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits [N, C] and labels [N], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError("labels must be integer class indices")
    if logits.shape[0] == 0:
        return math.nan
    pred = logits.detach().argmax(dim=1)
    return float((pred == labels.to(pred.device)).double().mean()) * 100.0


def recall_at_k(
    query: Tensor,
    gallery: Tensor,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Cross-modal Recall@K in %, where query i's only correct match is gallery i.

    Cosine similarity (both sides L2-normalised). The rank of the match counts every gallery
    item scoring at least as high (pessimistic ties; scores within a few float ulps of the
    match's count as ties, so identical embeddings cannot win through rounding). K > N is
    clamped, giving 100. Queries are processed `chunk_size` at a time, so only a
    [chunk_size, N] similarity block exists at once. Returns `{"R@K": float}` for each K.
    """
    if query.ndim != 2 or query.shape != gallery.shape:
        raise ValueError(
            f"expected query and gallery [N, D] of equal shape, got "
            f"{tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    if chunk_size < 1 or any(int(k) < 1 for k in ks):
        raise ValueError("chunk_size and every K must be >= 1")
    n = query.shape[0]
    if n == 0:
        return {f"R@{int(k)}": math.nan for k in ks}
    dtype = torch.promote_types(torch.promote_types(query.dtype, gallery.dtype), torch.float32)
    q = query.detach().to(dtype)
    g = gallery.detach().to(device=q.device, dtype=dtype)
    if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(g).all())):
        raise ValueError("embeddings contain NaN or inf")
    q = F.normalize(q, dim=1)
    g = F.normalize(g, dim=1)
    tol = 8 * torch.finfo(dtype).eps
    ranks = torch.empty(n, dtype=torch.long, device=q.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = q[start:stop] @ g.T  # [B, N]
        rows = torch.arange(stop - start, device=q.device)
        true = sims[rows, rows + start]
        # 1-based rank: the match itself plus everything scoring (about) as high or higher.
        ranks[start:stop] = (sims >= (true - tol).unsqueeze(1)).sum(dim=1)
    return {f"R@{int(k)}": float((ranks <= min(int(k), n)).double().mean()) * 100.0 for k in ks}


def classification_metrics(scores: Tensor, targets: Tensor, task: str) -> dict[str, Any]:
    """Metrics for a classification task; the main key is `MAIN_METRIC[task]`.

    "multi-label": `targets` are 0/1 [N, C]; returns the `multilabel_ap` dict.
    "single-label": `targets` are int labels [N]; returns `{"top1": float}`.
    """
    if task == "multi-label":
        return multilabel_ap(scores, targets)
    if task == "single-label":
        return {"top1": top1_accuracy(scores, targets)}
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(MAIN_METRIC)}")


def per_class(scores: Tensor, targets: Tensor, task: str) -> tuple[list[float | None], list[int]]:
    """Per-class values (in %) and support: AP and positives for "multi-label" (the macro mean
    of the values is `mAP`), accuracy and samples of the class for "single-label" (their mean
    is the balanced accuracy, not `top1`); None for a class without samples."""
    if task == "multi-label":
        support = _binary_targets(targets).sum(dim=0).tolist()
        return multilabel_ap(scores, targets)["per_class_ap"], [int(n) for n in support]
    if task != "single-label":
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(MAIN_METRIC)}")
    labels = targets.to(torch.long).cpu()
    hit = (scores.detach().argmax(dim=1).cpu() == labels).double()
    n_cls = scores.shape[1]
    count = torch.bincount(labels, minlength=n_cls)
    right = torch.bincount(labels, weights=hit, minlength=n_cls)
    values = [100.0 * float(r) / int(c) if c else None for r, c in zip(right, count, strict=True)]
    return values, [int(c) for c in count]


class ScoreAccumulator:
    """Collects (scores, targets) batches on the CPU and computes `classification_metrics`."""

    def __init__(self, task: str) -> None:
        if task not in MAIN_METRIC:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(MAIN_METRIC)}")
        self.task = task
        self.main_metric = MAIN_METRIC[task]
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add one batch (scores [B, C]; targets [B, C] multi-label or [B] single-label)."""
        if scores.shape[0] != targets.shape[0]:
            raise ValueError(f"batch sizes differ: {tuple(scores.shape)} vs {tuple(targets.shape)}")
        self._scores.append(scores.detach().to("cpu", torch.float32))
        self._targets.append(targets.detach().to("cpu"))

    def __len__(self) -> int:
        return sum(s.shape[0] for s in self._scores)

    @property
    def scores(self) -> Tensor:
        """All scores collected so far, concatenated (float32, CPU)."""
        if not self._scores:
            raise ValueError("no batches accumulated")
        return torch.cat(self._scores)

    @property
    def targets(self) -> Tensor:
        """All targets collected so far, concatenated (CPU)."""
        if not self._targets:
            raise ValueError("no batches accumulated")
        return torch.cat(self._targets)

    def compute(self) -> dict[str, Any]:
        """`classification_metrics` over every batch collected so far."""
        return classification_metrics(self.scores, self.targets, self.task)

    def reset(self) -> None:
        """Drop everything collected."""
        self._scores.clear()
        self._targets.clear()
