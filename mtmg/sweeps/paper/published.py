"""The paper's published figures, and mtmg's measured ones beside them.

Source: "Mind the Modality Gap" (Zavras et al., ISPRS J. Photogramm. 2025; arXiv 2402.09816 v2),
abstract: the gain of patched CLIP over zero-shot CLIP on RGB inputs, in points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Published:
    """One published figure: a gain of the patched over the zero-shot CLIP on a dataset."""

    name: str
    dataset: str  # the shard set kind (manifest "dataset")
    nomenclature: str | None  # None: the set's default nomenclature
    metric: str
    gain: float


PATCHING_GAINS = (
    Published("BigEarthNet-5", "bigearthnet", "ben5", "mAP", 39.76),
    Published("BigEarthNet-19", "bigearthnet", "ben19", "mAP", 56.86),
    Published("BigEarthNet-43", "bigearthnet", "ben43", "mAP", 28.43),
    Published("SEN12MS", "sen12ms", None, "mAP", 20.61),
    Published("EuroSAT", "eurosat-ms", None, "top1", 5.98),
)
ZERO_SHOT, PATCHED = "zero-shot CLIP", "patched CLIP"


DEFAULT_NOMENCLATURE = {"bigearthnet": "ben19"}  # what a BigEarthNet set is scored in unnamed


def _matches(p: Published, row: dict[str, Any]) -> bool:
    """Whether a report row is of `p`'s set and label set (a row without a nomenclature: the
    set's default one)."""
    name = row["dataset"]
    nomen = row.get("nomenclature") or DEFAULT_NOMENCLATURE.get(name, "")
    return name == p.dataset and p.nomenclature in (None, nomen)


def _value(rows: Sequence[dict[str, Any]], model: str, p: Published) -> tuple[str, float] | None:
    """(report column's set, value) of `model`'s first row on `p`'s set and metric."""
    for r in rows:
        if r["model"].startswith(model) and r["metric"] == p.metric and _matches(p, r):
            return r.get("set") or r["dataset"], r["value"]
    return None


def comparison(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per published gain: the paper's and mtmg's (None where the run has no such
    column); `rows` are `mtmg.report` rows."""
    out = []
    for p in PATCHING_GAINS:
        zs, pt = _value(rows, ZERO_SHOT, p), _value(rows, PATCHED, p)
        measured = pt[1] - zs[1] if zs and pt else None
        out.append(
            {
                "result": f"{p.name} {p.metric}: patched - zero-shot CLIP",
                "column": pt[0] if pt else None,
                "paper": p.gain,
                "mtmg": None if measured is None else round(measured, 2),
                "mtmg_zero_shot": zs[1] if zs else None,
                "mtmg_patched": pt[1] if pt else None,
            }
        )
    return out


def markdown(comp: Sequence[dict[str, Any]]) -> str:
    """The comparison as a markdown table ("-" where this run has no such column)."""

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:+.2f}"

    lines = ["| result | paper | mtmg | mtmg column |", "|---|---:|---:|---|"]
    lines += [
        f"| {c['result']} | {fmt(c['paper'])} | {fmt(c['mtmg'])} | {c['column'] or '-'} |"
        for c in comp
    ]
    return "\n".join(lines)
