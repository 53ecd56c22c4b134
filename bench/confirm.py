"""Confirming shards at open: what hashing every tar against its manifest costs (``shards.confirm``).

    python -m bench confirm --shards data/edm --shards /tmp/scale/generated-1000000

The loaders hash each shard of a set (sha256, one thread per core) every time the set is opened, before they
trust anything cached about it (``loaders.reader``). Per set this measures, after one untimed read so the
page cache holds the tars (what a second run of a training job sees; a cold disk adds its read time):

* ``confirm-1`` / ``confirm-N``: the confirmation alone with one thread and with every core;
* ``open-confirmed``: ``SourceReader`` opening the set with its index caches present, confirmation included;
* ``open-trusting``: the same open with the hashes given as known (what it cost before the confirmation);
* ``open-first``: the first open (no cache: index, headers, every sample checked in worker processes).

``samples_per_s`` is samples confirmed (or opened) per second; each figure the best of ``--repeat`` runs.
Not part of ``python -m bench all``: the sets are the user's (the 1M-sample set comes from ``python -m bench
scale --full``, which builds 1M distinct images).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import click

from bench.common import out_dir_option, print_table, write_results
from shards.confirm import Confirmation, file_sha256
from shards.manifest import Manifest


class _Known:
    """A confirmation whose answer is already known (every shard matches): the open without hashing."""

    def __init__(self, n: int):
        self.n = n

    def result(self) -> list[None]:
        return [None] * self.n


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(directory: Path, repeat: int) -> list[dict]:
    from loaders.reader import SourceReader
    from shards.index import cache_paths

    m = Manifest.load(directory)
    size = sum(s.bytes for s in m.shards)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for s in m.shards:  # into the page cache
        file_sha256(directory / s.file)
    base = {"set": str(directory), "samples": m.count, "shards": len(m.shards), "gib": round(size / 2**30, 3)}

    def row(backend: str, seconds: float, **extra) -> dict:
        return {
            **base,
            "backend": backend,
            "seconds": round(seconds, 3),
            "samples_per_s": round(m.count / seconds, 1),
        } | extra

    rows = []
    for threads in sorted({1, cores}):
        t = _best(lambda n=threads: Confirmation(directory, m, threads=n).result(), repeat)
        rows.append(row(f"confirm-{threads}", t, threads=threads, gb_per_s=round(size / 1e9 / t, 3)))
    for s in m.shards:  # the first open, timed once: no cache anywhere
        for p in cache_paths(directory / s.index):
            p.unlink(missing_ok=True)
    t = time.perf_counter()
    SourceReader(directory, m)
    rows.append(row("open-first", time.perf_counter() - t))
    rows.append(row("open-confirmed", _best(lambda: SourceReader(directory, m), repeat), threads=cores))
    rows.append(
        row("open-trusting", _best(lambda: SourceReader(directory, m, confirmation=_Known(len(m.shards))), repeat))
    )
    return rows


@click.command()
@click.option("--shards", "sets", multiple=True, required=True, type=click.Path(path_type=Path), help="A shard set.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per figure (best).")
@out_dir_option
def main(sets, repeat, out_dir):
    """What confirming every shard against its manifest costs when a set is opened."""
    rows = [r for d in sets for r in measure(Path(d), repeat)]
    print_table(rows, ["set", "backend", "samples", "gib", "seconds", "samples_per_s", "gb_per_s"])
    free = shutil.disk_usage(Path(sets[0])).free
    path = write_results(
        "confirm", {"sets": [str(s) for s in sets], "repeat": repeat, "disk_free_gib": free // 2**30}, rows, out_dir
    )
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
