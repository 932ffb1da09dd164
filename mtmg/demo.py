"""The whole method on generated data, on an embedded local Ray: `python -m mtmg.demo --out DIR`.

Nothing is downloaded. Steps (each skipped when its outputs exist; `--fresh` redoes all):
  1. generate raw datasets in their real on-disk layouts: BigEarthNet-S2 v1 with S1 pairs (the
     patching task, scored in BigEarthNet-19, -5 and -43), EuroSAT-MS (evaluation), class
     folders of '<colour> <shape>' images (the supported task, standing in for ImageNet);
  2. shard them with the `data_prep/shard.py` command;
  3. train a tiny CLIP that is really zero-shot capable on the supported task (`mtmg.pretrain`,
     cached) — with real weights one passes `--model ViT-B-32 --pretrained openai` instead;
  4. the paper's protocol at demo size (`sweeps/paper.py --spec OUT/paper.yaml --out OUT/paper`):
     `sweeps/alpha_sweep.py` (fine-tune once, search alpha), `python -m mtmg.align` with the
     patched CLIP at the chosen alpha as teacher, a small `sweeps/loss_sweep.py` over the
     head-loss weight, `python -m mtmg.probe` (linear probes of zero-shot and patched CLIP and of
     the aligned and untrained student), then the report: the paper-style table, the paper's
     published gains beside the demo's, plots and summary in OUT/paper/report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtmg import errors, prep, rundir, synth, tracking
from mtmg.data import shards

MODEL = "mtmg-demo-vit"
MIN_PATCHES = 120
# the fine-tune of the alpha sweep: a gentle one, and a faster one for smoke runs (--quick)
FINE_TUNE = {"epochs": 32, "lr": 1e-4}
FINE_TUNE_QUICK = {"epochs": 32, "lr": 1.5e-4}
STUDENT = {
    "student_args": '{"depth": 4, "embed_dim": 96, "num_heads": 3, "patch_size": 8}',
    "student_size": 32,
    "batch_size": 32,
    "warmup_steps": 20,
    "loader_workers": 1,
}


def _step(name: str, done: Path, fresh: bool, fn: Callable[[], object], times: dict) -> None:
    if done.exists() and not fresh:
        print(f"[skip] {name}: {done} exists", flush=True)
        return
    print(f"[....] {name}", flush=True)
    t0 = time.perf_counter()
    fn()
    times[name] = round(time.perf_counter() - t0, 1)
    print(f"[done] {name} in {times[name]:.1f}s -> {done}", flush=True)


def _ok(code: int, what: str) -> None:
    if code == errors.INTERRUPTED:
        raise KeyboardInterrupt
    if code != 0:
        raise SystemExit(f"demo: {what} failed (exit {code})")


@dataclass(frozen=True)
class DemoOptions:
    """What determines the demo's outputs (its run fingerprint, `mtmg.rundir`)."""

    patches: int = 600
    quick: bool = False


def _shard(dataset: str, root: Path, out: Path, *extra: str) -> None:
    argv = [dataset, "--root", str(root), "--out", str(out), "--shard-size", "64", *extra]
    _ok(prep.main(argv), f"sharding {dataset}")


def _patch_options(out: Path) -> Path:
    """Fine-tuning options beyond the sweep's flags: no weight decay (the paper's 0.5 is for
    lr 1e-5; at the small model's lr it would shrink the weights away from theta_zs) and no
    augmentation (a generated patch's classes are its colours: colour jitter would relabel it)."""
    path, text = out / "patch-options.yaml", "weight_decay: 0.0\naugment: false\n"
    if not path.is_file() or path.read_text() != text:  # unchanged: the sweep's inputs are too
        path.write_text(text)
    return path


