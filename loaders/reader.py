"""Random access to the encoded samples of shard sets: memory-mapped tars, cached per-sample tables,
validated once per set, gathered a batch at a time in one numpy call.

A :class:`SourceReader` opens one shard set. Per sample it keeps the shard, the data offset and size
of the image member, the label (parsed from the ``.cls`` member) and a *verdict*: whether the sample
can be handed to DALI's decoder at all. Building that table reads every index and checks every
sample, so it is done once and cached beside each index (``shards.index.load_cache`` /
``save_cache``, stamped with the size and mtime of the index and the tar); a later open loads a few
arrays (a 1M-sample set in well under a second).

Why every encoded sample is checked once, on the host: DALI's decoders do not fail cleanly on every
damaged image. A JPEG whose body is rotten but whose SOI/EOI markers are intact passes a signature
check, and DALI's pipeline then fails (its header parser rejects it) and, with several threads and
prefetching, may kill the process with SIGSEGV. A fuzzing probe (1,500 random corruptions of CIFAR-10
JPEGs, 800 of EDM PNGs) found that PIL's decoder alone accepts about 1 in 20 JPEGs that DALI rejects
(extra or zeroed bytes between header segments: libjpeg skips them, nvImageCodec's parser does not),
and that PNG damage is caught by the chunk CRCs that PIL skips. So the check is (1) a walk of the
JPEG marker segments up to the start of scan, as strict as nvImageCodec's parser, or of the PNG
chunks with their CRCs, and (2) a full PIL decode; with both, no corruption in the probe reached
DALI. The verdicts are cached with the index, so the cost (about 30–50 µs per 32×32 image, spread
over worker processes for large sets) is paid once per set.

``loaders.table.SampleTable.gather`` reads a batch through :class:`Region`: every tar of the loader
mapped back to back into one reserved address range, viewed as 512-byte blocks (tar members start on
block boundaries), so the encoded bytes of a whole batch are one ``np.take`` however many shards the
batch touches. Where that mapping is unavailable (not Linux), a per-sample copy does the same.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import sys
import tarfile
import weakref
import zlib
from pathlib import Path

import numpy as np

from shards.index import file_stamp, load_cache, read_index, save_cache
from shards.manifest import Manifest, ShardError

CACHE_VERSION = 1
BLOCK = 512  # tar block: every member's data starts at a multiple of it

# verdicts (uint8), the reason a sample is never handed to DALI
OK, TRUNCATED, BAD_SIZE, BAD_LABEL, BAD_STRUCTURE, UNDECODABLE = range(6)
WHY = {
    TRUNCATED: "truncated (its bytes lie past the end of the tar)",
    BAD_SIZE: "of the wrong size for the manifest's image_size",
    BAD_LABEL: "damaged (its .cls member is not an integer)",
    BAD_STRUCTURE: "damaged (broken JPEG markers or PNG chunks)",
    UNDECODABLE: "undecodable",
}
_FORMAT_CODES = {"jpg": 1, "png": 2, "raw": 3}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


class SourceReader:
    """Encoded samples of one shard set by global sample index (0 … count−1, tar order).

    ``keys``, ``shard_of``, ``offsets``, ``sizes``, ``labels`` (int64) and ``verdict`` (uint8, 0 = OK,
    see :data:`WHY`) are per-sample arrays. ``cache=False`` neither reads nor writes the cache;
    ``workers`` caps the processes that check a large set at its first open (default: the cores this
    process may run on).
    """

    def __init__(self, directory: str | Path, manifest: Manifest, *, cache: bool = True, workers: int | None = None):
        self.directory = Path(directory)
        self.manifest = manifest
        self.format = manifest.format
        if self.format == "raw" and not manifest.image_size:
            raise ShardError(
                f"{self.directory}: raw shards need image_size in the manifest; re-pack with `shards pack`"
            )
        self._files = [self.directory / info.file for info in manifest.shards]
        self._maps: dict[int, np.ndarray] = {}
        tables, pending = [], []
        for s, info in enumerate(manifest.shards):
            tar, idx = self._files[s], self.directory / info.index
            stamp = self._stamp(tar, idx, info.count)
            table = load_cache(idx, stamp) if cache else None
            if table is None:
                table = self._parse(s, tar, idx, info.count)
                pending.append((s, idx, stamp))
            tables.append(table)
        if pending:  # first open: check the new shards' encoded samples (once per distinct tar), then cache
            self._check([(s, tables[s]) for s, _, _ in pending], workers)
            if cache:
                for s, idx, stamp in pending:
                    save_cache(idx, stamp, tables[s])
        self.shard_of = np.repeat(np.arange(len(tables), dtype=np.int32), [len(t["offsets"]) for t in tables])
        cat = {
            k: np.concatenate([t[k] for t in tables]) if tables else np.zeros(0)
            for k in ("keys", "offsets", "sizes", "labels", "verdict")
        }
        self.keys = cat["keys"].astype(str)
        self.offsets, self.sizes = cat["offsets"].astype(np.int64), cat["sizes"].astype(np.int64)
        self.labels, self.verdict = cat["labels"].astype(np.int64), cat["verdict"].astype(np.uint8)
        if len(self.keys) != manifest.count:
            raise ShardError(f"{self.directory}: indexes hold {len(self.keys)} samples, manifest says {manifest.count}")

    # -- building the per-sample table ------------------------------------------------------------
    def _stamp(self, tar: Path, idx: Path, count: int) -> np.ndarray:
        try:
            files = file_stamp(idx, tar)
        except OSError as e:
            missing = tar if not tar.exists() else idx
            what = "shard" if missing == tar else "index"
            raise ShardError(
                f"{missing}: cannot open {what} ({e.strerror}); check the path or re-pack "
                f"{self.directory} with `python -m shards pack`"
            ) from None
        raw = int(np.prod(self.manifest.image_size)) * 3 if self.format == "raw" else 0
        return np.concatenate([np.array([CACHE_VERSION, _FORMAT_CODES[self.format], count, raw], np.int64), files])

    def _parse(self, s: int, tar: Path, idx: Path, count: int) -> dict[str, np.ndarray]:
        """The shard's table from its index, with every check but the decoding (see ``_check``)."""
        index = read_index(idx)
        if len(index) != count:
            raise ShardError(_count_mismatch(tar, idx, len(index), count, self.directory))
        for ext in (self.format, "cls"):
            if ext not in index.offsets or (index.offsets[ext] < 0).any():
                raise ShardError(f"{idx}: some samples have no .{ext} member; re-pack {self.directory}")
        off, size = index.offsets[self.format], index.sizes[self.format]
        coff, csize = index.offsets["cls"], index.sizes["cls"]
        m = self._map(s)
        end = m.shape[0]
        verdict = np.zeros(count, np.uint8)
        verdict[(off + size > end) | (coff + csize > end)] = TRUNCATED
        _check_names(m, index.keys, off, self.format, tar, idx, verdict == OK)
        labels, bad_label = _parse_labels(m, coff, csize, verdict == OK)
        verdict[(verdict == OK) & bad_label] = BAD_LABEL
        if self.format == "raw":
            verdict[(verdict == OK) & (size != int(np.prod(self.manifest.image_size)) * 3)] = BAD_SIZE
        return {"keys": index.keys, "offsets": off, "sizes": size, "labels": labels, "verdict": verdict}

    def _check(self, tables: list[tuple[int, dict]], workers: int | None) -> None:
        """Decode-check the OK samples of new shards; a tar listed several times (a stand-in set of
        symbolic links) is checked once."""
        if self.format == "raw":
            return
        by_tar: dict[tuple, list[tuple[dict, np.ndarray]]] = {}
        for s, t in tables:
            todo = np.flatnonzero(t["verdict"] == OK)
            tar = self._files[s]
            st = os.stat(tar)
            by_tar.setdefault((os.path.realpath(tar), st.st_size, st.st_mtime_ns), []).append((t, todo))
        jobs = []
        for (real, *_), parts in by_tar.items():
            off = np.concatenate([t["offsets"][todo] for t, todo in parts])
            size = np.concatenate([t["sizes"][todo] for t, todo in parts])
            uniq, first = np.unique(off, return_index=True)
            jobs.append((real, uniq, size[first]))
        verdicts = check_members(jobs, self.format, workers)
        for (_, parts), (_, uniq, _), v in zip(by_tar.items(), jobs, verdicts):
            for t, todo in parts:
                t["verdict"][todo] = v[np.searchsorted(uniq, t["offsets"][todo])]

    def _map(self, s: int) -> np.ndarray:
        if s not in self._maps:
            self._maps[s] = _map(self._files[s])
        return self._maps[s]

    # -- access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def hw(self) -> np.ndarray:
        """(N, 2) int64: each sample's image height and width (0 where the manifest records no size)."""
        return np.broadcast_to(np.array(self.manifest.image_size or (0, 0), np.int64), (len(self), 2))

    @property
    def raw_shape(self) -> tuple[int, int, int] | None:
        return (*self.manifest.image_size, 3) if self.format == "raw" else None

    def shard_file(self, i: int) -> Path:
        return self._files[int(self.shard_of[i])]

    def bytes_of(self, i: int) -> np.ndarray:
        """The image member of sample ``i`` (a read-only view of the mapped tar)."""
        o = int(self.offsets[i])
        return self._map(int(self.shard_of[i]))[o : o + int(self.sizes[i])]

    def read(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(encoded bytes per sample as uint8 views, int64 labels, bool mask of damaged samples) — the
        per-sample access for tools; the loaders gather whole batches through :class:`Region`."""
        indices = np.asarray(indices, dtype=np.int64)
        bad = self.verdict[indices] != OK
        data = [np.zeros(1, np.uint8) if b else self.bytes_of(i) for i, b in zip(indices.tolist(), bad.tolist())]
        return data, np.where(bad, -1, self.labels[indices]), bad

    def describe(self, i: int, why: str | None = None) -> str:
        """One line naming the shard, the member and the fix."""
        why = why or WHY.get(int(self.verdict[i]), "damaged")
        return (
            f"{self.shard_file(i)}: sample {self.keys[i]!s} (member {self.keys[i]!s}.{self.format} at byte "
            f"{int(self.offsets[i])}) is {why}; re-pack {self.directory} with `python -m shards pack` "
            f"(or check it with `python -m shards verify`), or pass on_corrupt='skip' to skip such samples"
        )

    def decodes(self, i: int) -> bool:
        """Whether sample ``i`` passed the checks (used to find the culprit when DALI fails anyway)."""
        if self.verdict[i] != OK:
            return False
        return self.format == "raw" or check_bytes(self.bytes_of(i).tobytes(), self.format) == OK


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------
def _count_mismatch(tar: Path, idx: Path, indexed: int, count: int, directory: Path) -> str:
    """Which of the index and the tar disagrees with the manifest: the wds2idx advice only when the tar
    itself holds the manifest's count (the index is the stale part)."""
    try:
        with tarfile.open(tar) as t:
            keys = {m.name.rsplit(".", 1)[0] for m in t if m.isfile()}
        in_tar = len(keys)
    except (OSError, tarfile.TarError):
        in_tar = -1
    if in_tar == count:
        return (
            f"{idx}: index lists {indexed} samples, the tar and the manifest {count}: the index is stale; "
            f"re-create it with `wds2idx {tar} {idx}`"
        )
    return (
        f"{tar}: holds {in_tar if in_tar >= 0 else 'an unreadable number of'} samples, its index {indexed}, "
        f"the manifest {count}; re-pack {directory} with `python -m shards pack`"
    )


def _check_names(
    m: np.ndarray, keys: np.ndarray, off: np.ndarray, fmt: str, tar: Path, idx: Path, ok: np.ndarray
) -> None:
    """The USTAR header before the first and the last sample's image must name that member; if not, the
    index belongs to another tar (the index is the stale part)."""
    rows = np.flatnonzero(ok)
    for i in rows[:1].tolist() + rows[-1:].tolist():
        o = int(off[i])
        if o < BLOCK or o % BLOCK:
            name = None
        else:
            head = m[o - BLOCK : o].tobytes()
            name = head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = head[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            name = f"{prefix}/{name}" if prefix else name
        want = f"{keys[i]}.{fmt}"
        if name is not None and (
            name.removeprefix("./") == want.removeprefix("./") or (len(name) >= 99 and want.startswith(name[:99]))
        ):  # GNU/pax long names
            continue
        if name != want:
            raise ShardError(
                f"{idx}: index does not match {tar} (at byte {o} the tar holds {name!r}, the index says "
                f"{want!r}); re-create the index with `wds2idx {tar} {idx}`"
            )


def _parse_labels(m: np.ndarray, off: np.ndarray, size: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels from the ``.cls`` members (ASCII integers), vectorised; (labels, bad mask)."""
    n = len(off)
    labels, bad = np.full(n, -1, np.int64), np.zeros(n, bool)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return labels, bad
    w = int(min(size[rows].max(), 20))
    pos = off[rows][:, None] + np.arange(max(w, 1))
    inside = np.arange(max(w, 1)) < size[rows][:, None]
    chars = np.where(inside, m[np.minimum(pos, len(m) - 1)], ord("0")).astype(np.int64)
    neg = chars[:, 0] == ord("-")
    chars[neg, 0] = ord("0")
    digits = (chars >= ord("0")) & (chars <= ord("9"))
    simple = digits.all(axis=1) & (size[rows] > neg) & (size[rows] <= 18)
    place = np.where(inside, 10 ** np.maximum(0, size[rows][:, None] - 1 - np.arange(max(w, 1))), 0)
    value = ((chars - ord("0")) * place).sum(axis=1)
    labels[rows] = np.where(neg, -value, value)
    for r in rows[~simple].tolist():  # anything unusual (whitespace, long numbers): Python's int()
        o = int(off[r])
        try:
            labels[r] = int(m[o : o + int(size[r])].tobytes())
        except ValueError:
            bad[r] = True
    return labels, bad


def check_bytes(buf: bytes, fmt: str) -> int:
    """The verdict on one encoded image: its structure (as strict as DALI's parsers), then a full decode."""
    if fmt == "jpg" and not _jpeg_segments_ok(buf):
        return BAD_STRUCTURE
    if fmt == "png" and not _png_chunks_ok(buf):
        return BAD_STRUCTURE
    from PIL import Image

    try:
        with Image.open(io.BytesIO(buf)) as im:
            im.load()
    except Exception:  # noqa: BLE001 - any decoder failure means "undecodable"
        return UNDECODABLE
    return OK


def _jpeg_segments_ok(b: bytes) -> bool:
    """SOI, then marker segments (``FF xx`` + big-endian length) up to SOS, with a frame header (SOF)
    before it — what nvImageCodec's JPEG parser reads; it rejects any other byte where a marker belongs."""
    n = len(b)
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return False
    pos, sof = 2, False
    while True:
        if pos + 2 > n or b[pos] != 0xFF:
            return False
        pos += 1
        while pos < n and b[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n or b[pos] == 0:
            return False
        marker = b[pos]
        pos += 1
        if marker == 0xDA:
            return sof
        if pos + 2 > n:
            return False
        length = (b[pos] << 8) | b[pos + 1]
        if length < 2 or pos + length > n:
            return False
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            comps = b[pos + 7] if length >= 8 else 0
            if comps not in (1, 3, 4) or length < 8 + 3 * comps:
                return False
            sof = True
        pos += length


def _png_chunks_ok(b: bytes) -> bool:
    """Signature, IHDR first, every chunk's CRC, up to IEND (libpng checks the CRCs; PIL skips IDAT's)."""
    n = len(b)
    if n < 8 + 12 or b[:8] != _PNG_SIG:
        return False
    pos, first = 8, True
    while True:
        if pos + 12 > n:
            return False
        (length,) = struct.unpack_from(">I", b, pos)
        kind = b[pos + 4 : pos + 8]
        if length > n - pos - 12 or (first and kind != b"IHDR"):
            return False
        first = False
        (crc,) = struct.unpack_from(">I", b, pos + 8 + length)
        if zlib.crc32(b[pos + 4 : pos + 8 + length]) & 0xFFFFFFFF != crc:
            return False
        pos += 12 + length
        if kind == b"IEND":
            return True


def _check_chunk(tar: str, fmt: str, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Verdicts of some members of one tar (runs in a worker process for large sets)."""
    m = _map(Path(tar))
    out = np.empty(len(offsets), np.uint8)
    for j, (o, n) in enumerate(zip(offsets.tolist(), sizes.tolist())):
        out[j] = check_bytes(m[o : o + n].tobytes(), fmt)
    return out


def check_members(
    jobs: list[tuple[str, np.ndarray, np.ndarray]], fmt: str, workers: int | None = None, chunk: int = 4096
) -> list[np.ndarray]:
    """Verdicts for ``jobs`` = [(tar path, data offsets, sizes)], in worker processes when there are many
    samples and more than one core (forked where possible, as ``shards verify`` does: the workers touch
    only numpy, PIL and the mapped tars, never CUDA or DALI; spawned elsewhere)."""
    pieces = [(j, a) for j, (_, off, _) in enumerate(jobs) for a in range(0, len(off), chunk)]
    total = sum(len(off) for _, off, _ in jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(workers or cores, len(pieces))
    args = [(jobs[j][0], fmt, jobs[j][1][a : a + chunk], jobs[j][2][a : a + chunk]) for j, a in pieces]
    results = None
    if workers > 1 and total >= 2 * chunk:
        try:
            import concurrent.futures as cf
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
                results = list(pool.map(_check_chunk, *zip(*args)))
        except (OSError, RuntimeError, AssertionError, ImportError):  # e.g. inside a daemonic process
            results = None
    if results is None:
        results = [_check_chunk(*a) for a in args]
    out = [np.empty(len(off), np.uint8) for _, off, _ in jobs]
    for (j, a), r in zip(pieces, results):
        out[j][a : a + len(r)] = r
    return out


# ---------------------------------------------------------------------------------------------------
# Memory maps
# ---------------------------------------------------------------------------------------------------
def _map(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                return np.zeros(0, np.uint8)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ShardError(f"{path}: cannot open shard ({e.strerror}); check the path or re-pack the shard set") from None
    return np.frombuffer(mm, dtype=np.uint8)


class Region:
    """Files mapped read-only back to back (each at a page boundary) in one reserved address range.

    ``blocks`` views the range as rows of 512 bytes; ``first_block[f]`` is file ``f``'s first row and
    ``last_block[f]`` its last one (partial or not). Reading only rows inside a file is safe; the pages
    between files are inaccessible. Linux only (``mmap`` with ``MAP_FIXED`` through ctypes); the range
    is unmapped when the last view of ``blocks`` is gone. Raises OSError where it cannot be built.
    """

    _PROT_NONE, _PROT_READ = 0, 1
    _MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000

    def __init__(self, paths: list[Path]):
        import ctypes

        if not sys.platform.startswith("linux"):
            raise OSError("contiguous mapping of many files needs Linux")
        libc = ctypes.CDLL(None, use_errno=True)
        mmap_fn, munmap = libc.mmap, libc.munmap
        mmap_fn.restype, munmap.restype = ctypes.c_void_p, ctypes.c_int
        mmap_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
        munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        page = mmap.PAGESIZE
        sizes = [os.stat(p).st_size for p in paths]
        starts, pos = [], 0
        for size in sizes:
            starts.append(pos)
            pos += -(-max(size, 1) // page) * page
        total = max(pos, page)
        base = mmap_fn(
            None, total, self._PROT_NONE, self._MAP_PRIVATE | self._MAP_ANONYMOUS | self._MAP_NORESERVE, -1, 0
        )
        if base is None or base == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "cannot reserve address space for the shards")
        buf = (ctypes.c_uint8 * total).from_address(base)
        weakref.finalize(buf, munmap, base, total)  # unmapped with the last numpy view
        for path, start, size in zip(paths, starts, sizes):
            if size == 0:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                got = mmap_fn(base + start, size, self._PROT_READ, self._MAP_SHARED | self._MAP_FIXED, fd, 0)
            finally:
                os.close(fd)
            if got != base + start:
                raise OSError(ctypes.get_errno(), f"cannot map {path}")
        self.blocks = np.frombuffer(buf, np.uint8).reshape(-1, BLOCK)
        self.first_block = np.array(starts, np.int64) // BLOCK
        self.last_block = self.first_block + np.maximum(-(-np.array(sizes, np.int64) // BLOCK) - 1, 0)
