"""`mtmg.data.tarstream`: the samples webdataset reads from the same tars (pax, GNU and ustar
names, members of 0-513 bytes), members skipped unread on seekable and non-seekable files, and
corrupt, truncated, forged or linked members refused; then `ShardReader(skip=...)` on a real
format 2 set (real webdataset, Ray for that set only)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import tarfile
import tracemalloc

import pytest
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from mtmg import synth
from mtmg.data import shards, verify
from mtmg.data.loader import Decoder, ShardSet, Targets
from mtmg.data.tarstream import TarStreamError, samples

LONG = "S2B_MSIL2A_" + "k" * 110  # a name past the 100 bytes of a ustar header
SAMPLES = [
    {"__key__": "a", "e0": b"", "e511": b"1" * 511, "e512": b"2" * 512, "e513": b"3" * 513},
    {"__key__": LONG, "json": b'{"labels": []}', "ms10.zst": bytes(range(256)) * 9},
    {"__key__": "c", "cls": b"3"},
]


def _wds(data: bytes, url: str = "u") -> list[dict]:
    return list(group_by_keys(tar_file_expander([{"url": url, "stream": io.BytesIO(data)}])))


def _offset(data: bytes, i: int = -1) -> int:
    """Where member `i`'s header starts (-1: where the last member's padded data ends)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        m = tar.getmembers()[i]
    return m.offset if i >= 0 else m.offset_data + -(-m.size // 512) * 512


def _writer(items=SAMPLES) -> bytes:
    """A tar as mtmg writes its shards."""
    buf = io.BytesIO()
    with wds.TarWriter(buf, user="mtmg", group="mtmg", mtime=0) as w:
        for s in items:
            w.write(s)
    return buf.getvalue()


def _tar(members, fmt=tarfile.USTAR_FORMAT) -> bytes:
    """A tar of (name, bytes or {"type": a TarInfo type}); names with '/' use ustar's prefix."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, bytes):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type, info.linkname = data["type"], "/etc/passwd"
                tar.addfile(info)
    return buf.getvalue()


def _read(data: bytes, f=None, **kw) -> list[dict]:
    return list(samples(f or io.BytesIO(data), "u", **kw))


class _Pipe:
    """A file that only reads, like a pipe; counts the bytes it gave."""

    def __init__(self, data: bytes) -> None:
        self.f, self.given = io.BytesIO(data), 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.given += len(b)
        return b


class _File(_Pipe):
    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)


ODD = [  # what webdataset passes over or lower-cases
    ("dir/", {"type": tarfile.DIRTYPE}),
    ("__meta__", b"m"),
    ("README", b"r"),
    ("x.JSON", b"{}"),
    ("d" * 60 + "/" + "k" * 60 + ".ms.npy", b"n" * 700),
]


@pytest.mark.parametrize("fmt", ["TarWriter", "pax", "gnu", "ustar"])
def test_the_same_samples_as_webdataset(fmt):
    if fmt == "TarWriter":
        data = _writer()
    else:
        members = [(f"{s['__key__']}.{k}", v) for s in SAMPLES for k, v in s.items() if k[0] != "_"]
        if fmt == "ustar":  # no long names: only the prefix field
            members = [m for m in members if LONG not in m[0]]
        kind = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}
        data = _tar(ODD + members, kind[fmt])
    if fmt != "ustar":  # the long key needed a header of its own
        assert (b"@LongLink" if fmt == "gnu" else b"PaxHeader") in data
    want = _wds(data)
    assert _read(data) == want and _read(data, _Pipe(data)) == want
    assert [list(s) for s in _read(data)] == [list(s) for s in want]  # member order too
    cut = data[: _offset(data)]  # the file ends after the last member: an end, as in tarfile
    assert _read(cut) == want == _wds(cut)


@pytest.mark.parametrize("cls", [_File, _Pipe])
def test_skipped_members_keep_their_names_and_no_data(cls):
    data = _writer()
    skip = frozenset({"e512", "e513", "ms10.zst"})
    f = cls(data)
    got, full = _read(data, f, skip=skip), _wds(data)
    assert [list(s) for s in got] == [list(s) for s in full]
    for s, w in zip(got, full, strict=True):
        assert {k: v for k, v in s.items() if k not in skip} == {
            k: v for k, v in w.items() if k not in skip
        }
        assert all(s[k] is None for k in skip & s.keys())
    unread = 512 + 1024 + 2560  # the skipped members' data, padded to blocks: sought past
    assert f.given == _offset(data) + 512 - (unread if cls is _File else 0)


def _patch(data: bytes, at: int, start: int, field: bytes, fix: bool = True) -> bytes:
    """`data` with header bytes start.. of the header at `at` replaced (checksum fixed)."""
    hdr = bytearray(data[at : at + 512])
    hdr[start : start + len(field)] = field
    if fix:
        hdr[148:156] = b" " * 8
        hdr[148:156] = b"%06o\0 " % sum(hdr)
    return data[:at] + bytes(hdr) + data[at + 512 :]


SMALL = _tar([("a.json", b"{}"), ("a.cls", b"1"), ("b.json", b"x" * 700), ("b.cls", b"2")])
FORGED = {  # what is wrong -> (the tar, what the error says)
    "bad checksum": (_patch(SMALL, 1024, 0, b"z", fix=False), "bad checksum"),
    "truncated member": (SMALL[: 2560 + 300], "truncated"),
    "truncated header": (SMALL[: 2048 + 100], "truncated header"),
    "huge base-256 size": (_patch(SMALL, 1024, 124, b"\x80" + (1 << 80).to_bytes(11)), "past"),
    "huge octal size": (_patch(SMALL, 1024, 124, b"77777777777\0"), "past"),
    "size not a number": (_patch(SMALL, 1024, 124, b"12x4\0"), "corrupt header"),
    "duplicate member": (_tar([("a.json", b"{}"), ("a.json", b"{}")]), "a.json: a second"),
    "empty file": (b"", "truncated header at byte 0"),
}
FORGED |= {
    kind: (_tar([("a.json", b"{}"), ("a.cls", {"type": t})]), f"a.cls: a {kind}")
    for kind, t in [("symbolic link", tarfile.SYMTYPE), ("hard link", tarfile.LNKTYPE)]
    + [("fifo", tarfile.FIFOTYPE), ("character device", tarfile.CHRTYPE)]
}


@pytest.mark.parametrize("case", list(FORGED))
@pytest.mark.parametrize("cls", [_File, _Pipe])
def test_corrupt_truncated_and_linked_members_are_errors(case, cls):
    data, said = FORGED[case]
    tracemalloc.start()
    try:
        with pytest.raises(TarStreamError, match="past|truncated" if said == "past" else said):
            _read(data, cls(data))  # a pipe has no size: a forged one is read in pieces
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_any_header_corruption_is_an_error_or_a_tar_never_a_crash():
    data = _writer(SAMPLES[:1])
    rng = random.Random(0)
    cases = [_patch(data, 0, i, bytes([data[i] ^ 0xFF]), fix) for i in range(512) for fix in (0, 1)]
    cases += [_patch(data, 0, 0, rng.randbytes(512)) for _ in range(200)]
    for bad in cases:
        for f in (io.BytesIO(bad), _Pipe(bad)):
            try:
                _read(bad, f, skip=frozenset({"e511"}))
            except TarStreamError:
                pass


# ----------------------------------------------------------- ShardReader on a real format 2 set


@pytest.fixture(scope="module")
def v2(tmp_path_factory, ray_session):
    """A format 2 set with S1: 8 patches, 4 per shard."""
    from mtmg import prep

    root, out = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("v2")
    synth.make_bigearthnet(root, n_patches=8, size=60, s1=True, seed=5)
    cfg = prep.ShardConfig(
        "bigearthnet", str(root), str(out), s1=str(root), shard_size=4, progress=False
    )
    prep.shard(cfg)
    return out


def _reader(out, skip=frozenset()):
    m = shards.load_manifest(out)
    urls = shards.shard_paths(out, "train", m)
    return list(verify.ShardReader(out, "train", m, skip=skip)({"url": u} for u in urls))


def _rewrite(out, edit):
    """The first train shard rewritten as `edit(its bytes, its members)`, manifest resealed."""
    path = sorted((out / "train").glob("*.tar"))[0]
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    path.write_bytes(edit(path.read_bytes(), members))
    m = json.loads((out / "manifest.json").read_text())
    for e in m["splits"]["train"]["shards"]:
        if e["name"] == f"train/{path.name}":
            e["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            e["bytes"] = path.stat().st_size
    (out / "manifest.json").write_text(json.dumps(m))
    return path


def _without_first(members, suffix):
    i = next(i for i, (name, _) in enumerate(members) if name.endswith(suffix))
    return _tar(members[:i] + members[i + 1 :])


EDITS = {  # skipping a member skips no check: (edit, what the error says, skip)
    "a lacking member": (lambda d, m: _without_first(m, "ms60.zst"), "lacks ms60.zst", None),
    "a planted member": (lambda d, m: _tar([("k.pyd", b"x"), *m]), "not part", {"pyd"}),
    "a corrupt header": (lambda d, m: _patch(d, _offset(d, 6), 0, b"?", False), "checksum", None),
}


def test_shard_reader_skips_members_unread_and_still_checks_them(v2, tmp_path):
    skip = frozenset({"ms20.zst", "ms60.zst", "s1.npy"})
    full, part = _reader(v2), _reader(v2, skip)
    urls = dict.fromkeys(s["__url__"] for s in full)
    assert full == [s for u in urls for s in _wds(open(u, "rb").read(), u)] and len(urls) > 1
    assert part == [{k: v for k, v in s.items() if k not in skip} for s in full]
    ds = ShardSet.open(str(v2))
    dec = Decoder.of(ds, "rgb", Targets.of(ds), 60)
    assert torch.equal(dec(part[0])["rgb"], dec(full[0])["rgb"])
    for case, (edit, said, also) in EDITS.items():
        out = tmp_path / case.replace(" ", "-")
        shutil.copytree(v2, out)
        path = _rewrite(out, edit)
        with pytest.raises(verify.ShardError, match=said) as err:
            _reader(out, frozenset(also or skip))
        assert str(path) in str(err.value)
