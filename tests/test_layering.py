"""The package's layers, checked on every module's imports (top level and inside functions):
Ray lives in `mtmg.runtime` and the sweeps; data, models and engine depend on nothing above
them; a package's `__init__` imports nothing (a trial process imports only what it needs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "mtmg"
# what each layer may import from mtmg (beyond itself and the top-level helpers)
BELOW = {
    "data": set(),
    "models": {"data"},
    "engine": {"data", "models"},
    "report": {"data"},
    "stages": {"data", "models", "engine", "report", "runtime", "synth"},  # drivers run jobs
    "runtime": {"data", "models", "engine"},
    "synth": {"data"},
    "sweeps": {"data", "models", "engine", "report", "runtime", "stages"},
}
HELPERS = {"mtmg", "mtmg.config", "mtmg.errors", "mtmg.faults", "mtmg.logs", "mtmg.rundir"}
HELPERS |= {"mtmg.tracking"}
RAY_FREE = ("data", "models", "engine", "stages", "report")


def _modules(layer: str) -> list[Path]:
    return sorted((PKG / layer).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            if node.module == "mtmg":  # from mtmg import x: x is a module
                names += [f"mtmg.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("layer", RAY_FREE)
def test_no_ray_outside_the_runtime_and_the_sweeps(layer):
    bad = [
        f"{p.relative_to(REPO)} imports {n}"
        for p in _modules(layer)
        for n in _imports(p)
        if n == "ray" or n.startswith("ray.")
    ]
    assert not bad, bad


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_layers_import_only_what_lies_below_them(layer):
    allowed = {layer, *BELOW[layer]}
    bad = []
    for p in _modules(layer):
        for n in _imports(p):
            if not n.startswith("mtmg") or n in HELPERS:
                continue
            top = n.split(".")[1] if n.count(".") else n
            if top not in allowed:
                bad.append(f"{p.relative_to(REPO)} imports {n}")
    assert not bad, bad


def test_package_inits_import_nothing():
    # facades: synth's re-exports serve tests, benches and the demo, and no trial imports it
    facades = (PKG / "data" / "raw", PKG / "synth")
    inits = [p for p in PKG.rglob("__init__.py") if p.parent not in facades]
    bad = [str(p.relative_to(REPO)) for p in inits if _imports(p)]
    assert not bad, bad
