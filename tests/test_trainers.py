"""The Ray Train glue (`mtmg.trainers`) on the session's embedded Ray."""

from __future__ import annotations

import json
import os
import signal

from mtmg import cluster, trainers


def test_embedded_ray_runs_train_jobs_lean(ray_session, tmp_path):
    """On the embedded Ray no placement-group cleaner (it would ask the state API, which runs
    no dashboard modules there, every second and warn every second) and no preemption watcher;
    the knobs reach the workers and leave the driver's environment as it was."""
    assert cluster.is_embedded()
    before, handler = dict(os.environ), signal.getsignal(signal.SIGINT)
    knobs = list(trainers.LEAN_ENV)
    seen = tmp_path / "seen.json"  # absolute: Train workers change their working directory

    # nested functions: pickled by value (Ray's workers cannot import the tests)
    def process_titles(root: int) -> list[str]:
        """Command lines of the processes under `root` (Ray workers show their actor class)."""
        from pathlib import Path

        parent: dict[int, int] = {}
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / "stat").read_text()
                    parent[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        under, more = {root}, {root}
        while more:
            more = {pid for pid, pp in parent.items() if pp in under} - under
            under |= more
        titles = []
        for pid in under - {root}:
            try:
                titles.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
            except OSError:
                continue
        return titles

    started = tmp_path / "started"

    def probe(config: dict) -> None:  # what runs while the job's helper actors are up
        env = {k: os.environ.get(k, "") for k in knobs}
        seen.write_text(json.dumps({"titles": process_titles(os.getppid()),
                                    "on_start_before": started.exists(), **env}))  # fmt: skip

    calls = []

    def on_start() -> None:
        calls.append(1)
        started.touch()

    trainers.fit(probe, {}, workers=1, use_gpu=False, storage_path=str(tmp_path),
                 name="probe", max_failures=0, on_start=on_start)  # fmt: skip
    m = json.loads(seen.read_text())
    assert calls == [1] and m["on_start_before"]  # called once, before the job ran
    assert m["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    titles = m["titles"]
    assert any("TrainController" in t for t in titles), titles  # the check sees Train's actors
    helpers = [t for t in titles if "PlacementGroupCleaner" in t or "PreemptionWatcher" in t]
    assert helpers == []
    assert dict(os.environ) == before
    # Ray Train's Ctrl-C handler (it holds the finished controller) does not outlive the fit
    assert signal.getsignal(signal.SIGINT) is handler
