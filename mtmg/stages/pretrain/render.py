"""The pictures pretraining learns from and is evaluated on: '<colour> <shape>' photos drawn by
`mtmg.synth`, and texture pictures of land-cover words."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mtmg.models import clip
from mtmg.stages.pretrain.config import PretrainConfig
from mtmg.synth.common import seeded
from mtmg.synth.shapes import shape_image


def shapes(seed: int, namespace: str, classes: Sequence[str], n: int, size: int):
    """uint8 images [N, size, size, 3] and class indices [N]: n per class, class-major."""
    images, ys = [], []
    for ci, cls in enumerate(classes):
        for k in range(1, n + 1):
            key = f"{cls.replace(' ', '_')}_{k}"
            images.append(shape_image(seeded(seed, namespace, key), cls, size))
            ys.append(ci)
    return np.stack(images), np.asarray(ys, dtype=np.int64)


def word_image(rng: np.random.Generator, word: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8 texture picture of a land-cover `word`.

    The word fixes a pattern (stripes, checks, dots, waves or rings), its orientation, frequency
    and two colours; `rng` varies phase, colours and grain from picture to picture.
    """
    style = seeded(0, "word", word)
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


def words(seed: int, names: Sequence[str], n: int, size: int):
    """uint8 texture pictures [N, size, size, 3] and word indices [N]: n per word."""
    images = [
        word_image(seeded(seed, "pretrain-words", w, k), w, size) for w in names for k in range(n)
    ]
    ys = np.repeat(np.arange(len(names), dtype=np.int64), n)
    return np.stack(images), ys


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def heldout_set(cfg: PretrainConfig, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out evaluation images (uint8 [N, H, W, 3]) and labels [N]: for each evaluation class,
    the first `eval_per_class` pictures that `synth.make_imagefolder(seed=cfg.seed)` draws.
    Training draws from other random streams, so these are never seen in training."""
    size = size or cfg.image_size or clip.load_clip(cfg.model).image_size
    return shapes(cfg.seed, "shapes", cfg.classes, cfg.eval_per_class, int(size))
