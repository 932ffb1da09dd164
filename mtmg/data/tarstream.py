"""A strict, fast reader of the WebDataset tars mtmg writes: members grouped into samples.

Python's `tarfile` (under webdataset) spends as long parsing headers as the loader spends on
the rest of a sample, and forgives what a shard must not hold: it ends the archive quietly at
a corrupt header and steps over links. Here headers are checked and parsed by slicing, a
member's data is one read, and members can be skipped unread. Samples are grouped as
webdataset's `group_by_keys(tar_file_expander(...))` groups them: key and lower-cased suffix
split at the first dot of the base name, `__meta__` names and directories passed over, a
repeated suffix an error. Regular files (named by ustar prefix, pax or GNU long-name headers)
are the only members: a link, device or fifo is an error naming it, as are a bad checksum and
a member running past the end of the file. The archive ends at a zero block, or at the end of
the file after a member, as tarfile accepts.
"""

from __future__ import annotations

import re
import struct
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

BLOCK = 512
CHUNK = 1 << 20  # reads of unknown bound come in pieces: a forged size allocates nothing
_ZEROS = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # '7' (contiguous) is a regular file to tarfile as well
_EXTENDED = (b"x", b"X", b"g", b"L", b"K")  # headers about the next member
_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "character device"}
_KINDS |= {b"4": "block device", b"6": "fifo", b"S": "sparse file"}
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")


class TarStreamError(tarfile.TarError, ValueError):
    """A tar that is corrupt, truncated or holds something other than regular files."""


def samples(
    f: BinaryIO, url: str, *, size: int | None = None, skip: frozenset[str] = frozenset()
) -> Iterator[dict[str, Any]]:
    """Samples of the tar `f`, as webdataset yields them: {"__key__", "__url__", suffix:
    bytes, ...} in member order. A member whose suffix is in `skip` is not read (sought past
    if `f` can seek, else read in pieces and dropped) and appears as `suffix: None`: its name
    still counts in membership checks, and the caller drops it before anything decodes.
    `size`, the file's length when known (a seekable `f` tells it), bounds every read: a
    forged size is an error, not an allocation."""
    current: dict[str, Any] | None = None
    for key, suffix, data in _members(f, size, skip):
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        if suffix in current:
            raise TarStreamError(f"{key}.{suffix}: a second member of that name")
        current[suffix] = data
    if current is not None:
        yield current


