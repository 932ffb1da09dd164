"""`python -m mtmg.probe`: the options are parsed before torch, open_clip or timm is imported,
so `--help` and bad flags answer at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtmg import config
from mtmg.stages import cli
from mtmg.stages.probe.config import SPEC_FORMS, ProbeConfig


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.probe --data SHARDS... --encoders SPEC... --out DIR [options]`."""
    cfg = config.parse(
        ProbeConfig,
        argv,
        "Linear probing of frozen encoders: a linear classifier on their features, fit on the "
        "train split, its L2 penalty chosen on val, scored on val and test (mAP for multi-label "
        "sets, top-1 for single-label sets).",
        "encoders (--encoders, one or more):\n  "
        + "\n  ".join(SPEC_FORMS)
        + "\nfeatures are extracted once per (encoder weights, shard set, split, preprocessing)\n"
        "and cached in --cache-dir; a rerun reuses them and says so.\n"
        "outputs in --out: config.yaml, probe.parquet/.csv (encoder x dataset x nomenclature x\n"
        "fraction x split: metric, value, the chosen weight decay), probe.md, summary.json\n"
        "(with every penalty's validation metric and which features were reused).",
    )
    from mtmg.stages.probe.driver import run

    return cli.run_command(cfg, run, _show, resume_hint="run the same command again")


def _show(cfg: ProbeConfig, summary: dict[str, Any]) -> None:
    print("\n".join(summary["table"]))
    print(
        f"features: {summary['features_extracted']} split(s) extracted, "
        f"{summary['features_reused']} reused from the cache ({summary['cache_dir']})"
    )
    print(f"outputs in {Path(cfg.out).resolve()}")
