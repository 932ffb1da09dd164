"""`python sweeps/paper.py --spec PAPER.yaml`: every stage of the paper's protocol in order (see
`steps`), each through its own command with the spec's options, then the paper's tables.

A stage that finished with the same options is skipped; one interrupted is continued; one that
finished with other options is refused unless named in `--redo` (which redoes every later stage
too: they were made from its outputs). OUT/steps.json records what each stage ran with and
OUT/specs/<stage>.yaml is the exact `--config` it was given.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtmg import config, errors, rundir
from mtmg.errors import InputError
from mtmg.sweeps.paper import published, spec, steps

option = config.option
RECORD = "steps.json"
REPORT = "report"


@dataclass(frozen=True)
class PaperConfig:
    """Options of the paper command (the stages' own options are in the spec)."""

    spec: str = option(help="the spec: one section of options per stage (recipes/paper.yaml)")
    out: str = option("paper-out", help="where every stage's outputs and the report go")
    cluster: bool = option(
        False, help="run every stage on a running Ray cluster (RAY_ADDRESS or auto)"
    )
    redo: tuple[str, ...] = option(
        (), help=f"stages to run again although they finished, and every later one {steps.NAMES}"
    )
    dry_run: bool = option(
        False, help="write each stage's config file, print the command that runs it; run nothing"
    )


@dataclass(frozen=True)
class _Lock:
    """The paper dir's own run identity: none (each stage keeps its own); only the lock."""


class StageFailed(errors.MtmgError):
    """A stage's command ended with a non-zero exit code (it printed why)."""

    def __init__(self, step: str, code: int) -> None:
        super().__init__(f"stage {step!r} failed (exit {code}); fix it and run again")
        self.code = code


def run(cfg: PaperConfig, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Run the stages of `cfg.spec` into `cfg.out`, then the report (with `notes` among its
    findings); returns its summary (with `paper`: the published figures beside mtmg's)."""
    sections = spec.load(cfg.spec)
    unknown = sorted(set(cfg.redo) - set(steps.NAMES))
    if unknown:
        raise InputError(f"--redo {unknown}: not a stage; stages: {list(steps.NAMES)}")
    out = Path(cfg.out).expanduser().resolve()
    with rundir.claim("paper", _Lock(), out):
        record = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else {}
        cascade = False
        for st in steps.STEPS:
            if st.name in sections:
                ran = _stage(cfg, st, sections, out, record, cascade)
                cascade = cascade or ran
        if cfg.dry_run:
            return {}
        return report(out, [s.name for s in steps.STEPS if s.name in sections], notes)


def _stage(
    cfg: PaperConfig,
    st: steps.Step,
    sections: dict[str, dict[str, Any]],
    out: Path,
    record: dict[str, Any],
    cascade: bool,
) -> bool:
    """Run one stage unless it finished with the options of its section of `sections` (the
    spec); returns whether it ran."""
    options = {**sections[st.name], **st.wiring(out, sections)}
    finished = (out / st.name / st.done).is_file()
    redo = cascade or st.name in cfg.redo
    if finished and not redo:
        if record.get(st.name) == options:
            print(f"[skip] {st.name}: finished with the same options ({out / st.name})")
            return False
        old = record.get(st.name, {})
        changed = sorted(k for k in {*options, *old} if options.get(k) != old.get(k))
        raise InputError(
            f"{out / st.name}: stage {st.name!r} finished with other options "
            f"(changed: {', '.join(changed)}); --redo {st.name} runs it and every later stage again"
        )
    given = dict(options)
    if "cluster" in st.config_class().__dataclass_fields__:
        given["cluster"] = cfg.cluster  # where a stage runs is not what it computes
    if finished:
        given["overwrite"] = True
    elif st.sweep and (out / st.name / rundir.RUN_FILE).is_file():
        given["resume"] = True
    path = out / "specs" / f"{st.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(given, sort_keys=False))
    print(f"[....] {st.name}: {st.title}\n       python {st.face} --config {path}", flush=True)
    if cfg.dry_run:
        return True
    code = st.main()(["--config", str(path)])
    if code == errors.INTERRUPTED:
        raise KeyboardInterrupt
    if code != 0:
        raise StageFailed(st.name, code)
    record[st.name] = options
    tmp = out / f"{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out / RECORD)
    print(f"[done] {st.name} -> {out / st.name}", flush=True)
    return True


def report(out: Path, names: list[str], notes: Sequence[str] = ()) -> dict[str, Any]:
    """`mtmg.report` over the finished stages, and the paper's figures beside mtmg's."""
    from mtmg.report import build, tables

    dirs = [out / n for n in names if steps.step(n).reported]
    summary = build.build(dirs, out / REPORT, notes=list(notes))
    comp = published.comparison(summary["rows"])
    md = published.markdown(comp)
    tables.write_table(comp, out / REPORT / "paper")
    tables.plot_paired_bars(
        [p.name for p in published.PATCHING_GAINS],
        {"paper": [c["paper"] for c in comp], "mtmg": [c["mtmg"] for c in comp]},
        out / REPORT / "paper_gains.png",
        title="patched - zero-shot CLIP (RGB)",
        ylabel="gain (points)",
    )
    text = ["# The paper's figures beside mtmg's", "", md, "", "# mtmg's tables", ""]
    text += [*summary["table"], ""]
    (out / REPORT / "paper.md").write_text("\n".join(text))
    return {**summary, "paper": comp, "paper_table": md.splitlines()}


def main(argv: list[str] | None = None) -> int:
    """The command: prints the report table and the paper comparison."""
    cfg = config.parse(
        PaperConfig,
        argv,
        "The paper's protocol in one command: alpha sweep, alignment and the report, each "
        "stage with the options of its section in --spec, skipped when it finished with them.",
        "outputs in --out: one dir per stage, specs/<stage>.yaml (what it ran with),\n"
        "steps.json, report/ (summary.md, table.csv/.parquet, paper.md/.csv/.parquet and\n"
        "paper_gains.png: the paper's published figures beside mtmg's, plots).\n"
        "Interrupted: run the same command again.",
    )
    try:
        summary = run(cfg)
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except errors.USER_ERRORS as e:
        return errors.failed(e)
    except KeyboardInterrupt:
        return errors.interrupted("run the same command again: finished stages are skipped")
    if summary:
        print("\n".join(summary["table"]) + "\n\n" + "\n".join(summary["paper_table"]))
        print(f"\nreport in {Path(cfg.out).resolve() / REPORT} (paper.md, summary.md)")
    return 0
