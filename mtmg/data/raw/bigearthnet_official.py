"""BigEarthNet v1's official lists, read offline from the `bigearthnet-common` package: the
19-class train/val/test splits, the patches excluded for snow or clouds, and the S2 -> S1 pairs.
"""

from __future__ import annotations

import bz2
import importlib.metadata
import importlib.resources
from collections.abc import Collection, Iterator

from mtmg.data.raw.common import SPLITS

OFFICIAL_COUNTS = {"train": 269_695, "val": 123_723, "test": 125_866}

# Not cached: the lists name every patch of the archive (~60 MB as sets, ~120 MB for the S1
# pairs), which a driver would otherwise hold for the whole run after one scan.


def _resource_lines(name: str) -> Iterator[str]:
    """The non-empty lines of a shipped list, decompressed as they are read (CRLF-safe)."""
    with (
        importlib.resources.files("bigearthnet_common").joinpath(name).open("rb") as raw,
        bz2.open(raw, "rt") as text,
    ):
        for line in text:
            if line := line.strip():
                yield line


def official_splits() -> dict[str, frozenset[str]]:
    """The official v1 19-class splits, shipped in the `bigearthnet-common` package."""
    return {s: frozenset(_resource_lines(f"{s}.csv.bz2")) for s in SPLITS}


def official_exclusions() -> dict[str, frozenset[str]]:
    """Official v1 exclusion lists (the shipped files have CRLF line ends)."""
    return {
        "seasonal snow": frozenset(_resource_lines("patches_with_seasonal_snow.csv.bz2")),
        "cloud or shadow": frozenset(_resource_lines("patches_with_cloud_and_shadow.csv.bz2")),
    }


def official_s2_to_s1(s2_names: Collection[str]) -> dict[str, str]:
    """Official S1 patch names of `s2_names` (`s1_s2_name_country_season.csv`), the other
    rows of the archive's 590k skipped as read."""
    rows = _resource_lines("s1_s2_name_country_season.csv.bz2")
    header = next(rows).split(",")
    i1, i2 = header.index("s1_name"), header.index("s2_name")
    out = {}
    for row in rows:
        fields = row.split(",")
        if fields[i2] in s2_names:
            out[fields[i2]] = fields[i1]
    return out


def official_version() -> str:
    """The package the official lists come from, with its version (for the manifest)."""
    return f"bigearthnet-common {importlib.metadata.version('bigearthnet-common')}"
