"""An output directory belongs to one run: reruns resume only the same run (options and input
contents), a run of other inputs is refused or overwritten, and two live runs never share it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mtmg import rundir
from mtmg.errors import InputError
from mtmg.sweeps.alpha import driver as alpha_sweep
from mtmg.sweeps.alpha.config import RUN_FILES

from conftest import REPO


@dataclass(frozen=True)
class Cfg:
    data: str
    out: str
    lr: float = 1e-5
    alphas: tuple[float, ...] = (0.0, 1.0)
    cluster: bool = False  # operational: may change on a rerun
    threads: int | None = None  # as are the CPU threads


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"splits": {"train": {"count": 8}}}))
    return d


def _claim(cfg: Cfg, **kw) -> bool:
    with rundir.claim("patch", cfg, cfg.out, **kw) as same:
        Path(cfg.out, "summary.json").write_text("{}")  # an output of the run
        return same


def test_same_run_resumes_another_is_refused_naming_what_differs(shards, tmp_path):
    cfg = Cfg(str(shards), str(tmp_path / "run"))
    assert _claim(cfg) is False  # a new run
    assert _claim(replace(cfg, cluster=True)) is True  # where it runs is not what it computes
    assert _claim(replace(cfg, threads=2)) is True
    with pytest.raises(rundir.RunDirError, match=r"--lr 1e-05 -> 0.001.*--overwrite"):
        _claim(replace(cfg, lr=1e-3))
    with pytest.raises(rundir.RunDirError, match=r"--alphas \[0.0, 1.0\] -> \[0.5\]"):
        _claim(replace(cfg, alphas=(0.5,)))
    # the shard set's content changed under the same path: another input
    (shards / "manifest.json").write_text(json.dumps({"splits": {"train": {"count": 9}}}))
    with pytest.raises(rundir.RunDirError, match=rf"--data {shards} \(content"):
        _claim(cfg)
    # --overwrite deletes the old outputs and starts afresh
    stale = Path(cfg.out, "metrics.parquet")
    stale.write_text("old")
    assert _claim(replace(cfg, lr=1e-3), overwrite=True) is False
    assert not stale.exists()
    assert json.loads(Path(cfg.out, "run.json").read_text())["options"]["lr"] == 1e-3


def test_outputs_of_an_older_mtmg_are_not_taken_for_this_run(shards, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.yaml").write_text("lr: 1.0e-05\n")  # no run.json: its inputs are unknown
    with pytest.raises(rundir.RunDirError, match="not recorded"):
        _claim(Cfg(str(shards), str(out)))
    assert (out / "config.yaml").is_file()  # a refused run takes nothing away


def test_a_refused_new_directory_leaves_nothing(shards, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with rundir.claim("patch", Cfg(str(shards), str(out)), out):
            raise RuntimeError("bad input found after the claim")
    assert not out.exists()


def test_a_run_that_fails_before_any_result_holds_up_no_rerun(shards, tmp_path):
    """A run that fails leaving only its records (run.json, config.yaml) takes them away, in a
    new OUT and in one that was there (empty) before; one that leaves a result keeps it all."""
    cfg = Cfg(str(shards), str(tmp_path / "new"))
    given = tmp_path / "given"
    given.mkdir()
    for out in (Path(cfg.out), given):
        with pytest.raises(RuntimeError):
            with rundir.claim("patch", replace(cfg, out=str(out), lr=1.0), out):
                (out / "config.yaml").write_text("lr: 1.0\n")
                raise RuntimeError("a model that does not load")
        assert {p.name for p in out.glob("*")} <= {rundir.LOCK_FILE}
        assert _claim(replace(cfg, out=str(out))) is False  # the corrected run: not refused
    with pytest.raises(RuntimeError):
        with rundir.claim("patch", replace(cfg, lr=1.0), cfg.out, overwrite=True):
            Path(cfg.out, "metrics.parquet").write_text("a result")
            raise RuntimeError("failed after a result")
    with pytest.raises(rundir.RunDirError, match="--lr 1.0 -> 1e-05"):
        _claim(cfg)


def test_an_out_that_is_a_file_is_an_error_naming_it(shards, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(InputError, match=rf"^--out {afile} is a file, not a folder$"):
        _claim(Cfg(str(shards), str(afile)))
    with pytest.raises(InputError, match=rf"^--out {afile}/run: {afile} is a file, not a folder"):
        _claim(Cfg(str(shards), str(afile / "run")))
    assert afile.read_text() == ""
    # a command says it in one line: a sweep's, and the report's
    (tmp_path / "patch-run").mkdir()
    for name in RUN_FILES:
        (tmp_path / "patch-run" / name).write_text("")
    assert alpha_sweep.main(["--run", str(tmp_path / "patch-run"), "--out", str(afile)]) == 2
    assert capsys.readouterr().err == f"error: --out {afile} is a file, not a folder\n"


def test_a_live_run_locks_its_directory(shards, tmp_path):
    """A second run into the OUT of a live one fails at once naming the holder; once the first
    ends (even killed), the directory is free again."""
    out = tmp_path / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from mtmg import rundir; from test_rundir import Cfg\n"
                f"with rundir.claim('patch', Cfg({str(shards)!r}, {str(out)!r}), {str(out)!r}):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
        ],
        cwd=REPO / "tests",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunDirError, match=rf"in use by another run \(pid {holder.pid}"):
            _claim(Cfg(str(shards), str(out)))
    finally:
        holder.kill()
        holder.wait()
    assert _claim(Cfg(str(shards), str(out))) is True


def test_sweep_resume_needs_a_sweep_and_a_free_directory(tmp_path, capsys):
    out = tmp_path / "sweep"
    (tmp_path / "patch-run").mkdir()
    for name in RUN_FILES:  # enough of a run for the option checks
        (tmp_path / "patch-run" / name).write_text("")
    argv = ["--run", str(tmp_path / "patch-run"), "--out", str(out)]
    # --resume where no sweep ever ran: refused, and nothing is created
    assert alpha_sweep.main([*argv, "--resume"]) == 2
    assert "no sweep to resume" in capsys.readouterr().err and not out.exists()
    # a second sweep into the OUT of a live one: refused before it touches anything
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time; from mtmg import rundir; from mtmg.sweeps.alpha import driver\n"
                f"cfg = driver.AlphaSweepConfig(run={argv[1]!r}, out={str(out)!r})\n"
                "with rundir.claim(driver.NAME, cfg, cfg.out):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        assert alpha_sweep.main(argv) == 2
        assert "in use by another run" in capsys.readouterr().err
        assert time.perf_counter() - t0 < 30  # before Ray or any model
    finally:
        holder.kill()
        holder.wait()
