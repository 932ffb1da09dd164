"""Paths and object-store URIs through pyarrow filesystems, with atomic writes.

A location is a plain path (local disk or a shared mount) or a URI pyarrow understands
(`file://`, `s3://`, `gs://`, `hdfs://`, ...). Everything that reads raw data or writes shards
goes through here, so the same code runs on a laptop and on cluster nodes that share storage.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from mtmg.errors import MtmgError


@dataclass(frozen=True)
class Location:
    """A directory or file on some filesystem; picklable, so it travels to Ray tasks."""

    uri: str  # as the user gave it (absolute for local paths)

    @property
    def fs(self) -> pafs.FileSystem:
        return _resolve(self.uri)[0]

    @property
    def path(self) -> str:
        return _resolve(self.uri)[1]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> Location:
        return Location("/".join([self.uri.rstrip("/"), *parts]))

    def child_path(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def __str__(self) -> str:
        return self.uri


def location(path_or_uri: str | os.PathLike) -> Location:
    """A Location from a user-given path or URI; local paths become absolute."""
    s = os.fspath(path_or_uri)
    if "://" not in s:
        s = os.path.abspath(os.path.expanduser(s))
    return Location(s)


_FS_CACHE: dict[str, tuple[pafs.FileSystem, str]] = {}


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if uri not in _FS_CACHE:
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            fs, path = pafs.LocalFileSystem(), uri
        _FS_CACHE[uri] = (fs, path)
    return _FS_CACHE[uri]


# write errors that a retry does not fix: a Ray task stops at once and the run says why
PERMANENT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class StorageError(MtmgError):
    """A location cannot be written for a reason retrying does not fix (not an OSError, so Ray
    does not retry it)."""


def permanent(e: OSError, path: str) -> StorageError | None:
    """A StorageError naming `path` if `e` is a full disk, a read-only file system or a refused
    permission; None for errors a retry may fix."""
    what = PERMANENT.get(e.errno)
    return StorageError(f"{what} writing {path} ({e})") if what else None


def check_writable(loc: Location, flag: str = "--out") -> None:
    """Create `loc` and write and remove a probe file there: a clear StorageError up front
    instead of a failure in every writer later."""
    probe = loc.child_path(f".mtmg-probe-{uuid.uuid4().hex[:8]}")
    try:
        loc.fs.create_dir(loc.path, recursive=True)
        with loc.fs.open_output_stream(probe) as f:
            f.write(b"probe")
        loc.fs.delete_file(probe)
    except OSError as e:
        raise StorageError(
            f"{flag} {loc}: cannot write there ({e}); choose another {flag} or make it writable"
        ) from e


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(fs: pafs.FileSystem, path: str, *, dirs_only: bool = False) -> list[str]:
    """Sorted base names in a directory (empty list if it does not exist)."""
    if isinstance(fs, pafs.LocalFileSystem):  # os.scandir is much faster on 500k-entry folders
        try:
            with os.scandir(path) as it:
                return sorted(e.name for e in it if not dirs_only or e.is_dir())
        except FileNotFoundError:
            return []
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if not dirs_only or i.type == pafs.FileType.Directory)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    if isinstance(fs, pafs.LocalFileSystem):
        with open(path, "rb") as f:
            return f.read()
    with fs.open_input_file(path) as f:
        return f.read()


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    return json.loads(read_bytes(fs, path))


def file_sha256(fs: pafs.FileSystem, path: str) -> tuple[str, int]:
    """sha256 (hex) and size of a file, read in pieces."""
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def file_stats(fs: pafs.FileSystem, directory: str) -> dict[str, tuple[int, int]]:
    """Base name -> (size, mtime_ns) of the entries of a directory, from one listing."""
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            with os.scandir(directory) as it:
                return {e.name: (st.st_size, st.st_mtime_ns) for e in it for st in [e.stat()]}
        except (FileNotFoundError, NotADirectoryError):
            return {}
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return {i.base_name: (i.size or 0, i.mtime_ns or 0) for i in infos}


class _HashingWriter(io.RawIOBase):
    """Raw stream that hashes what passes through it on its way to `raw`."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)


class _Exposed:
    """The buffered stream a writer uses, with the hash and size of what reached the file."""

    def __init__(self, buffered: io.BufferedWriter, hashing: _HashingWriter) -> None:
        self._buffered, self._hashing = buffered, hashing

    def write(self, data: bytes) -> int:
        return self._buffered.write(data)

    def flush(self) -> None:
        self._buffered.flush()

    @property
    def sha256(self) -> Any:
        self._buffered.flush()
        return self._hashing.sha256

    @property
    def size(self) -> int:
        self._buffered.flush()
        return self._hashing.size


@contextlib.contextmanager
def atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[_Exposed]:
    """Write to a temporary name beside `path` and move it into place only on success.

    Readers never see a partial file under the final name; the writer exposes `.sha256` and
    `.size` of what was written. A full disk or a refused write raises StorageError.
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(tmp, buffer_size=None) as raw:
            hashing = _HashingWriter(raw)
            # tarfile writes in 512-byte pieces: gather them so hashing sees few large writes
            buffered = io.BufferedWriter(hashing, buffer_size=1 << 20)
            yield _Exposed(buffered, hashing)
            buffered.flush()
        fs.move(tmp, path)
    except BaseException as e:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        if isinstance(e, OSError) and (err := permanent(e, path)):
            raise err from e
        raise


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with atomic_output(fs, path) as f:
        f.write(data)


def write_json_atomic(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(fs, path, data.encode())


def remove_stale_temporaries(fs: pafs.FileSystem, directory: str) -> int:
    """Delete `*.tmp-*` files left by an interrupted run; returns how many."""
    n = 0
    for name in list_dir(fs, directory):
        if ".tmp-" in name:
            fs.delete_file(f"{directory}/{name}")
            n += 1
    return n
