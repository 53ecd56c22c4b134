"""DALI's webdataset index format (what ``wds2idx`` writes), written and read without DALI, and a
cache of what loaders derive from it.

File layout: first line ``v1.2 <samples>``, then one line per sample made of repeated
``<ext> <data_offset> <data_size> <member_name>`` groups. Offsets point at member *data*
(past the tar header), so ``mmap[offset:offset + size]`` is the member's bytes.

Parsing text is slow in Python (about 2 µs per sample even on the fast path below, seconds for a
million samples), so readers keep what they parse in a cache (:func:`load_cache` /
:func:`save_cache`): a ``.npz`` of arrays beside the index, stamped with the size and modification
time of the index and its tar, so an edited, re-packed or re-indexed shard is parsed again. A
read-only shard folder falls back to a per-user cache folder, and a cache that cannot be written
is simply not written: caching never turns into an error.

The caches are the project's own files: ``shards pack`` does not take them for inputs, ``--overwrite``
removes the old set's (:func:`existing_caches`), and they are created readable by everyone the umask
allows (0644 under the usual 022), like the shards, so the other users of a shared data folder reuse them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.base.errors import ShardError

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class ShardIndex:
    """Per-sample member locations of one tar, as arrays (one row per sample, in tar order)."""

    keys: np.ndarray  # (n,) str
    offsets: dict[str, np.ndarray]  # ext -> (n,) int64 data offsets
    sizes: dict[str, np.ndarray]  # ext -> (n,) int64 data sizes

    def __len__(self) -> int:
        return len(self.keys)


def format_index(samples: list[list[tuple[str, int, int, str]]]) -> str:
    """samples: per sample, a list of (ext, data_offset, data_size, member_name)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{ext} {off} {size} {name}" for ext, off, size, name in members))
    return "\n".join(lines) + "\n"


