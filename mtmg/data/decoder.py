"""Samples to model inputs: a shard sample decoded into the views a stage wants (RGB
composite, multispectral and S1 student inputs, target), augmented on the CPU or, with
`defer_augment`, left at stored size for `device_batch` to finish on the accelerator."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtmg.data import bands as bnd
from mtmg.data import grids, transforms, verify
from mtmg.data.shardset import ShardSet, Targets

VIEWS = ("rgb", "ms", "s1", "rgb+ms", "rgb+s1", "both")  # "both" = "rgb+ms"
STUDENT_INPUTS = ("ms", "s1")  # multi-channel inputs a student encoder can take


def view_inputs(view: str) -> tuple[str, ...]:
    """The inputs a view yields, e.g. "both" -> ("rgb", "ms")."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} (choose from {', '.join(VIEWS)})")
    return ("rgb", "ms") if view == "both" else tuple(view.split("+"))


@dataclass(frozen=True)
class Decoder:
    """Raw WebDataset sample -> {"__key__", "rgb" / "ms" / "s1" per view, "target"} (picklable).

    Every input of a sample comes from the same 10 m grid and gets the same crop and flips.
    Members outside the shard format, arrays of another dtype or shape and non-finite S1 values
    raise ShardError naming the sample and its shard.
    """

    bands: tuple[str, ...]
    modality: str
    view: str
    targets: Targets
    image_size: int
    ms_size: int
    mean: tuple[float, ...] = transforms.CLIP_MEAN
    std: tuple[float, ...] = transforms.CLIP_STD
    augment: transforms.Augment | None = None
    seed: int = 0
    epoch: int = 0
    defer_augment: bool = False  # leave resize, augmentation, normalising to `device_batch`
    upsample: str = "nearest"  # format 2: how 20/60 m bands reach the 10 m grid

    @classmethod
    def of(
        cls,
        ds: ShardSet,
        view: str,
        targets: Targets,
        image_size: int,
        ms_size: int | None = None,
        **kw: Any,
    ) -> Decoder:
        """The decoder of `ds`'s samples: its bands, modality and upsampling (`ShardSet.upsample`
        unless `kw` names one); `ms_size` defaults to `image_size`."""
        kw.setdefault("upsample", ds.upsample)
        bands, modality = tuple(ds.manifest["bands"]), ds.manifest["modality"]
        return cls(bands, modality, view, targets, image_size, ms_size or image_size, **kw)

    @property
    def unread(self) -> frozenset[str]:
        """Members this decoder never looks at, which a reader may skip unread: format 2's
        coarser grids when no MS input is wanted, S1 when no S1 input is."""
        wanted = view_inputs(self.view)
        skip = set() if "ms" in wanted else {grids.member_name(f) for f in (2, 6)}
        return frozenset(skip if "s1" in wanted else skip | {"s1.npy"})

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        key = verify.check_members(sample)["__key__"]
        meta = verify.load_json(sample)
        out: dict[str, Any] = {"__key__": key, "target": self.targets(meta["labels"])}
        wanted = view_inputs(self.view)
        if self.defer_augment:
            return {**out, **self._deferred(sample, wanted, key)}
        views = self._inputs(sample, wanted)
        if "rgb" in views:
            views["rgb"] = transforms.to_unit(views["rgb"])
        if self.augment is not None:
            p = self.augment.params(*next(iter(views.values())).shape[-2:], self._generator(key))
            if "rgb" in views:
                views["rgb"] = self.augment.photometric(
                    self.augment.geometry(views["rgb"], p, self.image_size), p
                )
            for k in STUDENT_INPUTS:
                if k in views:
                    views[k] = self.augment.geometry(views[k], p, self.ms_size)
        else:
            if "rgb" in views:
                views["rgb"] = transforms.resize(views["rgb"], self.image_size)
            for k in STUDENT_INPUTS:
                if k in views:
                    views[k] = transforms.resize(views[k], self.ms_size)
        if "rgb" in views:
            views["rgb"] = transforms.normalize(views["rgb"], self.mean, self.std)
        return {**out, **views}

    def _generator(self, key: str) -> random.Random:
        """Per-sample randomness from (seed, epoch, key): independent of worker assignment."""
        digest = hashlib.sha256(f"{self.seed}:{self.epoch}:{key}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def _deferred(self, sample: dict[str, Any], wanted: tuple[str, ...], key: str) -> dict:
        """Inputs at their stored size for `device_batch` (cheap to decode and to move): RGB as
        uint8, S1 and format 1's MS in half precision, format 2's MS as its native grids (their
        uint16 bits as int16, upsampled on the device), plus the drawn augmentation if any."""
        groups = None
        if "ms" in wanted and grids.has_groups(sample) and self.upsample in grids.UPSAMPLING:
            groups = verify.read_groups(sample, list(self.bands))
            wanted = tuple(k for k in wanted if k != "ms")
        views = self._inputs(sample, wanted, groups)
        out: dict[str, Any] = {k: v if k == "rgb" else v.half() for k, v in views.items()}
        if groups is not None:
            out.update(
                {
                    grids.member_name(g.factor): torch.from_numpy(g.pixels.view(np.int16))
                    for g in groups
                }
            )
            out["ms_grids"] = tuple((g.names, g.factor) for g in groups)
            hw = tuple(n * groups[0].factor for n in groups[0].pixels.shape[1:])
        else:
            hw = next(iter(views.values())).shape[-2:]
        if self.augment is not None:
            p = self.augment.params(*hw, self._generator(key))
            out["aug"] = transforms.params_tensor(p)
        return out

    def _inputs(
        self, sample: dict[str, Any], wanted: tuple[str, ...], groups: list | None = None
    ) -> dict[str, torch.Tensor]:
        """The wanted inputs at their stored size: RGB composite or image as uint8, the MS
        student input and S1 as float. Format 2 decodes only the grids they need."""
        key, views = sample["__key__"], {}
        if "ms.npy" in sample:
            ms, stored = verify.load_array(sample, "ms.npy", len(self.bands)), list(self.bands)
            if "rgb" in wanted:
                views["rgb"] = transforms.rgb_composite(ms, stored, self.modality)
            if "ms" in wanted:
                views["ms"] = transforms.ms_input(ms, stored)
        elif grids.has_groups(sample):
            names = list(self.bands) if "ms" in wanted else list(bnd.RGB_BANDS)
            groups = groups or verify.read_groups(sample, names)
            if "rgb" in wanted:
                views["rgb"] = self._rgb_from_groups(groups)
            if "ms" in wanted:
                views["ms"] = self._ms_from_groups(groups)
        elif "ms" in wanted:
            raise ValueError(f"sample {key}: the multispectral view needs ms.npy")
        elif "rgb" in wanted:
            views["rgb"] = _decode_rgb(sample)
        if "s1" in wanted:
            if "s1.npy" not in sample:
                raise ValueError(f"sample {key}: the S1 view needs s1.npy (shard with --s1)")
            views["s1"] = transforms.s1_input(verify.load_array(sample, "s1.npy", len(bnd.S1)))
        return views

    def _rgb_from_groups(self, groups: list[grids.Group]) -> torch.Tensor:
        """The composite straight from the 10 m member's pixels (B02-B04 are never resampled)."""
        g = groups[0]
        if g.factor == 1 and set(bnd.RGB_BANDS) <= set(g.names):
            return transforms.rgb_composite(g.pixels, list(g.names), self.modality)
        rgb = grids.on_grid(groups, bnd.RGB_BANDS)
        return transforms.rgb_composite(rgb, list(bnd.RGB_BANDS), self.modality)

    def _ms_from_groups(self, groups: list[grids.Group]) -> torch.Tensor:
        if self.upsample == "nearest":
            return transforms.ms_input_from_groups(groups)
        names = list(self.bands)
        return transforms.ms_input(grids.on_grid(groups, names, self.upsample), names)


def _decode_rgb(sample: dict[str, Any]) -> torch.Tensor:
    where = f"{sample.get('__url__')}: sample {sample['__key__']}"
    rgb_key = next((k for k in sample if k.startswith("rgb.")), None)
    if rgb_key is None:
        raise verify.ShardError(f"{where}: neither ms.npy nor an rgb image; {verify.RECOVER}")
    try:
        return transforms.decode_rgb(sample[rgb_key])
    except (OSError, ValueError) as e:  # PIL's errors for data that is not an image
        msg = f"{where}: {rgb_key} is not an image ({e}); {verify.RECOVER}"
        raise verify.ShardError(msg) from e


def device_batch(
    batch: dict[str, Any], decoder: Decoder, device: torch.device
) -> dict[str, torch.Tensor]:
    """Move a batch to `device`, finishing a deferring decoder's work there: format 2's grids
    upsampled into the MS input, the augmentation or the evaluation resize; RGB normalised."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
    if "ms_grids" in batch:
        out["ms"] = _ms_on_device(out, batch["ms_grids"], decoder.upsample)
    if decoder.defer_augment and "aug" not in out:
        if "rgb" in out:
            rgb = transforms.resize(transforms.to_unit(out["rgb"]), decoder.image_size)
            out["rgb"] = transforms.normalize(rgb, decoder.mean, decoder.std)
        for k in STUDENT_INPUTS:
            if k in out:
                out[k] = transforms.resize(out[k].float(), decoder.ms_size)
    elif "aug" in out:
        aug = decoder.augment
        if "rgb" in out:
            rgb = transforms.to_unit(out["rgb"])
            rgb = transforms.batch_augment(rgb, out["aug"], decoder.image_size, aug.color)
            out["rgb"] = transforms.normalize(rgb, decoder.mean, decoder.std)
        for k in STUDENT_INPUTS:
            if k in out:
                out[k] = transforms.batch_augment(out[k], out["aug"], decoder.ms_size, False)
    return out


def _ms_on_device(out: dict[str, torch.Tensor], layouts: list, method: str) -> torch.Tensor:
    """The 13-band student input of a batch of format 2 grids (popped from `out`), as
    `transforms.ms_input` of `grids.on_grid` computes it per sample."""
    layout = layouts[0]
    if any(other != layout for other in layouts):
        raise ValueError("a batch mixes samples whose band grids differ")
    pixels = [(out.pop(grids.member_name(f)).int() & 0xFFFF).float() for _, f in layout]
    n, _, h, w = pixels[0].shape
    h, w = h * layout[0][1], w * layout[0][1]
    ms = torch.zeros((n, len(bnd.S2_L1C), h, w), device=pixels[0].device)
    for (names, f), x in zip(layout, pixels, strict=True):
        if f > 1 and method == "nearest":
            x = torch.nn.functional.interpolate(x, scale_factor=f, mode="nearest")
        elif f > 1:
            x = torch.nn.functional.interpolate(x, size=(h, w), mode=method, align_corners=False)
        ms[:, [bnd.S2_L1C.index(b) for b in names]] = x
    return (ms / bnd.REFLECTANCE_SCALE).clamp_(0, 1)
