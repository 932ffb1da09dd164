"""`python -m mtmg.patch`: the options are parsed before torch, open_clip or Ray is imported,
so `--help` and bad flags answer at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mtmg import config
from mtmg.stages import cli
from mtmg.stages.patch.config import PatchConfig


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.patch --data SHARDS [--joint-data SHARDS ...] --out DIR [options]`."""
    args = sys.argv[1:] if argv is None else argv
    if sum(a == "--data" or a.startswith("--data=") for a in args) > 1:  # argparse keeps the last
        print("error: give --data once; more patching sets go to --joint-data", file=sys.stderr)
        return 2
    cfg = config.parse(
        PatchConfig,
        argv,
        "PAINT patching of an open_clip model on a remote-sensing shard set (Ray Train DDP).",
        "joint patching: --data A --joint-data B ... fine-tunes one image tower on A, B, ...\n"
        "together (each step one batch of each set, each set through its own zero-shot head\n"
        "and loss, the losses averaged; an epoch is one pass over the longest set) and selects\n"
        "alpha with the mean of the patching sets' validation metrics.\n"
        "outputs in --out: config.yaml, theta_zs/theta_ft.safetensors, metrics.parquet/.csv\n"
        "(dataset x alpha x split x metric), alpha_curve.png, patched.safetensors (a full\n"
        "open_clip checkpoint: open_clip.create_model(NAME, pretrained=PATH)), summary.json.\n"
        "Re-running with the same --out resumes from the last epoch checkpoint.",
    )
    from mtmg.stages.patch.driver import run

    return cli.run_command(cfg, run, _show)


def _show(cfg: PatchConfig, summary: dict[str, Any]) -> None:
    print(f"chosen alpha = {summary['alpha']:g} ({cfg.selection} rule on validation)")
    for r in summary["test"]:
        mark = "*" if r["selected"] else " "
        print(
            f"{mark} {r['role']:<9} {r['dataset']:<15} {r['nomenclature']:<8} {r['split']:<5} "
            f"alpha={r['alpha']:<4g} {r['metric']}={r['value']:.2f}"
        )
    print(f"outputs in {Path(cfg.out).resolve()}")
