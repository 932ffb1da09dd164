"""`python -m mtmg.align`: the options are parsed before torch, open_clip or Ray is imported,
so `--help` and bad flags answer at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtmg import config
from mtmg.stages import cli
from mtmg.stages.align.config import AlignConfig


def main(argv: list[str] | None = None) -> int:
    """`python -m mtmg.align --data SHARDS --teacher PATCH_RUN --out DIR [options]`."""
    cfg = config.parse(
        AlignConfig,
        argv,
        "Cross-modal alignment: distil a multispectral student into a (patched) CLIP's "
        "embedding space (Ray Train DDP).",
        "outputs in --out: config.yaml, metrics.parquet/.csv (dataset x split x epoch x encoder\n"
        "x metric: zero-shot mAP/top1, cosine to the teacher, Recall@K both ways),\n"
        "loss_curves.png, student.safetensors + student.json\n"
        "(mtmg.models.student.load_student(DIR).encode(x)), summary.json.\n"
        "Re-running with the same --out resumes from the last epoch checkpoint.",
    )
    from mtmg.stages.align.driver import run

    return cli.run_command(cfg, run, _show)


def _show(cfg: AlignConfig, summary: dict[str, Any]) -> None:
    before = {(r["dataset"], r["metric"]): r["value"] for r in summary["untrained_test"]}
    print(f"{'dataset':<15} {'split':<5} {'encoder':<8} {'metric':<16} {'value':>7} untrained")
    for r in summary["test"]:
        b = before.get((r["dataset"], r["metric"])) if r["encoder"] == "student" else None
        print(
            f"{r['dataset']:<15} {r['split']:<5} {r['encoder']:<8} {r['metric']:<16} "
            f"{r['value']:>7.2f} {'' if b is None else f'{b:.2f}':>9}"
        )
    print(f"outputs in {Path(cfg.out).resolve()}")
