"""Readers of raw remote-sensing datasets in the layouts their users have on disk."""

from __future__ import annotations

from mtmg.data import labels
from mtmg.data.raw.bigearthnet import BigEarthNetV1
from mtmg.data.raw.bigearthnet_v2 import BigEarthNetV2
from mtmg.data.raw.common import DatasetError, Inventory, Item, Layout, SampleError
from mtmg.data.raw.folders import ClassFolders, EuroSATMS, ImageNet
from mtmg.data.raw.sen12ms import SEN12MS
from mtmg.data.storage import Location

DATASETS: dict[str, str] = {
    "bigearthnet": "BigEarthNet-S2 v1.0: BigEarthNet-v1.0/<patch>/<patch>_<band>.tif + JSON",
    "bigearthnet-v2": "BigEarthNet v2.0 (reBEN): metadata.parquet + BigEarthNet-S2/<product>/",
    "eurosat-ms": "EuroSAT-MS: <class>/<class>_<n>.tif, 13 bands (B8A stored last)",
    "eurosat": "EuroSAT RGB: 2750/<class>/<class>_<n>.jpg",
    "resisc45": "NWPU-RESISC45: NWPU-RESISC45/<class>/<class>_NNN.jpg",
    "sen12ms": "SEN12MS: ROIs*/s2_<scene>/*.tif + lc_<scene>/ (IGBP labels)",
    "imagenet": "ImageNet-1k: <wnid>/<image>.JPEG class folders (the supported task)",
    "imagefolder": "any RGB class-folder tree",
}


def make_layout(
    dataset: str,
    root: Location,
    *,
    s1: Location | None = None,
    splits: Location | None = None,
    skip_bad: bool = False,
    resample: str = "nearest",
    seed: int = 0,
    class_names: Location | None = None,
    val_fraction: float = 0.1,
    native: bool = False,
) -> Layout:
    """The reader for `dataset` (a key of DATASETS) rooted at `root`; `native` reads bands on
    their own grids where a source stores them so (shard format 2)."""
    common = {"root": root, "splits": splits, "skip_bad": skip_bad}
    if dataset == "bigearthnet":
        return BigEarthNetV1(**common, s1=s1, resample=resample, native=native)
    if dataset == "bigearthnet-v2":
        return BigEarthNetV2(**common, s1=s1, resample=resample, native=native)
    if s1 is not None:
        raise DatasetError(f"--s1 pairs Sentinel-1 patches with BigEarthNet only, not {dataset}")
    if dataset == "eurosat-ms":
        return EuroSATMS(**common, seed=seed)
    if dataset == "eurosat":
        return ClassFolders(
            **common,
            seed=seed,
            name="eurosat",
            subdir="2750",
            known_classes=labels.EUROSAT,
            prompt_names=labels.EUROSAT_PROMPT_NAMES,
        )
    if dataset == "resisc45":
        return ClassFolders(**common, seed=seed, name="resisc45", subdir="NWPU-RESISC45")
    if dataset == "sen12ms":
        return SEN12MS(**common, seed=seed)
    if dataset == "imagenet":
        if not 0 <= val_fraction < 1:
            raise DatasetError(f"--val-fraction {val_fraction}: must be in [0, 1)")
        fractions = (0.0, val_fraction, 1.0 - val_fraction)
        return ImageNet(**common, seed=seed, fractions=fractions)
    if dataset == "imagefolder":
        return ClassFolders(**common, seed=seed, class_names_file=class_names)
    raise DatasetError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")


__all__ = [
    "DATASETS",
    "DatasetError",
    "Item",
    "Layout",
    "Inventory",
    "SampleError",
    "make_layout",
]
