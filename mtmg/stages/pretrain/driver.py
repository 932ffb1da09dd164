"""A small open_clip model that is really zero-shot capable on generated coloured-shape photos.

Stand-in for CLIP's web pre-training when no real weights are at hand (offline demos, tests):
a small open_clip architecture (`mtmg-demo-vit`: 64-d embeddings, width 128) is trained from
scratch, contrastively, plain PyTorch on CPU in a minute or two, on captioned images of
- '<colour> <shape>' classes drawn by `mtmg.synth` (the pictures `synth.make_imagefolder` writes),
- land-cover words (BigEarthNet's and EuroSAT's class names) on texture pictures that look
  nothing like Sentinel-2 composites: like CLIP, the model knows the words of remote sensing
  from other pictures, and is poor at classifying satellite patches with them.
It is then evaluated zero-shot, as CLIP is: a head built from the text tower
(`heads.build_zeroshot_weights` over `labels.PHOTO_TEMPLATES`) classifies held-out images of the
evaluation classes, which are exactly `make_imagefolder(seed=SEED)`'s.

Both parts matter for PAINT's trade-off to show (bench/results/NOTES.md): without the words the
class names embed almost identically and fine-tuning gains little that interpolation can keep;
with `mtmg-tiny-vit` (32-d) supported accuracy falls from the first interpolation step.

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
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import text_global_pool
from torch import nn
from tqdm import tqdm

from mtmg import config, errors, synth
from mtmg.data import labels
from mtmg.engine import metrics
from mtmg.models import heads, weights
from mtmg.models.clip import load_clip

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
    "DEFAULT_WORDS",
    "word_image",
    "encode_captions",
    "DEFAULT_TEMPLATES",
]

CHECKPOINT = "clip.safetensors"
RESULT = "pretrain.json"
FORMAT_VERSION = 2  # bump when training changes: older cached results stop matching

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
# Land-cover words, as CLIP's web pre-training knows them: the names of mtmg's remote-sensing
# class lists (the zero-shot heads' prompt names). The text tower learns them on texture pictures
# (`word_image`) that look nothing like Sentinel-2 composites, so each name gets an embedding of
# its own (without this, unseen names embed almost identically and no fine-tuned image tower can
# be interpolated gently towards them) while zero-shot accuracy on satellite patches stays poor.
DEFAULT_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys((*labels.BEN19, *labels.BEN5, *labels.EUROSAT_PROMPT_NAMES))
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
    model: str = option("mtmg-demo-vit", help="open_clip architecture, trained from scratch")
    classes: tuple[str, ...] = option(
        DEFAULT_CLASSES, help="'<colour> <shape>' classes: trained on and evaluated zero-shot"
    )
    extra_classes: tuple[str, ...] = option(
        DEFAULT_EXTRA, help="more '<colour> <shape>' classes used in training only"
    )
    words: tuple[str, ...] = option(
        DEFAULT_WORDS, help="land-cover words learnt on texture pictures (training only)"
    )
    images_per_class: int = option(96, help="generated training images per class")
    images_per_word: int = option(32, help="generated texture pictures per word")
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
    for name in ("images_per_class", "images_per_word", "eval_per_class", "steps", "batch_size"):
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


def word_image(rng: np.random.Generator, word: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8 texture picture of a land-cover `word`.

    The word fixes a pattern (stripes, checks, dots, waves or rings), its orientation, frequency
    and two colours; `rng` varies phase, colours and grain from picture to picture.
    """
    style = synth._rng(0, "word", word)
    kind = int(style.integers(5))
    angle, freq = style.uniform(0, np.pi), style.uniform(1.5, 4.5) / size
    colours = style.uniform(20, 235, size=(2, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
    wave_u, wave_v = np.sin(2 * np.pi * freq * u + p1), np.sin(2 * np.pi * freq * v + p2)
    if kind == 0:  # stripes
        mask = wave_u > 0
    elif kind == 1:  # checks
        mask = wave_u * wave_v > 0
    elif kind == 2:  # dots
        mask = (wave_u > 0.5) & (wave_v > 0.5)
    elif kind == 3:  # waves
        mask = np.sin(2 * np.pi * freq * u + 2.5 * wave_v + p1) > 0
    else:  # rings around a random centre
        cx, cy = rng.uniform(0, size, size=2)
        mask = np.sin(2 * np.pi * freq * np.hypot(xx - cx, yy - cy) + p1) > 0
    tint = colours + rng.normal(0, 12, size=(2, 3))
    image = np.where(mask[..., None], tint[0], tint[1])
    image *= 1.0 + rng.normal(0, 0.05, size=(size, size, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


def _render_words(seed: int, words: Sequence[str], n: int, size: int):
    """uint8 texture pictures [N, size, size, 3] and word indices [N]: n per word."""
    images = [
        word_image(synth._rng(seed, "pretrain-words", w, k), w, size)
        for w in words
        for k in range(n)
    ]
    ys = np.repeat(np.arange(len(words), dtype=np.int64), n)
    return np.stack(images), ys


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


def encode_captions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` without the padding after the longest caption.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding columns after
    the longest caption cannot change the result: dropping them gives the same embeddings up to
    float rounding (tested), and faster: captions here fill at most ~20 of 77 positions.
    Other text towers run as they are.
    """
    if not (isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax"
            and model.attn_mask is not None):  # fmt: skip
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
    shape_classes = list(dict.fromkeys([*cfg.classes, *cfg.extra_classes]))
    words = [w for w in dict.fromkeys(cfg.words) if w not in shape_classes]
    train_classes = shape_classes + words
    t0 = time.perf_counter()
    images, ys = _render(cfg.seed, "pretrain-train", shape_classes, cfg.images_per_class, size)
    if words:
        w_images, w_ys = _render_words(cfg.seed, words, cfg.images_per_word, size)
        images = np.concatenate([images, w_images])
        ys = np.concatenate([ys, w_ys + len(shape_classes)])
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
        txt = encode_captions(model, tokens[uniq])[inverse]
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
  ... --model mtmg-demo-vit --pretrained runs/pretrain/clip.safetensors
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
    except KeyboardInterrupt:
        return errors.interrupted("run the same command again to train from the start")
    res = read_result(cfg.out) or {}
    print(
        f"zero-shot top-1 {res.get('zeroshot_top1', float('nan')):.1f}% on "
        f"{res.get('eval_images', '?')} held-out images of {len(cfg.classes)} classes "
        f"(chance {res.get('chance', float('nan')):.1f}%), trained in {res.get('seconds', '?')}s"
    )
    print(f"checkpoint: {ckpt}")
    print(f"use it as: --model {cfg.model} --pretrained {ckpt}")
    return 0
