"""Paths and object-store URIs through pyarrow filesystems, with atomic writes.

A location is a plain path (local disk or a shared mount) or a URI pyarrow understands
(`file://`, `s3://`, `gs://`, `hdfs://`, ...). Everything that reads raw data or writes shards
goes through here, so the same code runs on a laptop and on cluster nodes that share storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs


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
    `.size` of what was written.
    """
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp, buffer_size=None) as raw:
            hashing = _HashingWriter(raw)
            # tarfile writes in 512-byte pieces: gather them so hashing sees few large writes
            buffered = io.BufferedWriter(hashing, buffer_size=1 << 20)
            yield _Exposed(buffered, hashing)
            buffered.flush()
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
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
