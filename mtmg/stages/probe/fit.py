"""The linear classifier on frozen features: standardised features -> logits, fit full-batch
from zeros (deterministic), the L2 penalty chosen on the validation split.

Objective: mean over samples of the loss + `weight_decay / 2 * ||W||^2` (the bias is not
penalised). Multi-label: one logistic regression per class (BCE summed over classes);
single-label: softmax regression (cross-entropy). Minimised by L-BFGS with a strong-Wolfe line
search, or by AdamW steps on the same objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtmg.engine import metrics

ADAMW_LR = 0.1


@dataclass
class LinearProbe:
    """A fitted linear classifier with the standardisation of its training features."""

    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]
    weight_decay: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


@dataclass
class Fit:
    """The probe at the chosen penalty, and the validation metric of every penalty tried."""

    probe: LinearProbe
    grid: list[tuple[float, float]]  # (weight decay, validation metric %)

    @property
    def val(self) -> float:
        return dict(self.grid)[self.probe.weight_decay]


def _loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / len(y)
    return F.cross_entropy(logits, y)


def train(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    weight_decay: float,
    *,
    optimizer: str = "lbfgs",
    max_iter: int = 100,
) -> LinearProbe:
    """Fit a linear classifier to features `x` [N, D] and targets `y` (multi-hot [N, C] for
    multi-label, class indices [N] for single-label) from zero weights."""
    multi_label = y.ndim == 2
    y = y.float() if multi_label else y.long()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(n_classes, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, device=x.device, requires_grad=True)

    def objective() -> torch.Tensor:
        loss = _loss(z @ w.T + b, y, multi_label) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            [w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            return objective()

        opt.step(closure)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW([w, b], lr=ADAMW_LR, weight_decay=0.0)  # the L2 is in the loss
        for _ in range(max_iter):
            opt.zero_grad()
            objective()
            opt.step()
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} (lbfgs or adamw)")
    return LinearProbe(w.detach(), b.detach(), mean, std, float(weight_decay))


def score(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> float:
    """The main metric (%): macro mAP for multi-hot targets, top-1 for class indices."""
    task = "multi-label" if y.ndim == 2 else "single-label"
    with torch.no_grad():
        logits = probe.logits(x).float().cpu()
    return float(metrics.classification_metrics(logits, y.cpu(), task)[metrics.MAIN_METRIC[task]])


def choose(
    train_xy: tuple[torch.Tensor, torch.Tensor],
    val_xy: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    weight_decays: tuple[float, ...],
    **kw: object,
) -> Fit:
    """A probe per penalty, fit on train; the best on validation is kept (ties: the larger
    penalty)."""
    if not weight_decays:
        raise ValueError("--weight-decays: give at least one penalty")
    grid, best = [], None
    for wd in sorted(set(map(float, weight_decays)), reverse=True):
        probe = train(*train_xy, n_classes, wd, **kw)  # type: ignore[arg-type]
        value = score(probe, *val_xy)
        grid.append((wd, value))
        if best is None or value > best[0]:
            best = (value, probe)
    assert best is not None
    return Fit(best[1], sorted(grid))


def subsample(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a `fraction` of the samples, drawn with `seed`: per class for class
    indices (at least one each), of the whole set for multi-hot targets. The same seed gives
    nested samples: a smaller fraction's are a subset of a larger one's."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fractions: {fraction} is not in (0, 1]")
    n = len(y)
    if fraction == 1:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    if y.ndim == 2:
        return torch.randperm(n, generator=gen)[: max(1, round(fraction * n))].sort().values
    parts = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().squeeze(1)
        take = max(1, round(fraction * len(idx)))
        parts.append(idx[torch.randperm(len(idx), generator=gen)[:take]])
    return torch.cat(parts).sort().values
