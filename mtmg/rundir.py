"""An output directory owned by one run: locked for the run's life, and fingerprinted, so a
rerun continues only the same run and never returns another run's results.

`OUT/run.json` records what determines a run's results: its options (less the operational
ones in `OPERATIONAL`) and its inputs by content (a shard set by its manifest's sha256, a run
directory by its own fingerprint, a file by its sha256, or by size and mtime when large). A
rerun with the same fingerprint resumes; another is refused unless `overwrite`, which deletes
the old outputs first. A run that fails before it leaves any result behind (only its
records: run.json, config.yaml, spec.yaml) takes them away, so that it holds up no rerun.

`OUT/.lock` is an exclusive `flock` held while the run lives: a second run into the same OUT
fails at once. `flock` is reliable on local disks and on NFSv4 (Linux maps it to a byte-range
lock); on object stores and some shared filesystems it is not enforced (see docs/guarantees.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtmg.errors import InputError, MtmgError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# options that say how or where a run runs, not what it computes: they may change on a rerun
OPERATIONAL = frozenset(
    {
        "out",
        "overwrite",
        "report_to",
        "cluster",
        "cache_dir",
        "max_failures",
        "loader_workers",
        "eval_cache_gb",
        "eval_batch_size",
        "cpus_per_worker",
        "cpus_per_trial",
        "gpus_per_trial",
        "max_concurrent",
        "storage",
        "resume",
        "retry_failed",
        "spec",
        "threads",
    }
)
# what an earlier mtmg run leaves in OUT: with these and no run.json, its inputs are unknown
_RUN_MARKERS = ("config.yaml", "summary.json", "spec.yaml")
# what a run writes about itself before any result: a run that fails leaving only these made
# nothing, and is taken away
_RECORDS = frozenset({LOCK_FILE, RUN_FILE, "config.yaml", "spec.yaml"})
_HASHED_BYTES = 64 * 2**20  # larger input files (weights) are known by size and mtime


class RunDirError(MtmgError, ValueError):
    """OUT is in use by another run, or holds a run of other options or inputs."""


def _describe_path(value: str, out: Path) -> Any:
    """A path-valued option by content; other strings unchanged."""
    if "://" in value or not (os.sep in value or Path(value).suffix):
        return value
    p = Path(value).expanduser().resolve()
    if not p.exists():
        return value
    if p == out or out in p.parents:  # made by this run: same name first time and on resume
        return str(p.relative_to(out))
    if (p / "manifest.json").is_file():
        return {"shards": str(p), "manifest_sha256": _sha256(p / "manifest.json")}
    if (p / RUN_FILE).is_file():
        return {"run": str(p), "fingerprint": _read(p / RUN_FILE).get("fingerprint")}
    if p.is_file():
        st = p.stat()
        if st.st_size <= _HASHED_BYTES:  # configs, label files: rewritten unchanged, same input
            return {"file": str(p), "sha256": _sha256(p)}
        return {"file": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return str(p)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def identity(kind: str, cfg: Any, out: str | os.PathLike) -> dict[str, Any]:
    """What determines the results of run `cfg` (a config dataclass) of stage `kind`."""
    root = Path(out).expanduser().resolve()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in OPERATIONAL:
            continue
        v = getattr(cfg, f.name)
        if isinstance(v, str):
            v = _describe_path(v, root)
        elif isinstance(v, tuple | list):
            v = [_describe_path(x, root) if isinstance(x, str) else x for x in v]
        values[f.name] = v
    return {"kind": kind, "options": values}


def fingerprint(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    if old.get("kind") != new["kind"]:
        return [f"it is a {old.get('kind')} run, not a {new['kind']} run"]
    a, b = old.get("options", {}), new["options"]
    return [
        f"--{k.replace('_', '-')} {_short(a.get(k))} -> {_short(b.get(k))}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _short(v: Any) -> str:
    if isinstance(v, dict):  # an input by content: name it and say its content changed
        name = v.get("shards") or v.get("run") or v.get("file")
        return f"{name} (content {fingerprint(v)[:8]})"
    return json.dumps(v, default=str)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold `OUT/.lock` exclusively; fail at once, naming the holder, when another run has it."""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunDirError(
                f"{out} is in use by another run ({holder}); wait for it to end or choose "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {when}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def make_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create folder `path` (given as `flag`) if need be; returns it resolved. A path that is
    a file, or cannot be created, is an InputError naming `flag`."""
    root = Path(path).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (root, *root.parents) if p.exists()), None)
        if blocker == root and not root.is_dir():
            raise InputError(f"{flag} {root} is a file, not a folder") from None
        if blocker is not None and not blocker.is_dir():
            raise InputError(f"{flag} {root}: {blocker} is a file, not a folder") from None
        raise InputError(
            f"{flag} {root}: cannot write there ({e.strerror or e}); choose another {flag} or "
            "make it writable"
        ) from None
    return root


@contextlib.contextmanager
def claim(
    kind: str, cfg: Any, out: str | os.PathLike, *, overwrite: bool = False
) -> Iterator[bool]:
    """Own OUT for the duration of a run of `cfg`; yields True when OUT holds the same run
    (resume it), False when the run starts afresh. Refuses OUT when it is locked by a live run,
    or holds a run of other options or inputs (unless `overwrite`: its outputs are deleted).
    A run that fails leaving only its records (`_RECORDS`) takes them away: it made nothing
    to resume or to be taken for its results, and a corrected rerun finds OUT free."""
    root = Path(out).expanduser().resolve()
    ident = identity(kind, cfg, root)
    created = not root.exists()
    make_dir(root)
    with _lock(root):
        claimed = False
        try:
            resume = _check(root, ident, overwrite)
            record = {"fingerprint": fingerprint(ident), **ident}
            (root / RUN_FILE).write_text(json.dumps(record, indent=1, default=str))
            claimed = True
            yield resume
        except BaseException:
            # a refused claim leaves what OUT held; a run that made nothing takes its records
            left = {p.name for p in root.iterdir()}
            if left <= _RECORDS and created:
                shutil.rmtree(root, ignore_errors=True)  # leave no trace
            elif left <= _RECORDS and claimed:
                for name in left - {LOCK_FILE}:
                    (root / name).unlink()
            raise


def _check(root: Path, ident: dict[str, Any], overwrite: bool) -> bool:
    """Whether OUT holds this same run; clears or refuses one of other inputs."""
    run_file = root / RUN_FILE
    old = _read(run_file) if run_file.is_file() else None
    if old is not None and old.get("fingerprint") == fingerprint(ident):
        return True
    earlier = old is not None or any((root / m).exists() for m in _RUN_MARKERS)
    if not earlier:
        return False
    if overwrite:
        for p in root.iterdir():
            if p.name != LOCK_FILE:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return False
    why = _differences(old, ident) if old else ["its inputs were not recorded (an older mtmg)"]
    raise RunDirError(
        f"{root} holds another run ({'; '.join(why)}): its outputs would be returned as this "
        "run's. Choose another --out, or pass --overwrite to delete them and start afresh"
    )
