"""The pretraining options (`python -m mtmg.pretrain --help` lists them), their defaults, and
the key that says whether a cached run was trained with the same ones."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtmg import config
from mtmg.data import labels
from mtmg.synth.shapes import SHAPE_CLASSES, parse_shape_class

option = config.option

CHECKPOINT = "clip.safetensors"
RESULT = "pretrain.json"
FORMAT_VERSION = 2  # bump when training changes: older cached results stop matching

DEFAULT_CLASSES: tuple[str, ...] = SHAPE_CLASSES
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
_NOT_IN_KEY = ("out", "progress", "report_to")  # options that do not change the trained model


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
    report_to: tuple[str, ...] = option(
        (), help="also track the run in tensorboard,mlflow,wandb (any subset; README: Tracking)"
    )


def cache_key(cfg: PretrainConfig) -> dict[str, Any]:
    """The options that change the trained model, with the format version."""
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


def check_options(cfg: PretrainConfig) -> None:
    """Refuse options that cannot train (ValueError naming the option)."""
    from mtmg import tracking

    tracking.check(cfg.report_to)
    for name in (*cfg.classes, *cfg.extra_classes):
        parse_shape_class(name)  # raises ValueError naming colours and shapes
    if len(set(cfg.classes)) != len(cfg.classes) or not cfg.classes:
        raise ValueError(f"classes must be distinct and non-empty: {list(cfg.classes)}")
    from mtmg.models import heads  # torch: not for --help

    heads._check_templates(list(cfg.templates), "templates")
    for name in ("images_per_class", "images_per_word", "eval_per_class", "steps", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")