def read_index(path: str | Path) -> ShardIndex:
    """Parse an index file; a malformed one is a ShardError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ShardError(
            f"{path}: cannot read index ({e.strerror}); re-create it with `python -m shards pack` or `wds2idx`"
        ) from None
    head, _, body_text = text.partition("\n")
    if not head.strip():
        raise ShardError(f"{path}: empty index file; re-create it with `wds2idx`")
    head_parts = head.split()
    if len(head_parts) != 2 or head_parts[0] != INDEX_VERSION or not head_parts[1].isdigit():
        raise ShardError(f"{path}: bad index header {head!r} (want '{INDEX_VERSION} <samples>')")
    n = int(head_parts[1])
    fast = parse_uniform_index(body_text, n)
    if fast is not None:
        return fast
    lines = body_text.splitlines()
    if len(lines) < n:
        raise ShardError(f"{path}: index header says {n} samples but holds {len(lines)} lines")
    return parse_index_lines(path, lines[:n])


def parse_uniform_index(body: str, n: int) -> ShardIndex | None:
    """The common case in a few vectorised passes: exactly ``n`` lines, each listing the same
    extensions in the same order (what `shards pack` and `wds2idx` write). None otherwise."""
    first = body[: body.find("\n")].split() if "\n" in body else body.split()
    if n == 0 or not first or len(first) % 4:
        return None
    groups = len(first) // 4
    tokens = body.split()
    width = 4 * groups
    if len(tokens) != n * width or body.count("\n") not in (n, n - 1):
        return None
    exts = [first[4 * g] for g in range(groups)]
    if len(set(exts)) != groups or any(tokens[4 * g :: width].count(ext) != n for g, ext in enumerate(exts)):
        return None
    try:
        offsets = {ext: np.array(tokens[4 * g + 1 :: width], dtype=np.int64) for g, ext in enumerate(exts)}
        sizes = {ext: np.array(tokens[4 * g + 2 :: width], dtype=np.int64) for g, ext in enumerate(exts)}
    except (ValueError, OverflowError):
        return None
    names, suffix = tokens[3::width], "." + exts[0]
    if not all(name.endswith(suffix) for name in names):
        return None
    return ShardIndex(keys=np.array([name[: -len(suffix)] for name in names], dtype=str), offsets=offsets, sizes=sizes)


def parse_index_lines(path: Path, body: list[str]) -> ShardIndex:
    n = len(body)
    keys = np.empty(n, dtype=object)
    offsets: dict[str, np.ndarray] = {}
    sizes: dict[str, np.ndarray] = {}
    for i, line in enumerate(body):
        parts = line.split()
        if not parts or len(parts) % 4:
            raise ShardError(f"{path}: line {i + 2} is malformed: {line[:80]!r}")
        for j in range(0, len(parts), 4):
            ext, off, size, name = parts[j : j + 4]
            if ext not in offsets:
                offsets[ext] = np.full(n, -1, dtype=np.int64)
                sizes[ext] = np.full(n, -1, dtype=np.int64)
            try:
                offsets[ext][i] = int(off)
                sizes[ext][i] = int(size)
            except ValueError:
                raise ShardError(f"{path}: line {i + 2} is malformed: {line[:80]!r}") from None
            if j == 0:
                keys[i] = name[: len(name) - len(ext) - 1]  # member "KEY.ext"
    return ShardIndex(keys=keys.astype(str), offsets=offsets, sizes=sizes)


# ---------------------------------------------------------------------------------------------------
# The cache of parsed (and derived) per-sample arrays
# ---------------------------------------------------------------------------------------------------
CACHE_SUFFIX = ".loader-cache.npz"  # beside the index: f".{index name}{CACHE_SUFFIX}"


def file_stamp(*paths: str | Path) -> np.ndarray:
    """Size and modification time (ns) of each file, following symbolic links (int64 array)."""
    out = []
    for p in paths:
        st = os.stat(p)
        out += [st.st_size, st.st_mtime_ns]
    return np.array(out, dtype=np.int64)


def cache_paths(index_path: str | Path) -> list[Path]:
    """Where the cache of ``index_path`` may live, in the order they are tried: beside the index
    (``.NAME-00000.idx.loader-cache.npz``), then the user's cache folder (``$XDG_CACHE_HOME`` or
    ``~/.cache``, ``adainf-loader/index/``, named by a hash of the index's absolute path)."""
    index_path = Path(index_path).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(str(index_path).encode()).hexdigest()[:32]
    return [
        index_path.parent / f".{index_path.name}{CACHE_SUFFIX}",
        Path(base) / "adainf-loader" / "index" / f"{digest}.npz",
    ]


def is_cache_file(name: str) -> bool:
    """True for the name of a cache beside an index (``.NAME-00000.idx.loader-cache.npz``) or of one
    being written (``.{that}.XXXX.tmp``)."""
    return name.startswith(".") and (name.endswith(CACHE_SUFFIX) or (CACHE_SUFFIX + ".") in name)


def existing_caches(index_path: str | Path) -> list[Path]:
    """The cache files of ``index_path`` that exist now (beside it and in the user's cache folder)."""
    return [p for p in cache_paths(index_path) if p.is_file()]


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it (briefly) and restore it
    os.umask(mask)
    return mask


def load_cache(index_path: str | Path, stamp: np.ndarray) -> dict[str, np.ndarray] | None:
    """The arrays saved for ``index_path`` under exactly this ``stamp``, or None (missing, stale or
    unreadable caches are misses, never errors)."""
    for path in cache_paths(index_path):
        try:
            with np.load(path, allow_pickle=False) as z:
                if "stamp" not in z.files or not np.array_equal(z["stamp"], stamp):
                    continue
                return {k: z[k] for k in z.files if k != "stamp"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
    return None


def save_cache(index_path: str | Path, stamp: np.ndarray, arrays: dict[str, np.ndarray]) -> Path | None:
    """Save ``arrays`` for ``index_path`` under ``stamp``: atomically (a uniquely named temporary
    file, then a rename), in the first writable place of :func:`cache_paths`; None when none is."""
    for path in cache_paths(index_path):
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: other users of the folder could not read it
            with os.fdopen(fd, "wb") as f:
                np.savez(f, stamp=stamp, **arrays)
            os.replace(tmp, path)
            return path
        except OSError:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    return None
