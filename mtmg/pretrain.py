"""A small open_clip model that is really zero-shot capable on generated coloured-shape photos.

Stand-in for CLIP's web pre-training when no real weights are at hand (offline demos, tests):
a tiny open_clip architecture is trained from scratch, contrastively, on captioned images of
'<colour> <shape>' classes drawn by `mtmg.synth` (the pictures `synth.make_imagefolder` writes),
plain PyTorch on CPU, in about a minute. It is then evaluated zero-shot, as CLIP is: a head built
from the text tower (`heads.build_zeroshot_weights` over `labels.PHOTO_TEMPLATES`) classifies
held-out images of the evaluation classes, which are exactly `make_imagefolder(seed=SEED)`'s.

Output (OUT):
  clip.safetensors   the full open_clip checkpoint (`weights.save_checkpoint`); load it with
                     `--model MODEL --pretrained OUT/clip.safetensors`
  pretrain.json      the resolved config, zero-shot top-1 (%), chance level, seconds

A second call with the same config finds `pretrain.json` and returns without training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mtmg import config, heads, labels, metrics, synth, weights
from mtmg.models import load_clip

log = logging.getLogger(__name__)
option = config.option

__all__ = [
    "PretrainConfig",
    "pretrain",
    "heldout_set",
    "zeroshot_accuracy",
    "read_result",
    "main",
    "CHECKPOINT",
    "RESULT",
    "DEFAULT_CLASSES",
    "DEFAULT_EXTRA",
    "DEFAULT_TEMPLATES",
]

CHECKPOINT = "clip.safetensors"
RESULT = "pretrain.json"
FORMAT_VERSION = 1  # bump when training changes: older cached results stop matching

DEFAULT_CLASSES: tuple[str, ...] = synth.SHAPE_CLASSES
# Training-only classes: other colour/shape pairings, so that the text tower learns colour and
# shape words separately rather than six opaque captions.
DEFAULT_EXTRA: tuple[str, ...] = (
    "blue circle",
    "green circle",
    "red square",
    "yellow square",
    "red triangle",
    "purple triangle",
    "blue star",
    "orange star",
    "green cross",
    "yellow cross",
    "purple ring",
    "blue ring",
    "white circle",
    "black square",
    "pink star",
    "cyan triangle",
)
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a {c}.",
    "an image of a {c}.",
    "a picture of the {c}.",
)
_NOT_IN_KEY = ("out", "progress")  # options that do not change the trained model


@dataclass(frozen=True)
class PretrainConfig:
    out: str = option(help="OUT: directory for clip.safetensors and pretrain.json")
    model: str = option("mtmg-tiny-vit", help="open_clip architecture, trained from scratch")
    classes: tuple[str, ...] = option(
        DEFAULT_CLASSES, help="'<colour> <shape>' classes: trained on and evaluated zero-shot"
    )
    extra_classes: tuple[str, ...] = option(
        DEFAULT_EXTRA, help="more '<colour> <shape>' classes used in training only"
    )
    images_per_class: int = option(96, help="generated training images per class")
    eval_per_class: int = option(50, help="held-out images per evaluation class")
    image_size: int | None = option(None, help="image side in pixels (default: the model's)")
    steps: int = option(300, help="optimizer steps")
    batch_size: int = option(64, help="image-caption pairs per step")
    lr: float = option(2e-3, help="peak AdamW learning rate (linear warm-up, cosine decay)")
    weight_decay: float = option(0.05, help="AdamW weight decay on matrices")
    seed: int = option(0, help="seed of images, initialisation and batches")
    templates: tuple[str, ...] = option(
        DEFAULT_TEMPLATES, help="caption templates ({c} = class name), one drawn per image"
    )
    threads: int | None = option(None, help="torch CPU threads (default: torch's choice)")
    progress: bool = option(True, help="show a progress bar")


def _key(cfg: PretrainConfig) -> dict[str, Any]:
    d = config.to_dict(cfg)
    for k in _NOT_IN_KEY:
        d.pop(k)
    return {"format_version": FORMAT_VERSION, **d}


def read_result(out: str | os.PathLike) -> dict[str, Any] | None:
    """The `pretrain.json` of a finished run in `out`, or None."""
    path = Path(out) / RESULT
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _check(cfg: PretrainConfig) -> None:
    for name in (*cfg.classes, *cfg.extra_classes):
        synth._parse_shape_class(name)  # raises ValueError naming colours and shapes
    if len(set(cfg.classes)) != len(cfg.classes) or not cfg.classes:
        raise ValueError(f"classes must be distinct and non-empty: {list(cfg.classes)}")
    heads._check_templates(list(cfg.templates), "templates")
    for name in ("images_per_class", "eval_per_class", "steps", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")


def _render(seed: int, namespace: str, classes: Sequence[str], n: int, size: int):
    """uint8 images [N, size, size, 3] and class indices [N]: n per class, class-major."""
    images, ys = [], []
    for ci, cls in enumerate(classes):
        for k in range(1, n + 1):
            key = f"{cls.replace(' ', '_')}_{k}"
            images.append(synth._shape_image(synth._rng(seed, namespace, key), cls, size))
            ys.append(ci)
    return np.stack(images), np.asarray(ys, dtype=np.int64)


def _to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def heldout_set(cfg: PretrainConfig, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out evaluation images (uint8 [N, H, W, 3]) and labels [N]: for each evaluation class,
    the first `eval_per_class` pictures that `synth.make_imagefolder(seed=cfg.seed)` draws.
    Training draws from other random streams, so these are never seen in training."""
    size = size or cfg.image_size or load_clip(cfg.model).image_size
    return _render(cfg.seed, "shapes", cfg.classes, cfg.eval_per_class, int(size))


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
        x = _to_tensor(images, mean, std)
        feats = torch.cat([model.encode_image(x[i : i + 256]) for i in range(0, len(x), 256)])
    finally:
        model.train(was_training)
    return metrics.top1_accuracy(head(feats.float()), torch.from_numpy(ys))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
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