def _members(
    f: BinaryIO, size: int | None, skip: frozenset[str]
) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, suffix, data or None when skipped) of each regular member with a suffix."""
    seek = bool(getattr(f, "seekable", lambda: False)())
    if size is None and seek:
        start = f.seek(0, 1)
        size = f.seek(0, 2) - start
        f.seek(start)
    pos, long_name, pax_size = 0, None, None  # the last two from headers before a member
    while True:
        hdr = f.read(BLOCK)
        if hdr == _ZEROS or (not hdr and pos):
            return
        kind, name, n = _header(hdr, pos)
        pos += BLOCK
        if kind in _EXTENDED:
            at = pos - BLOCK
            data = _data(f, n, pos, size, seek, f"the {kind.decode()!r} header at byte {at}")
            pos += n + -n % BLOCK
            if kind in (b"x", b"X"):  # the first name or size given wins, as in tarfile
                pax = _pax(data, at)
                long_name = long_name or pax.get("path", "").rstrip("/") or None
                if pax_size is None and "size" in pax:
                    pax_size = _count(pax["size"], at)
            elif kind == b"L":
                long_name = long_name or _text(data)
            continue
        name, n = long_name or name, n if pax_size is None else pax_size
        long_name = pax_size = None
        if kind == b"5":  # a directory: no data, passed over
            continue
        if kind not in _REGULAR:
            what = _KINDS.get(kind, f"member of type {kind!r}")
            raise TarStreamError(f"{name}: a {what}; a shard holds only regular files")
        ks = _split(name)
        data = _data(f, n, pos, size, seek, name, read=ks is not None and ks[1] not in skip)
        pos += n + -n % BLOCK
        if ks is not None:
            yield ks[0], ks[1], data


def _header(hdr: bytes, at: int) -> tuple[bytes, str, int]:
    """(type flag, name, data size) of the header block at byte `at`, its checksum verified;
    a file (type '0' or NUL) named with a trailing '/' is a directory ('5'), as in tarfile."""
    if len(hdr) < BLOCK:
        raise TarStreamError(f"truncated header at byte {at} ({len(hdr)} of {BLOCK} bytes)")
    # adler32's low half is 1 + the byte sum modulo 65521: exact for 256 bytes (<= 65280)
    total = (zlib.adler32(hdr[:256]) & 0xFFFF) + (zlib.adler32(hdr[256:]) & 0xFFFF) - 2
    stored, unsigned = _number(hdr[148:156], at), total - sum(hdr[148:156]) + 256
    if stored != unsigned and stored != _signed_sum(hdr):
        raise TarStreamError(f"corrupt header at byte {at} (bad checksum)")
    kind, name = hdr[156:157], _text(hdr[:100])
    if kind == b"\0" and name.endswith("/"):
        kind = b"5"
    if hdr[345] and kind not in (b"L", b"K", b"S"):  # ustar: the name continues a prefix
        name = _text(hdr[345:500]) + "/" + name
    return kind, name, _number(hdr[124:136], at)


def _number(field: bytes, at: int) -> int:
    """A numeric header field: octal digits, or base-256 (GNU) when the first byte says so."""
    if field[0] in (0x80, 0xFF):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0xFF else n
    digits = field.split(b"\0", 1)[0].strip() or b"0"
    if not digits.isdigit() or b"8" in digits or b"9" in digits:
        raise TarStreamError(f"corrupt header at byte {at} (number {bytes(field)!r})")
    return int(digits, 8)


def _signed_sum(hdr: bytes) -> int:
    """The checksum as some old tars computed it, over signed bytes."""
    return 256 + sum(struct.unpack_from("148b8x356b", hdr))


def _count(text: str, at: int) -> int:
    if not (text.isascii() and text.isdigit() and len(text) < 20):
        raise TarStreamError(f"corrupt pax header at byte {at} (size {text!r})")
    return int(text)


def _text(field: bytes) -> str:
    """A NUL-terminated name, as tarfile decodes it."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes, at: int) -> dict[str, str]:
    """The records of a pax extended header, each 'LENGTH keyword=value\\n'."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() and len(digits) < 20 else 0
        record = data[space + 1 : pos + length]  # 'keyword=value\n', when length is right
        if (
            not length
            or pos + length > len(data)
            or not record.endswith(b"\n")
            or b"=" not in record
        ):
            raise TarStreamError(f"corrupt pax header at byte {at}")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _split(name: str) -> tuple[str, str] | None:
    """(key, lower-cased suffix) as webdataset splits a member name; None for a name it passes
    over: no suffix, or a `__meta__` name."""
    if name.startswith("__") and (("/" not in name and name.endswith("__")) or _META.match(name)):
        return None
    if "/" in name:
        m = _KEY.match(name)
        return (m.group(1), m.group(2).lower()) if m else None
    dot = name.find(".")
    return (name[:dot], name[dot + 1 :].lower()) if dot > 0 else None


def _data(
    f: BinaryIO, n: int, pos: int, size: int | None, seek: bool, what: str, read: bool = True
) -> bytes | None:
    """The `n` bytes of data at `pos` (None when not `read`), its padding consumed."""
    end = n + -n % BLOCK
    if n < 0 or (size is not None and pos + end > size):
        raise TarStreamError(
            f"{what}: {n} bytes of data at byte {pos} run past the end of the file "
            f"({size} bytes): truncated or corrupt"
        )
    if not read:
        _drop(f, end, seek, what)
        return None
    data = f.read(n) if size is not None or n <= CHUNK else b""
    if len(data) < n:  # a short read, or a size not known to fit: the rest in pieces
        parts, left = [data], n - len(data)
        while left and (part := f.read(min(left, CHUNK))):
            parts.append(part)
            left -= len(part)
        data = b"".join(parts)
    if len(data) < n:
        raise TarStreamError(
            f"{what}: {n} bytes of data at byte {pos}, the file ends first (truncated)"
        )
    _drop(f, end - n, False, what)
    return data


def _drop(f: BinaryIO, n: int, seek: bool, what: str) -> None:
    """Step over `n` bytes: one seek, or reads of at most CHUNK bytes."""
    if seek:
        f.seek(n, 1)
        return
    while n:
        part = f.read(min(n, CHUNK))
        if not part:
            raise TarStreamError(f"{what}: the file ends inside its data (truncated)")
        n -= len(part)
