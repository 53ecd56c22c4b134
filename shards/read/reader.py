"""Random access to the encoded samples of shard sets: memory-mapped tars, per-sample tables checked once
per set and cached, every shard confirmed against its manifest each time a set is opened.

A :class:`SourceReader` opens one shard set. Per sample it keeps the shard, the data offset and size of the
image (for ``.npy`` members: of the pixels, past the header), its real (H, W), the label (parsed from the
``.cls`` member) and a *verdict* (``shards.read.check``): whether the sample may be handed to DALI's decoder at
all. What it trusts, and when:

* **The shard's bytes, every open.** Each tar is hashed and compared with the size and sha256 its manifest
  records (``shards.read.confirm``, in background threads while the caches load; cost: ``bench/README.md``,
  "Confirming shards at open") before anything cached about it is used. A shard that differs is one line
  naming it (a warning; with ``on_corrupt="error"``, the error naming its first damaged sample): its samples
  are checked again one by one (never cached), and for sets of manifest version 2, whose ``.json`` members
  hold each sample's label and image sha256, that check is exact, so the damaged samples become verdicts
  like any other (``on_corrupt="error"``: an error when the loader reaches one; ``"skip"``: skipped and
  counted). A version 1 set has no per-sample digests: with ``on_corrupt="error"`` the changed shard is the
  error, at open.
* **The index, once per set.** Every entry must point just past a tar header that names its member and
  records its size (``shards.read.members``); the entries must account for every member of the tar; keys are
  unique in the whole set and no tar is listed twice (a ``standin`` manifest excepted). An index that
  disagrees with a tar that matches its manifest is stale: a one-line error naming ``wds2idx``.
* **Every image, once per set.** ``shards.read.check.check_image`` (the check ``shards verify`` uses) in worker
  processes: the structure as strict as DALI's parsers, a full decode, the real (H, W); and each sample's
  ``.json`` record. The verdicts are cached beside each index (``shards.read.index.load_cache`` /
  ``save_cache``), stamped with the size and mtime of the index and the tar and with the manifest's sha256.
* **The manifest, every open.** What depends on it is applied to the cached facts each time: an image
  whose size is not the manifest's ``image_size`` and a label outside −1 … ``num_classes`` − 1 are corrupt.

A set none of whose samples can be used is an error in both modes (skipping every sample would never end).

``loaders.batch.table.SampleTable.gather`` reads a batch through :class:`Region`: every tar of the loader
mapped back to back into one reserved address range, viewed as 512-byte blocks (tar members start on
block boundaries, and so do the pixels of a ``.npy`` member behind its 512-byte header), so the encoded
bytes of a whole batch are one ``np.take`` however many shards the batch touches. Where that mapping is
unavailable (not Linux), a per-sample copy does the same.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import sys
import tarfile
import time
import weakref
from pathlib import Path

import numpy as np

from shards.base.errors import ShardError
from shards.format.manifest import MANIFEST_NAME, Manifest
from shards.format.schema import IMAGE_MEMBER_EXTS
from shards.read.check import (
    BAD_HEADER,
    BAD_LABEL,
    BAD_SIZE,
    LABEL_RANGE,
    OK,
    TRUNCATED,
    WHY,
    check_bytes,
    check_members,
    labels_in_range,
    parse_label,
    sizes_match,
)
from shards.read.confirm import Confirmation
from shards.read.index import file_stamp, load_cache, read_index, save_cache
from shards.read.members import BLOCK, covers, header_ok, map_file, tar_members

log = logging.getLogger("loaders")
CACHE_VERSION = 2
_EXT_CODES = {ext: code for code, ext in enumerate(IMAGE_MEMBER_EXTS, 1)}  # in each cache's head
#: what a reader does with a damaged sample (``--on-corrupt``): raise one line naming it, or leave it out and count it
ON_CORRUPT = ("error", "skip")
_TABLE = ("keys", "offsets", "sizes", "labels", "verdict", "hw")


def check_on_corrupt(on_corrupt: str) -> str:
    """``on_corrupt`` when it is one of :data:`ON_CORRUPT`, else a ValueError naming the choices."""
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt={on_corrupt!r}: use {' or '.join(map(repr, ON_CORRUPT))}")
    return on_corrupt


class SourceReader:
    """Encoded samples of one shard set by global sample index (0 … count−1, tar order).

    ``keys``, ``shard_of``, ``offsets``, ``sizes``, ``labels`` (int64), ``hw`` ((N, 2) int32, each image's
    real (H, W)) and ``verdict`` (uint8, 0 = OK, see ``shards.read.check.WHY``) are per-sample arrays; ``notes``
    holds one line per shard whose bytes differ from its manifest (also logged as a warning); ``check_s`` the
    seconds this open spent checking samples (0 when all came from the cache). ``cache=False``
    neither reads nor writes the cache; ``workers`` caps the processes that check a large set at its first
    open (default: the cores this process may run on); ``confirmation``: a ``shards.read.confirm.Confirmation`` of
    this set started earlier (so the hashing overlaps other start-up work), else one is started here.

    ``on_corrupt`` ("error" or "skip", as the loader's) decides what a shard whose bytes differ from its
    manifest is. Its samples are checked again; with "skip" a warning names the shard and how many samples
    were damaged. With "error": in a set of manifest version 2 a damaged sample's line (when the loader
    reaches it) also says that its shard changed, and a changed shard without damaged samples (garbage
    appended, say) is a warning; a set without per-sample digests (version 1) cannot be checked exactly, so
    the changed shard is the error, at open.
    """

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest,
        *,
        cache: bool = True,
        workers: int | None = None,
        on_corrupt: str = "error",
        confirmation: Confirmation | None = None,
    ):
        check_on_corrupt(on_corrupt)
        self.directory = Path(directory)
        self.manifest = manifest
        self.format, self.ext = manifest.format, manifest.ext
        if self.format == "raw" and not manifest.image_size:
            raise ShardError(
                f"{self.directory}: raw shards need image_size in the manifest; re-pack with `python -m shards pack`"
            )
        self.notes: list[str] = []
        self._files = [self.directory / info.file for info in manifest.shards]
        self._indexes = [self.directory / info.index for info in manifest.shards]
        self._maps: dict[int, np.ndarray] = {}
        for tar, idx in zip(self._files, self._indexes):
            _regular(tar, "shard", self.directory)
            _regular(idx, "index", self.directory)
        if not manifest.standin:
            self._no_repeated_tars()
        confirm = confirmation if confirmation is not None else Confirmation(self.directory, manifest)
        stamps = [self._stamp(s) for s in range(len(self._files))]
        tables = [load_cache(self._indexes[s], stamps[s]) if cache else None for s in range(len(stamps))]
        self._differs: dict[int, str] = {}
        for s, differs in enumerate(confirm.result()):  # before anything cached about a shard is trusted
            if differs:
                self._differs[s] = differs
                tables[s] = None
                if not manifest.digests and on_corrupt == "error":
                    raise ShardError(
                        f"{self._changed(s)}; re-pack {self.directory} with `python -m shards pack` (check it with "
                        "`python -m shards verify`), or pass --on-corrupt skip to check its samples one by one and "
                        "skip the damaged ones"
                    )
        damaged = set(self._differs)
        pending = [s for s, t in enumerate(tables) if t is None or set(t) != set(_TABLE)]
        for s in pending:
            tables[s] = self._parse(s, trusted=s not in damaged)
        self.check_s = 0.0  # seconds this open spent checking samples (0 when every shard was cached)
        if pending:
            t0 = time.perf_counter()
            self._check([(s, tables[s]) for s in pending], workers)
            self.check_s = time.perf_counter() - t0
        self.shard_of = np.repeat(np.arange(len(tables), dtype=np.int32), [len(t["offsets"]) for t in tables])
        cat = {k: np.concatenate([t[k] for t in tables]) if tables else np.zeros(0) for k in _TABLE}
        self.keys = cat["keys"].astype(str)
        self.offsets, self.sizes = cat["offsets"].astype(np.int64), cat["sizes"].astype(np.int64)
        self.labels, verdict = cat["labels"].astype(np.int64), cat["verdict"].astype(np.uint8)
        self.hw = cat["hw"].astype(np.int32).reshape(-1, 2)
        if len(self.keys) != manifest.count:
            raise ShardError(f"{self.directory}: indexes hold {len(self.keys)} samples, manifest says {manifest.count}")
        if not manifest.standin:
            self._unique_keys()
        if cache:
            for s in pending:
                if s not in damaged:  # a changed shard is checked again at every open, never cached
                    save_cache(self._indexes[s], stamps[s], tables[s])
        self.verdict = self._judge(verdict)
        if len(self.verdict) and not (self.verdict == OK).any():
            raise ShardError(
                f"{self.directory}: none of its {len(self.verdict)} samples can be used "
                f"({self.describe(0).split('; ')[0]}); re-pack it with `python -m shards pack` "
                "(check it with `python -m shards verify`)"
            )
        for s in sorted(damaged):
            bad = int((self.verdict[self.shard_of == s] != OK).sum())
            if bad and on_corrupt == "error":
                continue  # the error naming its first damaged sample says that the shard changed: one line
            how = "exactly, against the sha256 in each .json" if manifest.digests else "by decoding them"
            self.notes.append(
                f"{self._changed(s)}; its samples were checked one by one ({how}): {bad} damaged, not delivered"
            )
            log.warning(self.notes[-1])

    # -- what is trusted -----------------------------------------------------------------------------
    def _stamp(self, s: int) -> np.ndarray:
        """What a cached table of shard ``s`` must have been made from: this code's cache layout, the member
        extension, the count, whether samples carry digests, the index's and the tar's size and mtime, and
        the sha256 the manifest records for the tar."""
        info = self.manifest.shards[s]
        head = [CACHE_VERSION, _EXT_CODES[self.ext], info.count, int(self.manifest.digests)]
        sha = np.frombuffer(bytes.fromhex(info.sha256), np.int64)
        return np.concatenate([np.array(head, np.int64), file_stamp(self._indexes[s], self._files[s]), sha])

    def _changed(self, s: int) -> str:
        return (
            f"{self._files[s]}: {self._differs[s]} ({self.directory / MANIFEST_NAME}), so it changed or was damaged "
            "since it was packed"
        )

    def _no_repeated_tars(self) -> None:
        seen: dict[str, Path] = {}
        for tar in self._files:
            real = os.path.realpath(tar)
            if real in seen:
                raise ShardError(
                    f"{tar}: is the same file as {seen[real]}; a shard set lists each tar once (its samples would "
                    f"come twice): re-create {self.directory / MANIFEST_NAME} with `python -m shards pack`"
                )
            seen[real] = tar

    def _unique_keys(self) -> None:
        if len(self.keys) < 2:
            return
        raw = np.ascontiguousarray(self.keys)
        fast = np.sort(raw.view(np.dtype((np.void, raw.dtype.itemsize))))  # bytes compare: 2× a string sort
        if not (fast[1:] == fast[:-1]).any():
            return
        order = np.argsort(self.keys, kind="stable")
        same = np.flatnonzero(self.keys[order][1:] == self.keys[order][:-1])
        if len(same):
            a, b = order[same[0]], order[same[0] + 1]
            raise ShardError(
                f"{self.shard_file(b)}: sample key {self.keys[b]!s} is also in {self.shard_file(a).name} "
                f"({len(same)} repeated key(s)); keys must be unique in a shard set: re-pack {self.directory} "
                "with `python -m shards pack`"
            )

    def _judge(self, verdict: np.ndarray) -> np.ndarray:
        """The cached verdicts plus what depends on the manifest read now: image sizes and label range."""
        verdict = verdict.copy()
        if self.ext == "raw":  # legacy raw members: H*W*3 bytes of the manifest's size
            self.hw[:] = self.manifest.image_size
            verdict[(verdict == OK) & (self.sizes != int(np.prod(self.manifest.image_size)) * 3)] = BAD_SIZE
        verdict[(verdict == OK) & ~sizes_match(self.hw, self.manifest)] = BAD_SIZE
        verdict[(verdict == OK) & ~labels_in_range(self.labels, self.manifest)] = LABEL_RANGE
        return verdict

    # -- building the per-sample table ------------------------------------------------------------
    def _parse(self, s: int, trusted: bool) -> dict[str, np.ndarray]:
        """Shard ``s``'s table from its index, with every check but the decoding (see ``_check``). ``trusted``:
        the tar matches its manifest, so an index that disagrees with it is stale (an error); otherwise the
        tar is damaged and its samples that disagree are marked."""
        tar, idx, count = self._files[s], self._indexes[s], self.manifest.shards[s].count
        if count == 0:
            z = np.zeros(0, np.int64)
            return {
                **dict.fromkeys(("offsets", "sizes", "labels"), z),
                "keys": z.astype(str),
                "hw": z.reshape(0, 2),
                "verdict": z.astype(np.uint8),
            }
        index = read_index(idx)
        if len(index) != count:
            raise ShardError(_count_mismatch(tar, idx, len(index), count, self.directory))
        exts = (self.ext, "cls", "json") if self.manifest.digests else (self.ext, "cls")
        for ext in exts:
            if ext not in index.offsets or (index.offsets[ext] < 0).any():
                raise ShardError(f"{idx}: some samples have no .{ext} member; re-pack {self.directory}")
        keys = index.keys
        if len(np.unique(keys)) != len(keys):
            first = next(k for k, n in zip(*np.unique(keys, return_counts=True)) if n > 1)
            raise ShardError(
                f"{idx}: sample key {first!s} is listed twice; re-create the index with `wds2idx {tar} {idx}` "
                f"or re-pack {self.directory}"
            )
        m = self._map(s)
        verdict = np.zeros(count, np.uint8)
        for ext in exts:
            off, size = index.offsets[ext], index.sizes[ext]
            verdict[(verdict == OK) & ~header_ok(m, keys, ext, off, size)] = BAD_HEADER
            verdict[(verdict == OK) & (off + size > len(m))] = TRUNCATED
        if trusted:
            self._index_matches(s, index, exts, verdict, m)
        off, size = index.offsets[self.ext].copy(), index.sizes[self.ext].copy()
        labels, bad_label = _parse_labels(m, index.offsets["cls"], index.sizes["cls"], verdict == OK)
        verdict[(verdict == OK) & bad_label] = BAD_LABEL
        table = {"keys": keys, "offsets": off, "sizes": size, "labels": labels, "verdict": verdict}
        table["hw"] = np.zeros((count, 2), np.int32)
        if self.manifest.digests:
            table["meta_off"], table["meta_size"] = index.offsets["json"], index.sizes["json"]
        return table

    def _index_matches(self, s: int, index, exts, verdict: np.ndarray, m: np.ndarray) -> None:
        """For a tar that matches its manifest: every entry names its member, and the entries account for every
        member of the tar; otherwise the index is stale (or another tar's), a ShardError."""
        tar, idx = self._files[s], self._indexes[s]
        bad = np.flatnonzero(verdict == BAD_HEADER)
        if len(bad):
            i = int(bad[0])
            row = slice(i, i + 1)
            ext = next(
                e for e in exts if not header_ok(m, index.keys[row], e, index.offsets[e][row], index.sizes[e][row])[0]
            )
            o, n = int(index.offsets[ext][i]), int(index.sizes[ext][i])
            raise ShardError(
                f"{idx}: index does not match {tar} (at byte {o} the tar holds {_header_name(m, o)}, the index "
                f"says {index.keys[i]!s}.{ext!s} of {n} bytes); re-create the index with `wds2idx {tar} {idx}`"
            )
        if self.manifest.standin:
            return
        all_off = np.concatenate([index.offsets[e] for e in index.offsets])
        all_size = np.concatenate([index.sizes[e] for e in index.offsets])
        if covers(m, all_off, all_size):
            return
        members = tar_members(tar)
        listed = set()
        for e in index.offsets:
            listed |= {
                (f"{k}.{e}", o, z) for k, o, z in zip(index.keys, index.offsets[e].tolist(), index.sizes[e].tolist())
            }
        if members is not None and set(members) == listed and len(members) == len(listed):
            return  # another writer's tar (pax or GNU headers between members): every member is indexed
        raise ShardError(_count_mismatch(tar, idx, len(index), len(index), self.directory, members_differ=True))

    def _check(self, tables: list[tuple[int, dict]], workers: int | None) -> None:
        """Check the OK samples of new shards (``shards.read.check``: image, size, .json record); a tar listed
        several times (a stand-in set of symbolic links) is checked once."""
        digests = self.manifest.digests
        if self.ext == "raw" and not digests:
            return
        by_tar: dict[str, list[tuple[dict, np.ndarray]]] = {}
        for s, t in tables:
            todo = np.flatnonzero(t["verdict"] == OK)
            by_tar.setdefault(os.path.realpath(self._files[s]), []).append((t, todo))
        jobs = []
        for real, parts in by_tar.items():
            off = np.concatenate([t["offsets"][todo] for t, todo in parts])
            uniq, first = np.unique(off, return_index=True)

            def pick(k, parts=parts, first=first):
                return np.concatenate([t[k][todo] for t, todo in parts])[first]

            job = {"tar": real, "ext": self.ext, "off": uniq, "size": pick("sizes")}
            if digests:
                job.update({k: pick(k) for k in ("meta_off", "meta_size", "labels")})
                job.update(name=None, kind=None, digests=True)  # whose set it was: verify's business
            jobs.append(job)
        results = check_members(jobs, workers)
        for (_, parts), job, r in zip(by_tar.items(), jobs, results):
            for t, todo in parts:
                got = r[np.searchsorted(job["off"], t["offsets"][todo])]
                t["verdict"][todo] = got[:, 0]
                t["hw"][todo] = got[:, 1:3]
                if self.ext == "npy":  # the pixels, past the .npy header
                    ok = todo[got[:, 0] == OK]
                    t["offsets"][ok] += got[got[:, 0] == OK, 3]
                    t["sizes"][ok] = t["hw"][ok, 0].astype(np.int64) * t["hw"][ok, 1] * 3
        for _, t in tables:
            t.pop("meta_off", None)
            t.pop("meta_size", None)

    def _map(self, s: int) -> np.ndarray:
        if s not in self._maps:
            self._maps[s] = map_file(self._files[s])
        return self._maps[s]

    # -- access -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def raw_shape(self) -> tuple[int, int, int] | None:
        return (*self.manifest.image_size, 3) if self.format == "raw" else None

    def shard_file(self, i: int) -> Path:
        return self._files[int(self.shard_of[i])]

    def bytes_of(self, i: int) -> np.ndarray:
        """The image of sample ``i`` as the decoder gets it (raw sets: the pixels), a read-only view of the
        mapped tar."""
        o = int(self.offsets[i])
        return self._map(int(self.shard_of[i]))[o : o + int(self.sizes[i])]

    def read(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(encoded bytes per sample as uint8 views, int64 labels, bool mask of damaged samples) — the
        per-sample access for tools; the loaders gather whole batches through :class:`Region`."""
        indices = np.asarray(indices, dtype=np.int64)
        bad = self.verdict[indices] != OK
        data = [np.zeros(1, np.uint8) if b else self.bytes_of(i) for i, b in zip(indices.tolist(), bad.tolist())]
        return data, np.where(bad, -1, self.labels[indices]), bad

    def why(self, i: int) -> str:
        """What is wrong with sample ``i``, completing "sample KEY …"."""
        v = int(self.verdict[i])
        if v == BAD_SIZE:
            h, w = (int(x) for x in self.hw[i])
            want = "×".join(map(str, self.manifest.image_size))
            got = f"{h}×{w}" if h and w else f"{int(self.sizes[i])} bytes"
            return f"is {got}, not the manifest's image_size {want}"
        if v == LABEL_RANGE:
            n = self.manifest.num_classes
            allowed = f"0 … {n - 1} or -1" if n else "-1 (the set is unlabelled)"
            return f"has label {int(self.labels[i])}, outside the set's classes ({allowed})"
        return WHY.get(v, "is damaged")

    def describe(self, i: int, why: str | None = None) -> str:
        """One line naming the shard, the member and the fix."""
        why = why or self.why(i)
        if not why.startswith(("is ", "has ", "does ")):
            why = f"is {why}"
        differs = self._differs.get(int(self.shard_of[i]))
        if differs:
            why += f" (its shard changed since it was packed: {differs})"
        return (
            f"{self.shard_file(i)}: sample {self.keys[i]!s} (member {self.keys[i]!s}.{self.ext} at byte "
            f"{int(self.offsets[i])}) {why}; re-pack {self.directory} with `python -m shards pack` "
            f"(or check it with `python -m shards verify`), or pass --on-corrupt skip to skip such samples"
        )

    def decodes(self, i: int) -> bool:
        """Whether sample ``i`` passed the checks (used to find the culprit when DALI fails anyway)."""
        if self.verdict[i] != OK:
            return False
        return self.format == "raw" or check_bytes(self.bytes_of(i).tobytes(), self.format) == OK


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------
def _regular(path: Path, what: str, directory: Path) -> None:
    """``path`` exists and is a regular file (a folder or a FIFO in its place would fail or block later)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ShardError(
            f"{path}: cannot open {what} ({e.strerror}); check the path or re-pack {directory} with "
            "`python -m shards pack`"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ShardError(f"{path}: the {what} is not a regular file; re-pack {directory} with `python -m shards pack`")


def _header_name(m: np.ndarray, o: int) -> str:
    """What the tar header before data offset ``o`` records: 'NAME' of N bytes (or why there is none)."""
    if o < BLOCK or o % BLOCK or o > len(m):
        return "no member header" if o <= len(m) else "nothing (past its end)"
    head = m[o - BLOCK : o].tobytes()
    name = head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = head[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if head[257:262] == b"ustar" else ""
    try:
        size = f" of {int(head[124:136].strip(b' ' + bytes(1)) or b'0', 8)} bytes"
    except ValueError:
        size = " (a damaged header)"
    return repr(f"{prefix}/{name}" if prefix else name) + size


def _count_mismatch(
    tar: Path, idx: Path, indexed: int, count: int, directory: Path, members_differ: bool = False
) -> str:
    """Which of the index and the tar disagrees with the manifest: the wds2idx advice only when the tar
    itself holds the manifest's count (the index is the stale part)."""
    try:
        with tarfile.open(tar) as t:
            keys = {m.name.rsplit(".", 1)[0] for m in t if m.isfile()}
        in_tar = len(keys)
    except (OSError, tarfile.TarError, ValueError, EOFError):
        in_tar = -1
    if in_tar == count and not members_differ:
        return (
            f"{idx}: index lists {indexed} samples, the tar and the manifest {count}: the index is stale; "
            f"re-create it with `wds2idx {tar} {idx}`"
        )
    return (
        f"{tar}: holds {in_tar if in_tar >= 0 else 'an unreadable number of'} samples (or members its index does "
        f"not list), its index {indexed}, the manifest {count}; re-pack {directory} with `python -m shards pack`"
        if members_differ
        else f"{tar}: holds {in_tar if in_tar >= 0 else 'an unreadable number of'} samples, its index {indexed}, "
        f"the manifest {count}; re-pack {directory} with `python -m shards pack`"
    )


def _parse_labels(m: np.ndarray, off: np.ndarray, size: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels from the ``.cls`` members (ASCII ``-?[0-9]+``, ``shards.read.check.parse_label``), vectorised;
    (labels, bad mask)."""
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
    for r in rows[~simple].tolist():  # anything unusual (long or not a number): the one parser
        o = int(off[r])
        label = parse_label(m[o : o + int(size[r])].tobytes())
        if label is None:
            bad[r] = True
        else:
            labels[r] = label
    return labels, bad


# ---------------------------------------------------------------------------------------------------
# Memory maps
# ---------------------------------------------------------------------------------------------------
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