def _train(cfg: PretrainConfig, bundle, size: int) -> dict[str, Any]:
    model = bundle.model
    train_classes = list(dict.fromkeys([*cfg.classes, *cfg.extra_classes]))
    t0 = time.perf_counter()
    images, ys = _render(cfg.seed, "pretrain-train", train_classes, cfg.images_per_class, size)
    x = _to_tensor(images, bundle.mean, bundle.std)
    y = torch.from_numpy(ys)
    captions = [t.format(c=c) for c in train_classes for t in cfg.templates]
    tokens = bundle.tokenizer(captions)  # [classes * templates, context]
    n_t = len(cfg.templates)
    log.info(
        "pretrain: %d images of %d classes at %d px rendered in %.1fs",
        len(x), len(train_classes), size, time.perf_counter() - t0,
    )  # fmt: skip

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step", disable=not cfg.progress)
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
        txt = model.encode_text(tokens[uniq])[inverse]
        img = model.encode_image(batch)
        scale = model.logit_scale.exp().clamp(max=100.0)
        loss = _loss(img, txt, scale, (cls[:, None] == cls[None, :]).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{float(np.mean(losses[-10:])):.3f}")
    bar.close()
    model.eval()
    return {
        "train_classes": train_classes,
        "train_images": len(x),
        "final_loss": float(np.mean(losses[-10:])),
    }


def pretrain(cfg: PretrainConfig) -> Path:
    """Train (or find cached) and return the checkpoint path `OUT/clip.safetensors`."""
    out = Path(cfg.out)
    ckpt, result = out / CHECKPOINT, out / RESULT
    cached = read_result(out)
    if cached is not None and cached.get("key") == _key(cfg) and ckpt.is_file():
        log.info(
            "pretrain: cached run in %s (zero-shot top-1 %.1f%%); not training again",
            out, cached.get("zeroshot_top1", float("nan")),
        )  # fmt: skip
        return ckpt
    _check(cfg)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # initialisation (open_clip draws from the global RNG)
            bundle = load_clip(cfg.model)
            size = int(cfg.image_size or bundle.image_size)
            info = _train(cfg, bundle, size)
        images, ys = heldout_set(cfg, size)
        acc = zeroshot_accuracy(
            bundle.model, bundle.tokenizer, cfg.classes, images, ys, bundle.mean, bundle.std
        )
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    chance = 100.0 / len(cfg.classes)
    log.info(
        "pretrain: zero-shot top-1 %.1f%% on %d held-out images (chance %.1f%%) after %.1fs",
        acc, len(ys), chance, seconds,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    weights.save_checkpoint(bundle.model, ckpt, metadata={"mtmg_pretrain": json.dumps(_key(cfg))})
    payload = {
        "key": _key(cfg),
        "config": config.to_dict(cfg),
        "checkpoint": CHECKPOINT,
        "model": cfg.model,
        "image_size": size,
        "zeroshot_top1": acc,
        "chance": chance,
        "eval_images": int(len(ys)),
        "eval_templates": list(labels.PHOTO_TEMPLATES),
        "seconds": round(seconds, 2),
        "torch_threads": cfg.threads or threads,
        **info,
    }
    tmp = result.with_name(f".{result.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, result)
    finally:
        tmp.unlink(missing_ok=True)
    return ckpt


EPILOG = """\
output (OUT):
  clip.safetensors   full open_clip checkpoint of MODEL trained from scratch
  pretrain.json      resolved config, zero-shot top-1 on held-out images, chance, seconds

The model is evaluated zero-shot on held-out pictures of CLASSES, i.e. those that
`python -m mtmg.synth imagefolder --size SIZE --seed SEED` draws. Re-running with the same options
returns at once. With real weights (e.g. --model ViT-B-32 --pretrained openai) this is not needed.

example:
  python -m mtmg.pretrain --out runs/pretrain
  ... --model mtmg-tiny-vit --pretrained runs/pretrain/clip.safetensors
"""


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.pretrain --out DIR [options]`."""
    cfg = config.parse(
        PretrainConfig,
        argv,
        "Train a tiny open_clip model on generated coloured-shape photos, CPU, about a minute, "
        "so that it is zero-shot capable there (a stand-in for real CLIP weights).",
        EPILOG,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ckpt = pretrain(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = read_result(cfg.out) or {}
    print(
        f"zero-shot top-1 {res.get('zeroshot_top1', float('nan')):.1f}% on "
        f"{res.get('eval_images', '?')} held-out images of {len(cfg.classes)} classes "
        f"(chance {res.get('chance', float('nan')):.1f}%), trained in {res.get('seconds', '?')}s"
    )
    print(f"checkpoint: {ckpt}")
    print(f"use it as: --model {cfg.model} --pretrained {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
