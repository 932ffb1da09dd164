"""Class nomenclatures, label maps and default prompt templates of every supported dataset.

BigEarthNet lists are in the official order (label_indices.json, torchgeo), never alphabetical
(bigearthnet_common's multi-hot helpers sort by default; docs/datasets.md, 'Label nomenclatures').
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

BEN43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

# Official 19-class nomenclature: name -> the 43-class indices it absorbs.
_BEN19_FROM_43: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Urban fabric", (0, 1)),
    ("Industrial or commercial units", (2,)),
    ("Arable land", (11, 12, 13)),
    ("Permanent crops", (14, 15, 16, 18)),
    ("Pastures", (17,)),
    ("Complex cultivation patterns", (19,)),
    (
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
        (20,),
    ),
    ("Agro-forestry areas", (21,)),
    ("Broad-leaved forest", (22,)),
    ("Coniferous forest", (23,)),
    ("Mixed forest", (24,)),
    ("Natural grassland and sparsely vegetated areas", (25, 31)),
    ("Moors, heathland and sclerophyllous vegetation", (26, 27)),
    ("Transitional woodland, shrub", (28,)),
    ("Beaches, dunes, sands", (29,)),
    ("Inland wetlands", (33, 34)),
    ("Coastal wetlands", (35, 36)),
    ("Inland waters", (38, 39)),
    ("Marine waters", (40, 41, 42)),
)
BEN19: tuple[str, ...] = tuple(name for name, _ in _BEN19_FROM_43)
# 43-class index -> 19-class index (None: dropped by the official nomenclature).
BEN43_TO_19: tuple[int | None, ...] = tuple(
    next((j for j, (_, src) in enumerate(_BEN19_FROM_43) if i in src), None) for i in range(43)
)

# BigEarthNet-5: CORINE level 1, the first digit of each class's CLC code (docs/datasets.md).
BEN5: tuple[str, ...] = (
    "Artificial surfaces",
    "Agricultural areas",
    "Forest and semi-natural areas",
    "Wetlands",
    "Water bodies",
)
BEN43_TO_5: tuple[int, ...] = tuple(
    0 if i <= 10 else 1 if i <= 21 else 2 if i <= 32 else 3 if i <= 37 else 4 for i in range(43)
)
# The 19 classes are unions of 43-classes that never cross a level-1 boundary.
BEN19_TO_5: tuple[int, ...] = tuple(BEN43_TO_5[src[0]] for _, src in _BEN19_FROM_43)

EUROSAT: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
# CLIP's EuroSAT class names (openai/CLIP prompts), used in prompts instead of folder names.
EUROSAT_PROMPT_NAMES: tuple[str, ...] = (
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings or commercial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings or homes or apartments",
    "river",
    "lake or sea",
)

RESISC45: tuple[str, ...] = tuple(
    "airplane airport baseball_diamond basketball_court beach bridge chaparral church "
    "circular_farmland cloud commercial_area dense_residential desert forest freeway golf_course "
    "ground_track_field harbor industrial_area intersection island lake meadow medium_residential "
    "mobile_home_park mountain overpass palace parking_lot railway railway_station "
    "rectangular_farmland river roundabout runway sea_ice ship snowberg sparse_residential stadium "
    "storage_tank tennis_court terrace thermal_power_station wetland".split()
)

# SEN12MS simplified IGBP scheme (10 classes) and the map from the 17 full IGBP codes (1-based).
SEN12MS_IGBP10: tuple[str, ...] = (
    "Forest",
    "Shrubland",
    "Savanna",
    "Grassland",
    "Wetlands",
    "Croplands",
    "Urban/Built-up",
    "Snow/Ice",
    "Barren",
    "Water",
)
# index = IGBP code (0 = no data), value = simplified class index or -1.
IGBP17_TO_10: tuple[int, ...] = (-1, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9)
SEN12MS_MULTILABEL_THRESHOLD = 0.1

SATELLITE_TEMPLATES: tuple[str, ...] = (
    "a satellite image of {c}.",
    "an aerial view of {c}.",
    "a satellite photo of {c}.",
    "a remote sensing image of {c}.",
    "a centered satellite photo of {c}.",
    "a sentinel-2 satellite image of {c}.",
)
# openai/CLIP's reduced ImageNet templates.
PHOTO_TEMPLATES: tuple[str, ...] = (
    "itap of a {c}.",
    "a bad photo of the {c}.",
    "a origami {c}.",
    "a photo of the large {c}.",
    "a {c} in a video game.",
    "art of the {c}.",
    "a photo of the small {c}.",
    "a photo of a {c}.",
)


def multi_hot(names: Iterable[str], classes: Sequence[str]) -> np.ndarray:
    """Multi-hot uint8 vector of `names` over `classes`; unknown names raise KeyError."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros(len(classes), dtype=np.uint8)
    for n in names:
        out[index[n]] = 1
    return out


def convert_multi_hot(vec: np.ndarray, mapping: Sequence[int | None], n_out: int) -> np.ndarray:
    """Map a multi-hot vector through an index map (None/-1 entries are dropped)."""
    out = np.zeros(vec.shape[:-1] + (n_out,), dtype=vec.dtype)
    for src, dst in enumerate(mapping):
        if dst is not None and dst >= 0:
            out[..., dst] |= vec[..., src]
    return out


def ben_nomenclatures() -> dict[str, dict]:
    """BigEarthNet nomenclatures as stored in a v1 manifest: classes plus maps from 43 classes."""
    return {
        "ben43": {"classes": list(BEN43)},
        "ben19": {"classes": list(BEN19), "from": "ben43", "map": list(BEN43_TO_19)},
        "ben5": {"classes": list(BEN5), "from": "ben43", "map": list(BEN43_TO_5)},
    }


@dataclass(frozen=True)
class TargetMap:
    """Targets decoded in a set's stored nomenclature -> the targets of another of its
    nomenclatures, equal to decoding in that one (`mtmg.data.shardset.Targets` maps label names
    the same way), so one decoding pass serves every nomenclature of a set."""

    mapping: tuple[int, ...] | None  # stored index -> target index (-1: dropped); None: the same
    n_classes: int  # of the target nomenclature

    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        """Multi-label (n, stored) 0/1 rows -> (n, n_classes) 0/1 rows; single-label class
        indices -> class indices (-1 for a dropped class, as decoding gives)."""
        import torch  # the label tables above are read by commands that need no torch

        if self.mapping is None:
            return targets
        index = torch.tensor(self.mapping, dtype=torch.long)
        if targets.ndim == 1:
            return index[targets]
        onto = torch.zeros(len(index), self.n_classes, dtype=targets.dtype)
        kept = (index >= 0).nonzero().squeeze(1)
        onto[kept, index[kept]] = 1
        return (targets @ onto).clamp(max=1)  # sums of 0/1 products: exact in any float dtype
