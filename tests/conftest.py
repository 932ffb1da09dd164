"""Shared fixtures: one embedded Ray for the whole session, generated raw trees, helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "real"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray (2 CPUs) shared by every test that needs Ray in-process."""
    import ray

    from mtmg.runtime.cluster import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def shard(ray_session, tmp_path):
    """Run the sharding job in-process: shard(dataset, root, **options) -> manifest."""
    from mtmg.prep import ShardConfig
    from mtmg.prep import shard as run

    def _shard(dataset: str, root, out=None, **kw):
        out = out or tmp_path / f"out-{dataset}"
        cfg = ShardConfig(dataset=dataset, root=str(root), out=str(out), progress=False, **kw)
        return run(cfg)

    return _shard


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory):
    """A real `ray start --head` on 127.0.0.1 with token authentication, stopped afterwards.

    Yields the environment a client needs (RAY_ADDRESS, auth token, dashboard address).
    """
    import secrets
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    token = tmp_path_factory.mktemp("ray-auth") / "token"
    token.write_text(secrets.token_hex(32))
    port, dash = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="mtmg-ray-", dir="/tmp")  # short: unix socket paths
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # advertise 127.0.0.1, not the external IP
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--temp-dir",
            temp_dir,
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            # its own job agent port: the default (52365) may be held by another Ray on this
            # machine (the embedded test session's), and jobs then cannot be submitted
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client_env = {
        **env,
        "RAY_ADDRESS": f"127.0.0.1:{port}",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}",
    }
    deadline = time.time() + 90
    while True:
        ok = (
            subprocess.run(
                [ray_bin, "status", "--address", f"127.0.0.1:{port}"],
                env=client_env,
                capture_output=True,
                timeout=60,
            ).returncode
            == 0
        )
        if ok:
            break
        if time.time() > deadline or head.poll() is not None:
            os.killpg(head.pid, signal.SIGKILL)
            raise RuntimeError("local `ray start --head` did not come up")
        time.sleep(1)
    yield client_env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=3)  # nothing to keep: the head's processes are killed soon after
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


# Command lines as users type them (run from the repository root). Each is a fresh interpreter,
# some import torch and open_clip (seconds apiece), so `cli` starts them all at once.
CLI = {
    "align --help": ["-m", "mtmg.align", "--help"],
    "patch --help": ["-m", "mtmg.patch", "--help"],
    "pretrain --help": ["-m", "mtmg.pretrain", "--help"],
    "demo --help": ["-m", "mtmg.demo", "--help"],
    "report --help": ["-m", "mtmg.report", "--help"],
    "shard --help": ["data_prep/shard.py", "--help"],
    "alpha_sweep --help": ["sweeps/alpha_sweep.py", "--help"],
    "loss_sweep --help": ["sweeps/loss_sweep.py", "--help"],
    "backbone_sweep --help": ["sweeps/backbone_sweep.py", "--help"],
    "dataset_sweep --help": ["sweeps/dataset_sweep.py", "--help"],
    "demo --patches 10": ["-m", "mtmg.demo", "--out", "{tmp}/demo", "--patches", "10"],
    "report without runs": ["-m", "mtmg.report", "--out", "{tmp}/report"],
    "shard without options": ["data_prep/shard.py", "eurosat"],
}


@dataclass
class CliRuns:
    tmp: Path  # what `{tmp}` stood for
    runs: dict[str, subprocess.CompletedProcess]

    def __getitem__(self, name: str) -> subprocess.CompletedProcess:
        return self.runs[name]


@pytest.fixture(scope="session")
def cli(tmp_path_factory) -> CliRuns:
    """Every command line of `CLI`, run once per session, in parallel: `cli[name]` is its
    result. `{tmp}` is a fresh directory (tests check that bad input leaves nothing there)."""
    tmp = tmp_path_factory.mktemp("cli")
    procs = {
        name: subprocess.Popen(
            [sys.executable, *(a.format(tmp=tmp) for a in argv)],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, argv in CLI.items()
    }
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return CliRuns(tmp, out)


def finished_trials(exp: Path) -> dict[str, dict]:
    """{trial dir: last result} of the trials of Tune experiment `exp` that finished."""
    out = {}
    for f in exp.glob("*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines and lines[-1].get("done_training"):
            out[f.parent.name] = lines[-1]
    return out


def kill_midway(argv: list[str], exp: Path, *, trials: int, delay: float) -> dict[str, dict]:
    """Run the sweep `argv` with every trial slowed by `delay` s and SIGKILL its process group
    once `trials` trials finished and Tune saved its state; returns those trials' results."""
    from mtmg import faults

    env = {**os.environ, faults.ENV: f"trial_delay={delay}"}
    proc = subprocess.Popen(
        argv, cwd=REPO, start_new_session=True, stdout=DEVNULL, stderr=DEVNULL, env=env
    )
    try:
        deadline = time.time() + 300
        while len(finished_trials(exp)) < trials:
            assert proc.poll() is None and time.time() < deadline, "the sweep ended too early"
            time.sleep(0.2)
        done = finished_trials(exp)
        time.sleep(1.5)  # the experiment state is saved every second
        assert proc.poll() is None, "the sweep ended before it was killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return done


def assert_not_rerun(table: list[dict], done: dict[str, dict]) -> None:
    """The trials that finished before the kill kept the first driver's results."""
    rows = {Path(x["path"]).name: x for x in table}
    for trial, result in done.items():
        assert rows[trial]["pid"] == result["pid"]
        assert rows[trial]["timestamp"] == result["timestamp"]
