"""The Ray Train glue (`mtmg.runtime.train`) on the session's embedded Ray."""

from __future__ import annotations

import ipaddress
import json
import os
import signal

from mtmg.runtime import cluster, train


def test_embedded_ray_runs_train_jobs_lean(ray_session, tmp_path):
    """On the embedded Ray no placement-group cleaner (it would ask the state API, which runs
    no dashboard modules there, every second and warn every second) and no preemption watcher;
    the knobs reach the workers and leave the driver's environment as it was."""
    assert cluster.is_embedded()
    before, handler = dict(os.environ), signal.getsignal(signal.SIGINT)
    knobs = list(train.LEAN_ENV)
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

    def probe(config: dict, ctx) -> None:  # what runs while the job's helper actors are up
        env = {k: os.environ.get(k, "") for k in knobs}
        seen.write_text(
            json.dumps(
                {"titles": process_titles(os.getppid()), "on_start_before": started.exists(), **env}
            )
        )

    calls = []

    def on_start() -> None:
        calls.append(1)
        started.touch()

    train.fit(
        probe,
        {},
        workers=1,
        use_gpu=False,
        storage_path=str(tmp_path),
        name="probe",
        max_failures=0,
        on_start=on_start,
    )
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


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # "::ffff:127.0.0.1": a dual-stack socket
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def test_embedded_train_job_listens_on_loopback_only(ray_session, tmp_path):
    """While a two-worker job runs (a real process group), no process of the embedded Ray (the
    driver and all its descendants: GCS, raylet, agents, Train's actors and workers) listens
    beyond loopback: not torch's rendezvous store (by default on every interface), not gloo,
    not Ray's own servers."""
    seen = tmp_path / "listening.json"

    def probe(config: dict, ctx) -> None:
        import socket
        from pathlib import Path

        import psutil  # Ray's own copy, on the path once ray is imported
        import ray.train
        import torch.distributed as dist

        if ray.train.get_context().get_world_rank() == 0:
            root, rows = psutil.Process(config["driver"]), []
            for p in [root, *root.children(recursive=True)]:
                try:
                    rows += [
                        [c.laddr.ip, c.laddr.port, Path(p.cmdline()[0]).name[:40]]
                        for c in p.net_connections("inet")
                        if c.status == psutil.CONN_LISTEN
                        or (c.type == socket.SOCK_DGRAM and not c.raddr)
                    ]
                except psutil.Error:  # ended meanwhile
                    continue
            store = int(os.environ["MASTER_PORT"])
            Path(config["out"]).write_text(json.dumps({"rows": rows, "store": store}))
        dist.barrier()  # rank 1 keeps its sockets until rank 0 has looked

    train.fit(
        probe,
        {"out": str(seen), "driver": os.getpid()},
        workers=2,
        use_gpu=False,
        storage_path=str(tmp_path),
        name="listen",
        max_failures=0,
    )
    m = json.loads(seen.read_text())
    assert m["store"] in [port for _, port, _ in m["rows"]], m  # the check sees the store
    assert any("raylet" in who for _, _, who in m["rows"]), m  # and Ray's daemons
    assert [r for r in m["rows"] if not _is_loopback(r[0])] == []
