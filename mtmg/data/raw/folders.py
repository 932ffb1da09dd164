"""Class-folder datasets: EuroSAT-MS (13-band GeoTIFFs) and RGB image folders.

RGB datasets (EuroSAT RGB, RESISC45, any ImageNet-style tree) keep their encoded image bytes;
EuroSAT-MS is decoded to a 13 x H x W uint16 array in L1C band order (its files store B8A last).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from mtmg.data import bands, labels, storage
from mtmg.data.raw.common import (
    SPLITS,
    DatasetError,
    Inventory,
    Item,
    Layout,
    SampleError,
    Shared,
    as_uint16,
    assign_from_lists,
    find_split_files,
    georef,
    hash_split,
    open_raster,
)
from mtmg.data.storage import Location

EUROSAT_MS_SUBDIR = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".tif": "tif", ".tiff": "tif"}


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class ClassFolders(Layout):
    """A tree `<root>/[<subdir>/]<class>/<file>`, one class per folder, one sample per file."""

    root: Location
    splits: Location | None = None
    skip_bad: bool = False
    seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    name: str = "imagefolder"
    subdir: str = ""  # where the official archive puts the class folders
    lists_name: str = ""  # split files `<lists_name>-<split>.txt` (Neumann et al.'s, as torchgeo)
    known_classes: tuple[str, ...] = ()  # official class list (order = class index), if any
    prompt_names: tuple[str, ...] = ()
    class_names_file: Location | None = None
    exts: tuple[str, ...] = tuple(IMAGE_EXTS)

    def class_root(self) -> str:
        """The folder of class folders: ROOT, or the archive's own subfolder under it, found from
        any of the archive's folders (e.g. ROOT is the zip's `ds/` or the extraction dir)."""
        parts = self.subdir.split("/") if self.subdir else []
        for i in range(len(parts)):
            sub = f"{self.root.path}/{'/'.join(parts[i:])}"
            if storage.is_dir(self.root.fs, sub):
                return sub
        return self.root.path

    def folders(self) -> tuple[str, ...]:
        """The class folders present; with a known class list, each must be one of its names."""
        found = tuple(storage.list_dir(self.root.fs, self.class_root(), dirs_only=True))
        if not found:
            raise DatasetError(f"no class folders found in {self.class_root()}")
        known = self.known()
        unknown = sorted(set(found) - set(known)) if known else []
        if unknown:
            shown = list(known) if len(known) <= 50 else f"{len(known)} names, e.g. {known[:3]}"
            raise DatasetError(
                f"{self.class_root()}: unknown class folder(s) {unknown[:10]}; "
                f"{self.name} classes are {shown}"
            )
        return found

    def known(self) -> tuple[str, ...]:
        """The official class list (order = class index), or () where the folders define it."""
        return self.known_classes

    def classes(self) -> tuple[str, ...]:
        return self.known() or self.folders()

    def scan(self) -> Inventory:
        fs, croot, classes = self.root.fs, self.class_root(), self.classes()
        tree: dict[str, tuple[str, int]] = {}
        for cls in self.folders():
            idx = classes.index(cls)
            for fname in storage.list_dir(fs, f"{croot}/{cls}"):
                ext = "." + fname.rsplit(".", 1)[-1].lower() if "." in fname else ""
                if ext not in self.exts:
                    continue
                key = _stem(fname).replace(".", "_")
                if key in tree:
                    raise DatasetError(f"two files share the id {key!r} ({croot}/{cls}/{fname})")
                tree[key] = (f"{croot}/{cls}/{fname}", idx)
        if not tree:
            raise DatasetError(f"no {'/'.join(self.exts)} files in the class folders of {croot}")
        where = self.splits or self.root
        names = dict.fromkeys((self.lists_name or self.name, self.name))
        patterns = ["{split}.txt", *(f"{n}-{{split}}.txt" for n in names), "{split}.csv"]
        lists = find_split_files(where, [where.path], patterns)
        if lists:
            # split files name files (torchgeo's EuroSAT lists say .jpg for the .tif files too)
            stems = {k: None for k in tree}
            by_split, excluded, rejected = assign_from_lists(
                stems, {s: p for s, p in lists.items()}, where, self.skip_bad, key_fn=_stem
            )
            info = {"split_source": lists}
        else:
            by_split = {s: [] for s in SPLITS}
            for key in sorted(tree):
                by_split[hash_split(key, self.fractions, self.seed)].append(key)
            excluded, rejected = [], []
            info = {
                "split_source": f"hash of the file id, fractions {list(self.fractions)}, "
                f"seed {self.seed}"
            }
        shared = Shared()  # one `extra` per class, not one a sample
        items = {
            s: [Item(k, s, (tree[k][0],), shared((("class", tree[k][1]),))) for k in keys]
            for s, keys in by_split.items()
        }
        return Inventory(items, excluded, rejected, info)

    def _prompt_names(self, classes: tuple[str, ...]) -> list[str]:
        if self.class_names_file:
            mapping = storage.read_json(self.class_names_file.fs, self.class_names_file.path)
            if not isinstance(mapping, dict):
                raise DatasetError(
                    f"--class-names {self.class_names_file}: not a JSON object "
                    "{folder: class name}"
                )
            return [mapping.get(c, c) for c in classes]
        if self.prompt_names:
            return list(self.prompt_names)
        return [c.replace("_", " ") for c in classes]

    def sources(self, item: Item) -> list[tuple[Location, str]]:
        return [(self.root, item.ref[0])]

    def read(self, item: Item) -> dict[str, Any]:
        path, cls = item.ref[0], item.get("class")
        data = storage.read_bytes(self.root.fs, path)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for corrupt files
            raise SampleError(item.key, f"unreadable image: {e}", path) from e
        ext = IMAGE_EXTS["." + path.rsplit(".", 1)[-1].lower()]
        classes = self.classes()
        record = {"labels": [classes[cls]], "source": path[len(self.root.path) + 1 :]}
        return {f"rgb.{ext}": data, "cls": cls, "json": record}

    def header(self) -> dict[str, Any]:
        classes = self.classes()
        return {
            "task": "single-label",
            "metric": "top-1 accuracy",
            "modality": "RGB",
            "bands": ["R", "G", "B"],
            "label_nomenclature": self.name,
            "nomenclatures": {
                self.name: {"classes": list(classes), "prompt_names": self._prompt_names(classes)}
            },
            "templates": list(
                labels.PHOTO_TEMPLATES if self.name == "imagefolder" else labels.SATELLITE_TEMPLATES
            ),
            "fields": {
                "rgb.<ext>": "the source image file, bytes unchanged",
                "cls": "class index",
                "json": "label name and source file",
            },
        }


@dataclass(frozen=True)
class EuroSATMS(ClassFolders):
    """EuroSAT-MS: one 13-band L1C GeoTIFF per patch, stored B01..B12 then B8A."""

    name: str = "eurosat-ms"
    subdir: str = EUROSAT_MS_SUBDIR
    lists_name: str = "eurosat"
    known_classes: tuple[str, ...] = labels.EUROSAT
    prompt_names: tuple[str, ...] = labels.EUROSAT_PROMPT_NAMES
    exts: tuple[str, ...] = (".tif", ".tiff")
    size: tuple[int, int] | None = None

    def sample_size(self, item: Item) -> tuple[int, int]:
        with open_raster(self.root, item.ref[0], item.key, georef=False) as ds:
            return ds.height, ds.width

    def read(self, item: Item) -> dict[str, Any]:
        path, cls = item.ref[0], item.get("class")
        with open_raster(self.root, path, item.key, georef=True) as ds:
            arr = ds.read()
            geo = georef(ds)
        if arr.shape[0] != len(bands.EUROSAT_MS_FILE_ORDER):
            raise SampleError(item.key, f"expected 13 bands, found {arr.shape[0]}", path)
        if self.size is not None and arr.shape[1:] != tuple(self.size):
            want = f"{self.size[0]}x{self.size[1]}"
            raise SampleError(item.key, f"is {arr.shape[1]}x{arr.shape[2]}, expected {want}", path)
        order = bands.reorder_indices(bands.EUROSAT_MS_FILE_ORDER, bands.S2_L1C)
        ms = np.ascontiguousarray(as_uint16(arr, item.key, path)[order])
        record = {"labels": [self.known_classes[cls]], "source": path[len(self.root.path) + 1 :]}
        return {"ms.npy": ms, "cls": cls, "json": {**record, **geo}}

    def header(self) -> dict[str, Any]:
        head = super().header()
        head.update(
            modality="S2 L1C",
            bands=list(bands.S2_L1C),
            gsd_m=10,
            templates=list(labels.SATELLITE_TEMPLATES),
            fields={
                "ms.npy": "uint16 13 x H x W reflectance x 10000 in the L1C band order listed",
                "cls": "class index",
                "json": "label name, source file, georeferencing",
            },
        )
        return head


@lru_cache(maxsize=1)
def imagenet_metadata() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """ImageNet-1k's class ids (WordNet ids in the standard class order, as timm ships them),
    open_clip's class names and CLIP's 80 prompt templates, read from those packages."""
    from importlib.resources import files

    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    wnids = tuple(files("timm.data._info").joinpath("imagenet_synsets.txt").read_text().split())
    templates = tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)
    return wnids, tuple(IMAGENET_CLASSNAMES), templates


@dataclass(frozen=True)
class ImageNet(ClassFolders):
    """ImageNet-1k as `<wnid>/<image>.JPEG` class folders (the val set as torchvision's
    ImageFolder arranges it), any subset of the classes. The nomenclature is always all 1000
    classes, prompted with open_clip's class names and CLIP's 80 templates, as CLIP and PAINT
    evaluate it. Without split files the folder is the test split but for a hashed `fractions`
    share held out as val (alpha selection)."""

    name: str = "imagenet"
    fractions: tuple[float, float, float] = (0.0, 0.1, 0.9)

    def known(self) -> tuple[str, ...]:
        return imagenet_metadata()[0]

    def header(self) -> dict[str, Any]:
        head = super().header()
        wnids, names, templates = imagenet_metadata()
        head["nomenclatures"] = {"imagenet": {"classes": list(wnids), "prompt_names": list(names)}}
        head["templates"] = list(templates)
        return head
