"""Contrastive training of a small open_clip from scratch, and its zero-shot evaluation."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import text_global_pool
from torch import nn
from tqdm import tqdm

from mtmg import logs
from mtmg.data import labels
from mtmg.engine import metrics
from mtmg.models import clip, heads
from mtmg.stages.pretrain import render
from mtmg.stages.pretrain.config import PretrainConfig

log = logging.getLogger(__name__)


@torch.no_grad()
def zeroshot_accuracy(
    model: nn.Module,
    tokenizer,
    classes: Sequence[str],
    images: np.ndarray,
    ys: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    templates: Sequence[str] = labels.PHOTO_TEMPLATES,
) -> float:
    """Zero-shot top-1 (%) of `model` on uint8 `images` with a head built from the text tower."""
    head = heads.ZeroShotHead(heads.build_zeroshot_weights(model, tokenizer, classes, templates))
    was_training = model.training
    model.eval()
    try:
        x = render.to_tensor(images, mean, std)
        feats = torch.cat([model.encode_image(x[i : i + 256]) for i in range(0, len(x), 256)])
    finally:
        model.train(was_training)
    return metrics.top1_accuracy(head(feats.float()), torch.from_numpy(ys))


def encode_captions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` without the padding after the longest caption.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding columns after
    the longest caption cannot change the result: dropping them gives the same embeddings up to
    float rounding (tested), and faster: captions here fill at most ~20 of 77 positions.
    Other text towers run as they are.
    """
    if not (
        isinstance(model, open_clip.CLIP)
        and model.text_pool_type == "argmax"
        and model.attn_mask is not None
    ):
        return model.encode_text(tokens)
    n = int((tokens != 0).sum(dim=1).max())
    t = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = text_global_pool(model.ln_final(x), t, "argmax")
    proj = model.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms, embeddings, the logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim < 2 or "embedding" in name or "logit_scale" in name or "ln_" in name
        (no_decay if flat else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over a tenth of the steps, then cosine decay to 2 % of the peak."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, same: torch.Tensor):
    """Symmetric InfoNCE; pairs whose captions name the same class count as positives too
    (with few classes a batch holds many identical captions: they are not negatives)."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = scale * img @ txt.t()
    target = same / same.sum(dim=1, keepdim=True)
    loss_i = torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-target * F.log_softmax(logits.t(), dim=1), dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def train(
    cfg: PretrainConfig, bundle: clip.ClipBundle, size: int, run: Any = None
) -> dict[str, Any]:
    """Train `bundle.model` contrastively in place on rendered shapes and word textures; each
    step's loss and learning rate go to `run` (a `mtmg.tracking.Run`) when given."""
    model = bundle.model
    shape_classes = list(dict.fromkeys([*cfg.classes, *cfg.extra_classes]))
    words = [w for w in dict.fromkeys(cfg.words) if w not in shape_classes]
    train_classes = shape_classes + words
    t0 = time.perf_counter()
    images, ys = render.shapes(
        cfg.seed, "pretrain-train", shape_classes, cfg.images_per_class, size
    )
    if words:
        w_images, w_ys = render.words(cfg.seed, words, cfg.images_per_word, size)
        images = np.concatenate([images, w_images])
        ys = np.concatenate([ys, w_ys + len(shape_classes)])
    x = render.to_tensor(images, bundle.mean, bundle.std)
    y = torch.from_numpy(ys)
    captions = [t.format(c=c) for c in train_classes for t in cfg.templates]
    tokens = bundle.tokenizer(captions)  # [classes * templates, context]
    n_t = len(cfg.templates)
    log.info(
        "pretrain: %d images of %d classes at %d px rendered in %.1fs",
        len(x),
        len(train_classes),
        size,
        time.perf_counter() - t0,
    )

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    model.train()
    show = logs.progress(cfg.progress)
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step", disable=not show)
    losses: list[float] = []
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        batch = x[idx]
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)  # mirror augmentation
        cls = y[idx]
        template = torch.randint(n_t, (cfg.batch_size,), generator=gen)
        # encode each distinct caption once, then gather: same result, less text-tower work
        uniq, inverse = torch.unique(cls * n_t + template, return_inverse=True)
        txt = encode_captions(model, tokens[uniq])[inverse]
        img = model.encode_image(batch)
        scale = model.logit_scale.exp().clamp(max=100.0)
        loss = _loss(img, txt, scale, (cls[:, None] == cls[None, :]).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if run is not None:
            run.log_metrics(step, {"train/loss": losses[-1], "train/lr": opt.param_groups[0]["lr"]})
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{float(np.mean(losses[-10:])):.3f}")
    bar.close()
    model.eval()
    return {
        "train_classes": train_classes,
        "train_images": len(x),
        "final_loss": float(np.mean(losses[-10:])),
    }
