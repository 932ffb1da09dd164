"""Model inputs from stored samples: the RGB composite CLIP sees, the 13-band student input.

Small picklable classes (no lambdas), so they travel to DataLoader workers and Ray actors.
Both views of a patch come from the same stored 10 m grid, so one crop box serves both: the
teacher and the student see the same crop (docs/reference-differences.md, defect 6c).
"""

from __future__ import annotations

import functools
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from mtmg.data import bands, grids

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def rgb_composite(ms: np.ndarray, stored: list[str], modality: str) -> torch.Tensor:
    """RGB composite (B04, B03, B02) as the reference makes it: uint8 3 x H x W,
    `x / scale * 255` in float32, clamped to 0-255 and truncated (docs/method.md, 'Stage 1')."""
    if modality not in bands.RGB_SCALE:
        raise ValueError(f"no RGB composite scale for modality {modality!r}")
    idx = bands.reorder_indices(tuple(stored), bands.RGB_BANDS)
    if ms.dtype == np.uint16:  # a table of every uint16 value: one lookup per pixel
        return torch.from_numpy(np.take(_composite_table(modality), bands.pick(ms, idx)))
    x = torch.from_numpy(np.ascontiguousarray(bands.pick(ms, idx), dtype=np.float32))
    return (x / bands.RGB_SCALE[modality] * 255).clamp_(0, 255).to(torch.uint8)


@functools.cache
def _composite_table(modality: str) -> np.ndarray:
    x = torch.arange(1 << 16, dtype=torch.float32)
    return (x / bands.RGB_SCALE[modality] * 255).clamp_(0, 255).to(torch.uint8).numpy()


def rgb_from_ms(ms: np.ndarray, stored: list[str], modality: str) -> torch.Tensor:
    """The RGB composite (`rgb_composite`) as float in [0, 1]."""
    return to_unit(rgb_composite(ms, stored, modality))


