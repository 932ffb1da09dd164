"""The alignment loss: the embedding distance D, the zero-shot head loss and the distillation
term, each weighted (a weight of 0 removes its term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtmg.models import heads
from mtmg.stages.align.config import DISTANCES, AlignConfig


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
        log_s, log_q = F.log_softmax(s, -1), F.log_softmax(q, -1)
        kl = F.kl_div(log_s, log_q, log_target=True, reduction="batchmean")
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
