"""The Ray Train glue (`mtmg.trainers`) on the session's embedded Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mtmg import cluster, trainers


def _process_titles(root: int) -> list[str]:
    """Command lines of the processes under `root` (Ray workers show their actor class)."""
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    under, grew = {root}, True
    while grew:
        more = {pid for pid, pp in parent.items() if pp in under} - under
        under |= more
        grew = bool(more)
    titles = []
    for pid in under - {root}:
        try:
            titles.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
        except OSError:
            continue
    return titles


def test_embedded_ray_runs_train_jobs_lean(ray_session, tmp_path):
    """On the embedded Ray no placement-group cleaner (it would ask the state API, which runs
    no dashboard modules there, every second and warn every second) and no preemption watcher;
    the knobs reach the workers and leave the driver's environment as it was."""
    assert cluster.is_embedded()
    before = dict(os.environ)
    knobs = list(trainers.LEAN_ENV)

    seen = tmp_path / "seen.json"  # absolute: Train workers change their working directory

    def probe(config: dict) -> None:  # nested: pickled by value (workers cannot import tests)
        env = {k: os.environ.get(k, "") for k in knobs}
        seen.write_text(json.dumps({"raylet": os.getppid(), **env}))

    trainers.fit(probe, {}, workers=1, use_gpu=False, storage_path=str(tmp_path),
                          name="probe", max_failures=0)  # fmt: skip
    m = json.loads(seen.read_text())
    assert m["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert dict(os.environ) == before
    titles = _process_titles(m["raylet"])
    assert any("TrainController" in t for t in titles), titles  # the check sees Train's actors
    helpers = [t for t in titles if "PlacementGroupCleaner" in t or "PreemptionWatcher" in t]
    assert helpers == []