def to_unit(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [0, 1] (other dtypes are taken to be there already)."""
    return rgb.float().div_(255) if rgb.dtype == torch.uint8 else rgb.float()


def ms_input(ms: np.ndarray, stored: list[str]) -> torch.Tensor:
    """13 bands in L1C order, `clamp(x / 10000, 0, 1)`; bands L2A lacks (B10) are zero."""
    rows = {b: ms[stored.index(b)] for b in bands.S2_L1C if b in stored}
    return _reflectance(rows, ms.shape[1:])


def ms_input_from_groups(groups: Sequence[grids.Group]) -> torch.Tensor:
    """`ms_input` of format 2 grid groups brought onto the 10 m grid by nearest neighbour:
    reflectances computed on each native grid, then each pixel repeated into the output."""
    first = groups[0]
    h, w = (n * first.factor for n in first.pixels.shape[1:])
    out = np.empty((len(bands.S2_L1C), h, w), np.float32)
    row = {b: i for i, b in enumerate(bands.S2_L1C)}
    for g in groups:
        f = g.factor
        wide = _repeat_columns(_unit(g.pixels.astype(np.float32)), f)[:, :, None, :]
        for c, b in enumerate(g.names):
            np.copyto(out[row[b]].reshape(h // f, f, w), wide[c])
    for b in set(bands.S2_L1C).difference(*(g.names for g in groups)):
        out[row[b]] = 0
    return torch.from_numpy(out)


def _repeat_columns(x: np.ndarray, f: int) -> np.ndarray:
    """float32 C x h x w -> C x h x (w * f), every column `f` times (x2: one integer multiply
    that writes each 32-bit value twice, where `repeat` copies element by element)."""
    if f == 1:
        return x
    if f == 2:
        return (x.view(np.uint32).astype(np.uint64) * np.uint64(0x1_0000_0001)).view(np.float32)
    return x.repeat(f, axis=-1)


def _reflectance(rows: dict[str, np.ndarray], hw: Sequence[int]) -> torch.Tensor:
    """Band name -> H x W reflectances x 10000, as the 13-band L1C input in [0, 1]."""
    out = np.empty((len(bands.S2_L1C), *hw), np.float32)
    for i, b in enumerate(bands.S2_L1C):
        out[i] = rows[b] if b in rows else 0
    return torch.from_numpy(_unit(out))


def _unit(x: np.ndarray) -> np.ndarray:
    """float32 reflectances x 10000 -> `clamp(x / 10000, 0, 1)`, in place (torch's division
    is vectorised where numpy's is not)."""
    torch.from_numpy(x).div_(bands.REFLECTANCE_SCALE).clamp_(0, 1)
    return x


S1_DB_RANGE = (-30.0, 5.0)  # backscatter in dB clamped to this range, then mapped to [0, 1]


def s1_input(s1: np.ndarray) -> torch.Tensor:
    """Sentinel-1 VV, VH (dB) as a 2 x H x W student input in [0, 1]."""
    lo, hi = S1_DB_RANGE
    x = torch.from_numpy(np.nan_to_num(s1.astype(np.float32), nan=lo))
    return ((x.clamp_(lo, hi) - lo) / (hi - lo)).contiguous()


def decode_rgb(data: bytes) -> torch.Tensor:
    """An encoded RGB image as a uint8 tensor 3 x H x W."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@dataclass(frozen=True)
class Augment:
    """The reference code's training augmentation, drawn once per sample for every view: a
    random-resized crop (scale 0.9-1.0), horizontal and vertical flips, and on RGB only colour
    jitter (brightness, contrast, saturation 0.4, in random order) with p=0.8, greyscale p=0.2
    and a Gaussian blur (kernel 3 x 7, sigma 0.1-2.0) with p=0.4."""

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flips: bool = True
    color: bool = True
    jitter: float = 0.4
    p_jitter: float = 0.8
    p_grey: float = 0.2
    p_blur: float = 0.4
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def params(self, h: int, w: int, rng: random.Random) -> dict:
        """One draw: the crop box of an h x w input (torchvision's RandomResizedCrop rule),
        flips and the colour parameters; Python's generator, a few microseconds a draw."""
        area = h * w
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ar = math.exp(rng.uniform(lo, hi))
            cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
                break
        else:
            top, left, ch, cw = 0, 0, h, w
        r = [rng.random() for _ in range(5)]
        factors = [rng.uniform(max(0.0, 1 - self.jitter), 1 + self.jitter) for _ in range(3)]
        order = rng.sample(range(3), 3)
        sigma = rng.uniform(*self.blur_sigma)
        return {
            "box": (top, left, ch, cw),
            "hflip": self.flips and r[0] < 0.5,
            "vflip": self.flips and r[1] < 0.5,
            "jitter": self.color and r[2] < self.p_jitter,
            "factors": tuple(factors),  # brightness, contrast, saturation
            "order": tuple(order),
            "grey": self.color and r[3] < self.p_grey,
            "blur": self.color and r[4] < self.p_blur,
            "sigma": sigma,
        }

    def geometry(self, x: torch.Tensor, p: dict, size: int) -> torch.Tensor:
        """Crop the drawn box, resize it bicubically to size x size, flip."""
        return crop_resize_flip(x, p["box"], size, p["hflip"], p["vflip"])

    def photometric(self, rgb: torch.Tensor, p: dict) -> torch.Tensor:
        """Colour jitter, greyscale and blur of one RGB image in [0, 1], as drawn."""
        return batch_photometric(rgb[None], params_tensor(p)[None].to(rgb.device))[0]


def crop_resize_flip(
    x: torch.Tensor, box: tuple[int, int, int, int], size: int, hflip: bool, vflip: bool
) -> torch.Tensor:
    """The geometric half of a draw, for one input of any number of bands."""
    top, left, h, w = box
    bicubic = F.InterpolationMode.BICUBIC
    x = F.resized_crop(x, top, left, h, w, [size, size], interpolation=bicubic, antialias=True)
    x = x.clamp_(0, 1)
    if hflip:
        x = F.horizontal_flip(x)
    if vflip:
        x = F.vertical_flip(x)
    return x


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's evaluation transform: resize the shortest side to `size` bicubically, centre-crop
    size x size (never squashed); every band alike."""
    if x.shape[-2:] == (size, size):
        return x
    x = F.resize(x, size, interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    return F.center_crop(x, [size, size]).clamp_(0, 1)


def normalize(rgb: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return F.normalize(rgb, list(mean), list(std))


# ---------------------------------------------------------- augmentation of a batch
# With `Decoder(defer_augment=True)` workers only decode and draw the parameters; the batch is
# augmented on the device by the same functions, so both paths draw from one distribution.

PARAMS = (
    "top",
    "left",
    "h",
    "w",
    "hflip",
    "vflip",
    "jitter",
    "brightness",
    "contrast",
    "saturation",
    "op0",
    "op1",
    "op2",
    "grey",
    "blur",
    "sigma",
)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
BLUR_KERNEL = (3, 7)  # width, height: the reference's GaussianBlur(kernel_size=(3, 7))


def params_tensor(p: dict) -> torch.Tensor:
    """Augment.params as one float row, in the order of PARAMS."""
    vals = [
        *p["box"],
        p["hflip"],
        p["vflip"],
        p["jitter"],
        *p["factors"],
        *p["order"],
        p["grey"],
        p["blur"],
        p["sigma"],
    ]
    return torch.tensor([float(v) for v in vals], dtype=torch.float32)


def batch_augment(x: torch.Tensor, params: torch.Tensor, size: int, color: bool) -> torch.Tensor:
    """Augment a batch (N x C x H x W) with one PARAMS row per sample; colour for RGB only."""
    rows = params.tolist()
    out = torch.stack(
        [
            crop_resize_flip(x[i].float(), tuple(int(v) for v in r[:4]), size, r[4] > 0, r[5] > 0)
            for i, r in enumerate(rows)
        ]
    )
    return batch_photometric(out, params) if color else out


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GREY_WEIGHTS, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * x + (1 - ratio) * other).clamp(0, 1)


def batch_photometric(rgb: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Colour jitter (per-sample order), greyscale and blur of RGB in [0, 1], as torchvision's
    ColorJitter, RandomGrayscale and GaussianBlur compute them, vectorised over the batch."""
    col = {name: params[:, i, None, None, None].to(rgb) for i, name in enumerate(PARAMS)}
    x = rgb
    for step in range(3):
        op = col[f"op{step}"]
        bright = _blend(x, torch.zeros_like(x), col["brightness"])
        contrast = _blend(x, _grey(x).mean((-3, -2, -1), keepdim=True), col["contrast"])
        saturation = _blend(x, _grey(x), col["saturation"])
        jittered = torch.where(op == 0, bright, torch.where(op == 1, contrast, saturation))
        x = torch.where(col["jitter"] > 0, jittered, x)
    x = torch.where(col["grey"] > 0, _grey(x).expand_as(x), x)
    return torch.where(col["blur"] > 0, _gaussian_blur(x, params[:, PARAMS.index("sigma")]), x)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's gaussian_blur (reflect padding) with one sigma per sample."""
    n, c, h, w = x.shape
    kx, ky = BLUR_KERNEL

    def kernel1d(k: int) -> torch.Tensor:
        t = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k, device=x.device, dtype=x.dtype)
        pdf = torch.exp(-0.5 * (t[None] / sigma.to(x)[:, None]) ** 2)
        return pdf / pdf.sum(1, keepdim=True)

    kernel = kernel1d(ky)[:, :, None] * kernel1d(kx)[:, None, :]  # n x ky x kx
    weight = kernel.repeat_interleave(c, 0)[:, None]  # (n * c) x 1 x ky x kx
    padded = torch.nn.functional.pad(
        x.reshape(1, n * c, h, w), [kx // 2, kx // 2, ky // 2, ky // 2], mode="reflect"
    )
    return torch.nn.functional.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)