def run(
    out: Path,
    *,
    patches: int = 600,
    fresh: bool = False,
    quick: bool = False,
    report_to: str = "",
) -> dict:
    """Run the demo into `out`; returns the report summary. `quick`: fewer epochs (tests);
    `report_to`: every stage's and sweep's --report-to."""
    with rundir.claim("demo", DemoOptions(patches, quick), out, overwrite=fresh):
        if fresh:  # a demo directory of an older mtmg has no run.json to say it is one
            for p in out.iterdir():
                if p.name not in (rundir.LOCK_FILE, rundir.RUN_FILE):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        return _steps(out, patches, fresh, quick, report_to)


def _steps(out: Path, patches: int, fresh: bool, quick: bool, report_to: str = "") -> dict:
    from mtmg.stages.pretrain import driver as pretrain
    from mtmg.sweeps.paper import driver as paper

    raw, sh, times = out / "raw", out / "shards", {}
    ben_raw, ems_raw, img_raw = raw / "bigearthnet", raw / "eurosat-ms", raw / "shapes"
    ben, ems, img = sh / "bigearthnet", sh / "eurosat-ms", sh / "shapes"
    _step(
        "generate BigEarthNet-S2 v1 + S1",
        ben_raw / "train.csv",
        fresh,
        lambda: synth.make_bigearthnet(ben_raw, n_patches=patches, s1=True),
        times,
    )
    _step(
        "generate EuroSAT-MS",
        ems_raw / "ds",
        fresh,
        lambda: synth.make_eurosat_ms(ems_raw, n_per_class=max(6, patches // 20)),
        times,
    )
    _step(
        "generate shapes (supported task)",
        img_raw,
        fresh,
        lambda: synth.make_imagefolder(img_raw, n_per_class=max(100, patches // 2), size=32),
        times,
    )
    _step(
        "shard BigEarthNet",
        ben / "manifest.json",
        fresh,
        lambda: _shard("bigearthnet", ben_raw, ben, "--s1", str(ben_raw)),
        times,
    )
    _step(
        "shard EuroSAT-MS",
        ems / "manifest.json",
        fresh,
        lambda: _shard("eurosat-ms", ems_raw, ems),
        times,
    )
    _step(
        "shard shapes",
        img / "manifest.json",
        fresh,
        lambda: _shard("imagefolder", img_raw, img),
        times,
    )
    for d in (ben, ems, img):
        m = shards.load_manifest(d)
        print(
            f"{m['dataset']}: {m['modality']}, {m['task']}; "
            + ", ".join(f"{k} {v['count']}" for k, v in m["splits"].items())
        )

    clip = out / "clip"
    _step(
        "pretrain a small zero-shot CLIP",
        clip / pretrain.CHECKPOINT,
        fresh,
        lambda: pretrain.pretrain(
            pretrain.PretrainConfig(
                out=str(clip), model=MODEL, report_to=(report_to,) if report_to else ()
            )
        ),
        times,
    )
    paper_out = out / "paper"
    spec = _paper_spec(out, (ben, ems, img), clip / pretrain.CHECKPOINT, quick, report_to)
    spec_path = out / "paper.yaml"
    if not spec_path.is_file() or yaml.safe_load(spec_path.read_text()) != spec:
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.perf_counter()
    note = chance_note([shards.load_manifest(d) for d in (ems, img)])
    summary = paper.run(paper.PaperConfig(spec=str(spec_path), out=str(paper_out)), [note])
    times["paper protocol (sweeps/paper.py)"] = round(time.perf_counter() - t0, 1)
    (paper_out / paper.REPORT / "timings.json").write_text(json.dumps(times, indent=1))
    return summary


def _paper_spec(
    out: Path, sets: tuple[Path, Path, Path], ckpt: Path, quick: bool, report_to: str
) -> dict[str, Any]:
    """The demo-sized spec of `sweeps/paper.py` (what recipes/paper.yaml is at full size)."""
    ben, ems, img = map(str, sets)
    evals = [ems, f"{ben}:ben5", f"{ben}:ben43"]
    common: dict[str, Any] = {"cache_dir": str(out / "cache")}
    tracked = {"report_to": [report_to]} if report_to else {}
    return {
        "alpha": {
            "data": ben,
            "supported": [img],
            "eval_data": evals,
            "model": MODEL,
            "pretrained": str(ckpt),
            **(FINE_TUNE_QUICK if quick else FINE_TUNE),
            "warmup_steps": 10,
            "batch_size": 32,
            "patch_config": str(_patch_options(out)),
            "selection": "constrained",
            "tolerance": 5.0,
            **common,
            **tracked,
        },
        "align": {
            "data": ben,
            "eval_data": evals,
            "epochs": 40,
            "lr": 1e-3,
            "eval_every": 10,
            "augment": False,
            **STUDENT,
            **common,
            **tracked,
        },
        "losses": {
            "data": ben,
            "epochs": 2 if quick else 6,
            "w_txt": [0.0, 0.05, 0.5],
            "align_config": str(out / "paper" / "align" / "config.yaml"),
            **common,
            **tracked,
        },
        "probe": {"data": [ben], "loader_workers": 1, **common, **tracked},
    }


def chance_note(manifests: list[dict[str, Any]]) -> str:
    """The report's line on chance: top-1 of a uniform guess on each single-label set, and why
    the demo CLIP's zero-shot EuroSAT-MS top-1 is no better (it can be 0)."""
    levels = []
    for m in manifests:
        if m["task"] == "single-label":
            k = len(m["nomenclatures"][m["label_nomenclature"]]["classes"])
            levels.append(f"{m['dataset']} {100 / k:.1f} ({k} classes)")
    return (
        f"Top-1 chance: {', '.join(levels)}. The demo CLIP learnt EuroSAT's class names on "
        "texture pictures, never on Sentinel-2 patches, so zero-shot it gives each EuroSAT class "
        "one arbitrary name: its EuroSAT-MS top-1 is a chance draw (0 when no class gets its own)."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("demo-out"), help="where everything goes")
    ap.add_argument("--patches", type=int, default=600, help="BigEarthNet patches to generate")
    ap.add_argument("--fresh", action="store_true", help="redo every step")
    ap.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    ap.add_argument(
        "--report-to", default="", help="also track runs in tensorboard,mlflow,wandb (any subset)"
    )
    args = ap.parse_args(argv)
    try:
        tracking.check([args.report_to])
    except errors.MtmgError as e:
        ap.error(str(e))
    if args.patches < MIN_PATCHES:  # fewer leave a split without a full training batch
        ap.error(f"--patches must be at least {MIN_PATCHES}, got {args.patches}")
    t0 = time.perf_counter()
    out = args.out.resolve()
    try:
        summary: dict[str, Any] = run(
            out, patches=args.patches, fresh=args.fresh, quick=args.quick, report_to=args.report_to
        )
    except rundir.RunDirError as e:
        print(f"error: {e} (for the demo: --fresh)", file=sys.stderr)
        return 2
    except errors.MtmgError as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted("run the demo again: finished steps are skipped")
    print("\n" + "\n".join(summary["table"]))
    for g in summary["gains"]:
        print(f"- {g}")
    print("\nthe paper's published gains beside the demo's:\n" + "\n".join(summary["paper_table"]))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")
    runs = out / "paper"
    print(f"  report:        {runs / 'report' / 'summary.md'} (+ paper.md, summary.json, plots)")
    print(f"  patched CLIP:  {runs / 'alpha' / 'patched.safetensors'}")
    print(f"  MS encoder:    {runs / 'align'} (mtmg.models.student.load_student)")
    print(f"  loss sweep:    {runs / 'losses' / 'summary.md'}")
    print(f"  linear probe:  {runs / 'probe' / 'probe.md'}")
    print(f"  the same run:  python sweeps/paper.py --spec {out / 'paper.yaml'} --out {runs}")
    if args.report_to:
        tb = "tensorboard" in args.report_to
        where = f"tensorboard --logdir {out}" if tb else "in each run's folder (README: Tracking)"
        print(f"  tracking:      {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
