"""Confirming shards at open: what hashing every tar against its manifest (``shards.read.confirm``) costs a set's open.

Per set, after one untimed read (the page cache holds the tars), each the best of ``--repeat``: ``confirm-1`` /
``confirm-N`` (the hashing alone, one thread and every core), ``open-first`` (no cache), ``open-confirmed``
(``SourceReader`` with its caches) and ``open-trusting`` (the same with the hashes given as known). Not in ``all``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from bench import harness
from shards.base import host
from shards.format.manifest import Manifest
from shards.read.confirm import Confirmation, file_sha256


class Known:
    """A confirmation whose answer is already known (every shard matches): the open without hashing."""

    def __init__(self, n: int):
        self.n = n

    def result(self) -> list[None]:
        return [None] * self.n


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(directory: Path, repeat: int) -> list[dict]:
    from shards.read.index import cache_paths
    from shards.read.reader import SourceReader

    m, cores = Manifest.load(directory), host.cores()
    size = sum(s.bytes for s in m.shards)
    for s in m.shards:  # into the page cache
        file_sha256(directory / s.file)
    base = {"set": str(directory), "samples": m.count, "shards": len(m.shards), "gib": round(size / 2**30, 3)}

    def row(backend: str, seconds: float) -> dict:
        return {**base, "backend": backend, "seconds": round(seconds, 3), "samples_per_s": round(m.count / seconds, 1)}

    rows = []
    for n in sorted({1, cores}):
        t = best(lambda n=n: Confirmation(directory, m, threads=n).result(), repeat)
        rows.append({**row(f"confirm-{n}", t), "threads": n, "gb_per_s": round(size / 1e9 / t, 3)})
    for p in (p for s in m.shards for p in cache_paths(directory / s.index)):  # the first open: no cache anywhere
        p.unlink(missing_ok=True)
    rows.append(row("open-first", best(lambda: SourceReader(directory, m), 1)))
    rows.append({**row("open-confirmed", best(lambda: SourceReader(directory, m), repeat)), "threads": cores})
    trusting = best(lambda: SourceReader(directory, m, confirmation=Known(len(m.shards))), repeat)
    return [*rows, row("open-trusting", trusting)]


@harness.command("confirm")
@click.option("--shards", "sets", multiple=True, required=True, type=click.Path(path_type=Path), help="a shard set")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="runs per figure (best)")
def main(sets, repeat, out_dir):
    """What confirming every shard against its manifest costs when a set is opened."""
    rows = [r for d in sets for r in measure(Path(d), repeat)]
    free = shutil.disk_usage(sets[0]).free // 2**30
    settings = {"sets": [str(s) for s in sets], "repeat": repeat, "disk_free_gib": free}
    harness.finish("confirm", settings, rows, "set backend samples gib seconds samples_per_s gb_per_s", out_dir)
