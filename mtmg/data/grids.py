"""Shard format 2's multispectral members: bands on their native grids, losslessly compressed.

A sample holds one member per grid (`ms10.zst`, `ms20.zst`, `ms60.zst`): the bands stored on
that grid as a C x h x w uint16 array, byte-shuffled (all low bytes, then all high bytes) and
compressed with zstd, behind a small header naming the grid's factor, shape and bands. Readers
decode only the members holding the bands they need, and bring coarser grids onto the 10 m grid
(nearest by default: a source band is exactly `x[::f, ::f]`).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from mtmg.data import bands
from mtmg.errors import MtmgError

MAGIC = b"MTG2"
HEADER = struct.Struct("<4sBBHH")  # magic, grid factor, channels, height, width
NAME_BYTES = 3  # every Sentinel-2 band name is three ASCII characters
LEVEL = 3
CODEC = {"name": "zstd", "level": LEVEL, "filter": "byte shuffle of uint16 (low, then high)"}
MEMBERS = ("ms10.zst", "ms20.zst", "ms60.zst")
UPSAMPLING = ("nearest", "bilinear", "bicubic")


_THREAD = threading.local()
Head = tuple[tuple[str, ...], int, tuple[int, int, int]]  # band names, factor, C x h x w


class GroupError(MtmgError, ValueError):
    """A grid member that is not what format 2 defines (the caller names the sample)."""


@dataclass(frozen=True)
class Group:
    """The bands stored on one grid of a sample: names, factor against the 10 m grid, pixels."""

    names: tuple[str, ...]
    factor: int
    pixels: np.ndarray  # C x h x w uint16


def member_name(factor: int) -> str:
    """The member of a grid `factor` times coarser than 10 m."""
    return f"ms{10 * factor}.zst"


def encode_group(pixels: np.ndarray, names: Sequence[str], factor: int) -> bytes:
    """One member's bytes: header, band names, zstd frame of the shuffled pixels."""
    c, h, w = pixels.shape
    if pixels.dtype != np.uint16 or c != len(names) or not 0 < c < 256:
        raise GroupError(f"cannot store {pixels.dtype} {pixels.shape} as bands {list(names)}")
    shuffled = np.concatenate([(pixels & 0xFF).astype(np.uint8), (pixels >> 8).astype(np.uint8)])
    frame = zstandard.ZstdCompressor(level=LEVEL, write_checksum=False).compress(shuffled)
    return HEADER.pack(MAGIC, factor, c, h, w) + "".join(names).encode("ascii") + frame


def peek(data: bytes) -> Head:
    """Band names, factor and shape of a member, checked, without decompressing it."""
    if len(data) < HEADER.size or data[:4] != MAGIC:
        raise GroupError("not a format 2 band group (no MTG2 header)")
    _, factor, c, h, w = HEADER.unpack_from(data)
    raw = data[HEADER.size : HEADER.size + NAME_BYTES * c]
    try:
        names = tuple(raw[i : i + NAME_BYTES].decode("ascii") for i in range(0, len(raw), 3))
    except UnicodeDecodeError:
        names = ()
    if len(names) != c or not set(names) <= set(bands.S2_L1C) or factor not in (1, 2, 6):
        raise GroupError(f"a band group header that names bands {list(names)} at x{factor}")
    return names, factor, (c, h, w)


