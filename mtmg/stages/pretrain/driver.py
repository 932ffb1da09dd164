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
import os
import time
import uuid
from pathlib import Path

import torch

from mtmg import config, tracking
from mtmg.data import labels
from mtmg.models import clip, weights
from mtmg.stages.pretrain import contrastive, render
from mtmg.stages.pretrain.config import (
    CHECKPOINT,
    RESULT,
    PretrainConfig,
    cache_key,
    check_options,
    read_result,
)

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "RESULT", "PretrainConfig", "pretrain"]


def pretrain(cfg: PretrainConfig) -> Path:
    """Train (or find cached) and return the checkpoint path `OUT/clip.safetensors`."""
    out = Path(cfg.out)
    ckpt, result = out / CHECKPOINT, out / RESULT
    cached = read_result(out)
    if cached is not None and cached.get("key") == cache_key(cfg) and ckpt.is_file():
        log.info(
            "pretrain: cached run in %s (zero-shot top-1 %.1f%%); not training again",
            out,
            cached.get("zeroshot_top1", float("nan")),
        )
        return ckpt
    check_options(cfg)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = tracking.start(cfg.report_to, out, "pretrain")
    end = "FAILED"
    try:
        if run is not None:
            run.log_config(config.to_dict(cfg))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # initialisation (open_clip draws from the global RNG)
            bundle = clip.load_clip(cfg.model)
            size = int(cfg.image_size or bundle.image_size)
            info = contrastive.train(cfg, bundle, size, run)
        images, ys = render.heldout_set(cfg, size)
        acc = contrastive.zeroshot_accuracy(
            bundle.model, bundle.tokenizer, cfg.classes, images, ys, bundle.mean, bundle.std
        )
        if run is not None:
            run.log_metrics(cfg.steps, {"test/zeroshot_top1": acc})
        end = "FINISHED"
    finally:
        torch.set_num_threads(threads)
        if run is not None:
            run.close(end)
    seconds = time.perf_counter() - t0
    chance = 100.0 / len(cfg.classes)
    log.info(
        "pretrain: zero-shot top-1 %.1f%% on %d held-out images (chance %.1f%%) after %.1fs",
        acc,
        len(ys),
        chance,
        seconds,
    )
    out.mkdir(parents=True, exist_ok=True)
    weights.save_checkpoint(
        bundle.model, ckpt, metadata={"mtmg_pretrain": json.dumps(cache_key(cfg))}
    )
    payload = {
        "key": cache_key(cfg),
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
