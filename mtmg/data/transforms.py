"""Model inputs from stored samples: the RGB composite CLIP sees, the 13-band student input.

Small picklable classes (no lambdas), so they travel to DataLoader workers and Ray actors.
Both views of a patch come from the same stored 10 m grid, so one crop box serves both: the
teacher and the student see the same crop (docs/reference-differences.md, defect 6c).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from mtmg.data import bands

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def rgb_from_ms(ms: np.ndarray, stored: list[str], modality: str) -> torch.Tensor:
    """RGB composite (B04, B03, B02) in [0, 1]: `x / scale * 255` clamped to 0-255
    (docs/method.md, 'Stage 1')."""
    if modality not in bands.RGB_SCALE:
        raise ValueError(f"no RGB composite scale for modality {modality!r}")
    idx = bands.reorder_indices(tuple(stored), bands.RGB_BANDS)
    x = torch.from_numpy(ms[idx].astype(np.float32))
    return (x / bands.RGB_SCALE[modality]).clamp_(0, 1)


def ms_input(ms: np.ndarray, stored: list[str]) -> torch.Tensor:
    """13 bands in L1C order, `clamp(x / 10000, 0, 1)`; bands L2A lacks (B10) are zero."""
    out = torch.zeros((len(bands.S2_L1C), *ms.shape[1:]), dtype=torch.float32)
    for i, b in enumerate(bands.S2_L1C):
        if b in stored:
            out[i] = torch.from_numpy(ms[stored.index(b)].astype(np.float32))
    return (out / bands.REFLECTANCE_SCALE).clamp_(0, 1)


S1_DB_RANGE = (-30.0, 5.0)  # backscatter in dB clamped to this range, then mapped to [0, 1]


def s1_input(s1: np.ndarray) -> torch.Tensor:
    """Sentinel-1 VV, VH (dB) as a 2 x H x W student input in [0, 1]."""
    lo, hi = S1_DB_RANGE
    x = torch.from_numpy(np.nan_to_num(s1.astype(np.float32), nan=lo))
    return ((x.clamp_(lo, hi) - lo) / (hi - lo)).contiguous()


def decode_rgb(data: bytes) -> torch.Tensor:
    """An encoded RGB image as a float tensor 3 x H x W in [0, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


@dataclass(frozen=True)
class Augment:
    """CLIP-style training augmentation (random-resized crop 0.9-1.0, h/v flips; colour jitter,
    greyscale and blur on RGB inputs only; docs/reference-differences.md compares it with the
    reference code's), drawn once per sample for every view."""

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flips: bool = True
    color: bool = True

    def params(self, h: int, w: int, gen: torch.Generator) -> dict:
        area = h * w
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale, generator=gen))
            lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
            ar = math.exp(float(torch.empty(1).uniform_(lo, hi, generator=gen)))
            cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                break
        else:
            top, left, ch, cw = 0, 0, h, w
        r = torch.rand(6, generator=gen)
        return {
            "box": (top, left, ch, cw),
            "hflip": self.flips and bool(r[0] < 0.5),
            "vflip": self.flips and bool(r[1] < 0.5),
            "jitter": (float(0.6 + 0.8 * r[2]), float(0.6 + 0.8 * r[3])),  # brightness, contrast
            "grey": bool(r[4] < 0.1),
            "blur": bool(r[5] < 0.1),
        }

    def geometry(self, x: torch.Tensor, p: dict, size: int, bicubic: bool = False) -> torch.Tensor:
        top, left, h, w = p["box"]
        mode = F.InterpolationMode.BICUBIC if bicubic else F.InterpolationMode.BILINEAR
        x = F.resized_crop(x, top, left, h, w, [size, size], interpolation=mode, antialias=True)
        x = x.clamp_(0, 1)
        if p["hflip"]:
            x = F.horizontal_flip(x)
        if p["vflip"]:
            x = F.vertical_flip(x)
        return x

    def photometric(self, rgb: torch.Tensor, p: dict) -> torch.Tensor:
        if not self.color:
            return rgb
        rgb = F.adjust_contrast(F.adjust_brightness(rgb, p["jitter"][0]), p["jitter"][1])
        if p["grey"]:
            rgb = F.rgb_to_grayscale(rgb, num_output_channels=3)
        if p["blur"]:
            rgb = F.gaussian_blur(rgb, [3, 3])
        return rgb.clamp(0, 1)


def resize(x: torch.Tensor, size: int, bicubic: bool = False) -> torch.Tensor:
    """Square resize (CLIP resizes RGB bicubically; multispectral bands bilinearly)."""
    if x.shape[-2:] == (size, size):
        return x
    mode = F.InterpolationMode.BICUBIC if bicubic else F.InterpolationMode.BILINEAR
    return F.resize(x, [size, size], interpolation=mode, antialias=True).clamp_(0, 1)


def normalize(rgb: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return F.normalize(rgb, list(mean), list(std))


# ---------------------------------------------------------- augmentation on the accelerator
# On a GPU the per-sample crop/resize on CPU workers starves the model (bench/patch_step.py):
# with `Decoder(defer_augment=True)` workers only decode and draw the parameters, and the
# batch is cropped, resized (bilinear, roi_align), flipped and jittered on the device.


def params_tensor(p: dict) -> torch.Tensor:
    """Augment.params as a row: x1, y1, x2, y2, hflip, vflip, brightness, contrast, grey."""
    top, left, h, w = p["box"]
    b, c = p["jitter"]
    vals = [left, top, left + w, top + h, p["hflip"], p["vflip"], b, c, p["grey"]]
    return torch.tensor([float(v) for v in vals], dtype=torch.float32)


def batch_augment(x: torch.Tensor, params: torch.Tensor, size: int, color: bool) -> torch.Tensor:
    """Per-sample crop + resize to `size`, flips and (RGB) brightness/contrast/greyscale."""
    from torchvision.ops import roi_align

    n = x.shape[0]
    boxes = torch.cat([torch.arange(n, device=x.device, dtype=torch.float32)[:, None],
                       params[:, :4].float()], dim=1)  # fmt: skip
    out = roi_align(x.float(), boxes, (size, size), 1.0, sampling_ratio=2, aligned=True)
    out = torch.where(params[:, 4].bool()[:, None, None, None], out.flip(-1), out)
    out = torch.where(params[:, 5].bool()[:, None, None, None], out.flip(-2), out)
    if not color:
        return out
    out = (out * params[:, 6, None, None, None]).clamp(0, 1)
    weights = torch.tensor([0.2989, 0.587, 0.114], device=out.device)[None, :, None, None]
    grey = (out * weights).sum(1, keepdim=True)
    c = params[:, 7, None, None, None]
    out = (c * out + (1 - c) * grey.mean((-2, -1), keepdim=True)).clamp(0, 1)
    grey = (out * weights).sum(1, keepdim=True).expand_as(out)
    return torch.where(params[:, 8].bool()[:, None, None, None], grey, out)