def decode_group(data: bytes, head: Head | None = None) -> Group:
    """A member's bands; its frame must declare exactly the size its header promises, so a
    forged member cannot make the reader allocate more. `head`: what `peek` gave for `data`."""
    names, factor, shape = head or peek(data)
    frame = data[HEADER.size + NAME_BYTES * len(names) :]
    size = 2 * shape[0] * shape[1] * shape[2]
    try:
        declared = zstandard.frame_content_size(frame)
        if declared != size:
            raise GroupError(f"its zstd frame holds {declared} bytes, its header says {size}")
        raw = _decompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as e:
        raise GroupError(f"not a zstd frame ({e})") from e
    if len(raw) != size:
        raise GroupError(f"decompressed to {len(raw)} bytes, its header says {size}")
    planes = np.frombuffer(raw, np.uint8).reshape(2, -1)
    pixels = planes[1].astype(np.uint16)
    pixels <<= 8
    pixels |= planes[0]
    return Group(names, factor, pixels.reshape(shape))


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor: making one costs about as much as decoding a small grid."""
    dctx = getattr(_THREAD, "dctx", None)
    if dctx is None:
        dctx = _THREAD.dctx = zstandard.ZstdDecompressor()
    return dctx


def encode_sample(sample: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """A layout's sample with its multispectral pixels as grid members: `ms.groups` as read,
    or an `ms.npy` already on one grid (bands `names`) as one 10 m member."""
    out = {k: v for k, v in sample.items() if k not in ("ms.groups", "ms.npy")}
    groups = sample.get("ms.groups")
    if groups is None and "ms.npy" in sample:
        groups = [(tuple(names), 1, sample["ms.npy"])]
    for group_names, factor, pixels in groups or ():
        out[member_name(factor)] = encode_group(pixels, group_names, factor)
    return out


def has_groups(sample: dict[str, Any]) -> bool:
    return any(m in sample for m in MEMBERS)


def read_groups(sample: dict[str, Any], names: Sequence[str]) -> list[Group]:
    """The groups of a format 2 sample that hold bands `names`, finest grid first, decoding
    only those members. A band no member holds, or a member that does not decode, raises
    GroupError naming the member."""
    where: dict[str, str] = {}
    heads: dict[str, Head] = {}
    for member in MEMBERS:  # headers read in grid order until every band is found
        if member in sample and not set(names) <= set(where):
            try:
                heads[member] = peek(sample[member])
            except GroupError as e:
                raise GroupError(f"{member}: {e}") from None
            where.update({b: member for b in heads[member][0]})
    missing = [b for b in names if b not in where]
    if missing:
        raise GroupError(f"no member holds band(s) {missing} (members: {sorted(where)})")
    groups = []
    for member in MEMBERS:
        if member in {where[b] for b in names}:
            try:
                groups.append(decode_group(sample[member], heads[member]))
            except GroupError as e:
                raise GroupError(f"{member}: {e}") from None
    grid = {(g.pixels.shape[1] * g.factor, g.pixels.shape[2] * g.factor) for g in groups}
    if len(grid) > 1:
        raise GroupError(f"its grids do not cover one 10 m grid ({sorted(grid)})")
    return groups


def read_bands(sample: dict[str, Any], names: Sequence[str], method: str = "nearest") -> np.ndarray:
    """Bands `names` of a format 2 sample on its 10 m grid (`read_groups`): uint16 with
    `nearest`, float32 with `bilinear` or `bicubic`."""
    if method not in UPSAMPLING:
        raise ValueError(f"unknown upsampling {method!r} (choose from {', '.join(UPSAMPLING)})")
    return on_grid(read_groups(sample, names), names, method)


def on_grid(groups: Sequence[Group], names: Sequence[str], method: str = "nearest") -> np.ndarray:
    """Bands `names` of decoded `groups` on the 10 m grid, in that order."""
    where = {b: (g, i) for g in groups for i, b in enumerate(g.names)}
    first = groups[0]
    hw = tuple(n * first.factor for n in first.pixels.shape[1:])
    if len(groups) == 1 and first.factor == 1:  # one 10 m member: a plain band selection
        return _as(first.pixels[[where[b][1] for b in names]], method)
    out = np.empty((len(names), *hw), np.uint16 if method == "nearest" else np.float32)
    for g in groups:
        ks = [k for k, b in enumerate(names) if where[b][0] is g]
        if not ks:
            continue
        rows = [where[names[k]][1] for k in ks]
        picked = g.pixels if rows == list(range(len(g.names))) else g.pixels[rows]
        out[ks] = _upsample(picked, g.factor, hw, method)
    return out


def _as(pixels: np.ndarray, method: str) -> np.ndarray:
    return pixels if method == "nearest" else pixels.astype(np.float32)


def _upsample(group: np.ndarray, factor: int, hw: tuple[int, int], method: str) -> np.ndarray:
    """C x h x w bands onto the C x H x W 10 m grid."""
    if group.shape[1] * factor != hw[0] or group.shape[2] * factor != hw[1]:
        raise GroupError(f"x{factor} bands of {group.shape[1:]} do not cover the {hw} 10 m grid")
    if factor == 1:
        return _as(group, method)
    if method == "nearest":
        return group.repeat(factor, axis=1).repeat(factor, axis=2)
    import torch  # only for these methods: `mtmg.verify` and the writers need no torch
    import torch.nn.functional as F

    x = torch.from_numpy(group.astype(np.float32))[None]
    return F.interpolate(x, size=hw, mode=method, align_corners=False)[0].numpy()
