"""DALI's webdataset index format (what ``wds2idx`` writes), written and read without DALI.

File layout: first line ``v1.2 <samples>``, then one line per sample made of repeated
``<ext> <data_offset> <data_size> <member_name>`` groups. Offsets point at member *data*
(past the tar header), so ``mmap[offset:offset + size]`` is the member's bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import ShardError

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
        raise ShardError(f"{path}: cannot read index ({e.strerror}); re-create it with `python -m shards pack` or `wds2idx`") from None
    lines = text.splitlines()
    if not lines:
        raise ShardError(f"{path}: empty index file; re-create it with `wds2idx`")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ShardError(f"{path}: bad index header {lines[0]!r} (want '{INDEX_VERSION} <samples>')")
    n = int(head[1])
    body = lines[1 : 1 + n]
    if len(body) != n:
        raise ShardError(f"{path}: index header says {n} samples but holds {len(body)} lines")
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
            offsets[ext][i] = int(off)
            sizes[ext][i] = int(size)
            if j == 0:
                keys[i] = name[: len(name) - len(ext) - 1]  # member "KEY.ext"
    return ShardIndex(keys=keys.astype(str), offsets=offsets, sizes=sizes)
