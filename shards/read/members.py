"""A DALI index checked against its tar, not trusted: every entry must point just past a tar header that names
that member and records its size, and the entries together must account for every member of the tar.

:func:`header_ok` reads the 512-byte header before each indexed member (vectorised over a whole shard): a
sound USTAR header (checksum, regular file) whose name is ``KEY.EXT`` (with the ``prefix`` field for long
names) and whose size is the entry's. :func:`covers` checks that the indexed members tile the tar from its
first byte to its end-of-archive blocks, so no member is left out; where they do not (a tar written by another
tool, with pax or GNU long-name headers between members), :func:`tar_members` reads the tar with ``tarfile``
and the two lists are compared. :func:`map_file` maps a tar read-only for all of them.
"""

from __future__ import annotations

import mmap
import tarfile
from pathlib import Path

import numpy as np

from shards.base.errors import ShardError

BLOCK = 512


def _octal(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of NUL/space-terminated ASCII octal fields (n, k), and which rows parse (leading spaces allowed,
    at least one digit, nothing but NUL or space after the digits)."""
    n, k = fields.shape
    value = np.zeros(n, np.int64)
    state = np.zeros(n, np.int8)  # 0 leading spaces, 1 digits, 2 terminated
    good = np.ones(n, bool)
    for j in range(k):
        c = fields[:, j].astype(np.int64)
        digit = (c >= 48) & (c <= 55)
        end = (c == 0) | (c == 32)
        lead = (state == 0) & (c == 32)
        take = digit & (state < 2)
        value = np.where(take, value * 8 + (c - 48), value)
        good &= lead | take | ((state >= 1) & end) | ((state == 2) & end)
        state = np.where(take, 1, np.where((state == 1) & end, 2, state))
    return value, good & (state >= 1)


def _cut(fields: np.ndarray) -> np.ndarray:
    """NUL-terminated byte fields (n, k) as a fixed-width bytes array, cut at the first NUL as tar readers do."""
    f = fields.copy()
    f[np.cumsum(f == 0, axis=1) > 0] = 0
    return f.view(f"S{f.shape[1]}").ravel()


def header_ok(m: np.ndarray, keys: np.ndarray, ext: str, off: np.ndarray, size: np.ndarray) -> np.ndarray:
    """For each entry (one per key): whether the block before ``off`` is a sound tar header for ``KEY.EXT`` of
    ``size`` bytes. Entries whose data lies (partly) past the end of the tar are judged on their header alone."""
    ok = (off >= BLOCK) & (off % BLOCK == 0) & (off <= len(m)) & (size >= 0)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return ok
    h = m[(off[rows] - BLOCK)[:, None] + np.arange(BLOCK)]
    stored, parsed = _octal(h[:, 148:156])
    total = h.sum(axis=1, dtype=np.int64) - h[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    recorded, sized = _octal(h[:, 124:136])
    good = parsed & (stored == total) & sized & (recorded == size[rows]) & np.isin(h[:, 156], (0, ord("0")))
    names = _cut(h[:, :100])
    ustar = (h[:, 257:262] == np.frombuffer(b"ustar", np.uint8)).all(axis=1)
    prefix = np.where(ustar, _cut(h[:, 345:500]), b"")
    want = np.char.encode(np.char.add(np.asarray(keys, dtype=str)[rows], "." + ext), "utf-8")
    same = (names == want) & (prefix == b"")
    for r in np.flatnonzero(good & ~same).tolist():  # long names: the prefix field, or GNU/pax headers before it
        name, pre, w = bytes(names[r]), bytes(prefix[r]), bytes(want[r])
        full = pre + b"/" + name if pre else name
        same[r] = full.removeprefix(b"./") == w.removeprefix(b"./") or (len(name) >= 99 and w.startswith(name[:99]))
    ok[rows] = good & same
    return ok


def covers(m: np.ndarray, off: np.ndarray, size: np.ndarray) -> bool:
    """Whether the members at (``off``, ``size``) — data offsets of every indexed member, any order — tile the
    tar: the first header at byte 0, each next header right after the previous member's padded data, and after
    the last one the end of the file or an end-of-archive (zero) block."""
    if not len(off):
        return len(m) == 0 or not m[: 2 * BLOCK].any()
    order = np.argsort(off, kind="stable")
    off, size = off[order], size[order]
    ends = off + -(-size // BLOCK) * BLOCK
    if off[0] != BLOCK or (off[1:] != ends[:-1] + BLOCK).any():
        return False
    tail = int(ends[-1])
    return tail == len(m) or (tail + BLOCK <= len(m) and not m[tail : tail + BLOCK].any())


def tar_members(path: str | Path) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every regular member, read with ``tarfile`` (pax and GNU headers
    included); None when the tar cannot be read or holds something other than regular files."""
    try:
        with tarfile.open(path, mode="r:") as t:
            out = []
            for info in t:
                if not info.isfile():
                    return None
                out.append((info.name, info.offset_data, info.size))
            return out
    except (OSError, tarfile.TarError, ValueError, EOFError):
        return None


def map_file(path: str | Path) -> np.ndarray:
    """A tar's bytes, memory-mapped read-only (an empty array for an empty file); a file that cannot be opened
    is a ShardError naming it."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                return np.zeros(0, np.uint8)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ShardError(f"{path}: cannot open shard ({e.strerror}); check the path or re-pack the shard set") from None
    return np.frombuffer(mm, dtype=np.uint8)
