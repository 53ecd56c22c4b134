"""Feed: what the data path costs the training thread, on ONE core — does the GPU ever wait for the host?

    python -m bench feed --shards data/cifar10-train:10 --shards data/edm:1 --batch-size 512
    python -m bench feed --quick                       # demo data, small sizes
    python -m bench feed --shards ... --baseline-src /tmp/base   # also time an older checkout, same run

Measured with the process pinned to ``--cores`` cores (default 1), after the given shard sets are
converted (once, with ``bench.formats.convert``) into each of ``--formats`` (raw, jpg, png):

* ``feed-<format>`` rows — the host feed alone, i.e. what the external source computes per batch: the
  batch gathered from the memory-mapped tars, the validity of its samples and every augmentation
  parameter drawn (``TrainLoader.feed``, no DALI): ``samples_per_s``, ``ms_per_batch`` over at
  least ``--batches`` batches and ``--min-seconds`` seconds after ``--warmup`` (means, and medians
  ``..._p50``, which a shared machine's stalls do not move). The feed runs in the
  loader's prefetch thread, off the training thread, so the row also gives what the training thread
  spends per step on data with the real loader (``training_thread_ms_per_batch``: CPU time of the
  consuming thread in ``next()``, over ``--loader-batches`` batches; ``..._inline`` with
  ``prefetch_batches=0``, everything on the training thread), and the loader's samples/s.
* ``epoch-boundary`` — the one-pipeline loader (``TrainLoader.batches()``) run across the end of an
  epoch of the given mixture: the interval between an epoch's last batch and the next one's first, in
  ms and as a multiple of the median batch interval; beside it the same with a pipeline rebuilt per
  epoch (``epoch(0)`` then ``epoch(1)``), as the loader did before.
* ``open-<set>`` rows — opening each given set cold (no cache: the index parsed, every sample's label
  read and every encoded image checked — ``validation_s`` is the decode check alone) and warm (the
  cached tables).
* ``open-large`` — a ``--large-size`` sample set (default 1M: the given sets in ``--large-format``
  repeated under one manifest through symbolic links, ``bench.scale.make_standin``) opened cold and warm,
  and a warm ``TrainLoader`` over it (which also plans its first epoch).
* ``baseline-*`` rows (with ``--baseline-src DIR``, a checkout of another version of this project, e.g.
  ``git worktree add /tmp/base <commit>``): the same loader measurements and, where its private feed has
  the old signature, the feed alone, run in a subprocess pinned to the same cores, in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import click

from bench.common import out_dir_option, print_table, run_in_workdir, write_results
from shards.manifest import FORMATS, Manifest, ShardError


@dataclass(frozen=True)
class FeedConfig:
    formats: tuple[str, ...] = FORMATS
    batch_size: int = 512
    aug: str = "simclr"
    batches: int = 200  # at least this many timed feed batches ...
    min_seconds: float = 10.0  # ... and at least this long
    warmup: int = 20
    loader_batches: int = 50  # timed batches of the real loader (training-thread cost)
    boundary_batches: int = 8  # batches on each side of the epoch boundary
    large_size: int = 1_000_000
    large_format: str = "jpg"
    cores: int = 1
    seed: int = 0
    baseline_src: str | None = None
    work_dir: str | None = None


# ---------------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------------
def pin(cores: int) -> set[int]:
    """Pin this process to its first ``cores`` allowed CPUs; returns the previous set."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(before)[: max(1, cores)]))
    return before


def timed_calls(fn, warmup: int, min_calls: int, min_seconds: float) -> list[float]:
    """Seconds of each call of ``fn()`` after ``warmup`` calls, until both minimums are met."""
    for _ in range(warmup):
        fn()
    out, start = [], time.perf_counter()
    while len(out) < min_calls or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def time_feed(loader, cfg: FeedConfig) -> dict:
    """The host feed of ``loader`` alone (gather, validity, parameters), epoch after epoch from (0, 0), with the
    next epoch planned in a background thread as the loader does."""
    from loaders.feed import Plans

    plans = Plans(loader.plan)

    def positions():
        e = 0
        while True:
            for k in range(loader.steps_per_epoch):
                yield e, k
            e += 1

    feed = loader.feed(positions(), plans)

    def one():
        feed()
        feed.fed.popleft()

    try:
        secs = timed_calls(one, cfg.warmup, cfg.batches, cfg.min_seconds)
    finally:
        plans.close()
    total = sum(secs)
    p50 = statistics.median(secs)
    return {
        "samples_per_s": round(len(secs) * loader.batch_size / total, 1),
        "ms_per_batch": round(1e3 * total / len(secs), 4),
        "samples_per_s_p50": round(loader.batch_size / p50, 1),
        "ms_per_batch_p50": round(1e3 * p50, 4),
        "ms_per_batch_p90": round(1e3 * statistics.quantiles(secs, n=10)[-1], 4),
        "timed_batches": len(secs),
        "seconds": round(total, 3),
    }


def time_loader(loader, batches: int, warmup: int = 5) -> dict:
    """The real loader: CPU time of the consuming thread per batch, and samples/s."""
    it = loader.batches()
    for _ in range(warmup):
        next(it)
    cpu = wall = 0.0
    n = samples = 0
    t_all = time.perf_counter()
    while n < batches:
        t, c = time.perf_counter(), time.thread_time()
        b = next(it)
        cpu += time.thread_time() - c
        wall += time.perf_counter() - t
        n += 1
        samples += len(b)
    seconds = time.perf_counter() - t_all
    it.close()
    return {
        "thread_ms": round(1e3 * cpu / n, 4),
        "wait_ms": round(1e3 * wall / n, 3),
        "samples_per_s": round(samples / seconds, 1),
        "batches": n,
        "seconds": round(seconds, 3),
    }


def boundary(loader, n: int) -> dict:
    """Delivery times around the end of epoch 0: one pipeline (batches()) vs a pipeline per epoch."""
    steps = loader.steps_per_epoch
    n = max(2, min(n, steps - 1))

    def gaps(stamps: list[float]) -> tuple[float, float]:
        d = [b - a for a, b in zip(stamps, stamps[1:])]
        at = d[n - 1]  # from epoch 0's last batch to epoch 1's first
        others = d[: n - 1] + d[n:]
        return 1e3 * at, 1e3 * statistics.median(others)

    loader.load_state_dict({"epoch": 0, "step": steps - n - 2})
    it = loader.batches()
    next(it), next(it)  # warm-up, then n batches of epoch 0 and n of epoch 1
    stamps, seen = [time.perf_counter()], []
    for _ in range(2 * n):
        b = next(it)
        stamps.append(time.perf_counter())
        seen.append((b.epoch, b.step))
    it.close()
    assert seen[n - 1] == (0, steps - 1) and seen[n] == (1, 0), seen
    one_gap, one_med = gaps(stamps[1:])
    it = loader.epoch(0, steps - n - 2)
    next(it), next(it)
    stamps = [time.perf_counter()]
    for _ in it:
        stamps.append(time.perf_counter())
    it = loader.epoch(1, 0)
    for _ in range(n):
        next(it)
        stamps.append(time.perf_counter())
    it.close()
    re_gap, re_med = gaps(stamps[1:])
    return {
        "gap_ms": round(one_gap, 2),
        "median_interval_ms": round(one_med, 2),
        "gap_ratio": round(one_gap / one_med, 3),
        "rebuild_gap_ms": round(re_gap, 2),
        "rebuild_median_interval_ms": round(re_med, 2),
        "rebuild_gap_ratio": round(re_gap / re_med, 3),
        "batches_each_side": n,
    }


def open_cost(directory: Path) -> dict:
    """Opening a set cold (cache neither read nor written) and warm (cache present), on the pinned cores."""
    import loaders.reader as reader

    m = Manifest.load(directory)
    spent = [0.0]
    real = reader.check_members

    def check(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    reader.check_members = check
    try:
        t = time.perf_counter()
        reader.SourceReader(directory, m, cache=False)
        cold = time.perf_counter() - t
    finally:
        reader.check_members = real
    reader.SourceReader(directory, m)  # make sure a cache exists
    t = time.perf_counter()
    reader.SourceReader(directory, m)
    warm = time.perf_counter() - t
    return {
        "samples": m.count,
        "format": m.format,
        "cold_open_s": round(cold, 3),
        "validation_s": round(spent[0], 3),
        "validation_us_per_sample": round(1e6 * spent[0] / max(m.count, 1), 1),
        "warm_open_s": round(warm, 4),
    }


# ---------------------------------------------------------------------------------------------------
# An older checkout, measured in a subprocess through the API both versions share
# ---------------------------------------------------------------------------------------------------
PROBE = r"""
import json, os, statistics, sys, time
args = json.loads(sys.argv[1])
os.sched_setaffinity(0, set(args["cpus"]))
import numpy as np
from loaders.augment import preset
from loaders.mixture import parse_shards_args
try:
    from loaders.loader import TrainLoader
except ImportError:  # a checkout from before the loader's modules were split
    from loaders.pipeline import TrainLoader
rows = []
for fmt, shards in args["formats"].items():
    loader = TrainLoader(parse_shards_args(shards), preset(args["aug"]), args["batch_size"], seed=args["seed"])
    row = {"backend": "baseline-feed-" + fmt, "format": fmt, "off_training_thread": False}
    try:  # the feed alone, through the old private signature _Feed(readers, plan, batch_size, start, steps, params)
        from loaders.pipeline import _Feed
        plan = loader.plan(0)
        def fresh():
            return _Feed(loader._readers, plan, loader.batch_size, 0, loader.steps_per_epoch,
                         params=lambda step, source: loader.aug_params(0, step, source))
        feed, secs = fresh(), []
        for i in range(args["warmup"]):
            feed()
        start = time.perf_counter()
        while len(secs) < args["batches"] or time.perf_counter() - start < args["min_seconds"]:
            if feed.step >= feed.steps:
                feed = fresh()
            t = time.perf_counter(); feed(); secs.append(time.perf_counter() - t)
        row.update(samples_per_s=round(len(secs) * loader.batch_size / sum(secs), 1),
                   ms_per_batch=round(1e3 * sum(secs) / len(secs), 4),
                   ms_per_batch_p50=round(1e3 * statistics.median(secs), 4),
                   timed_batches=len(secs), seconds=round(sum(secs), 3))
    except Exception as e:
        row["feed_error"] = repr(e)[:200]
    it = loader.epoch(0)
    for _ in range(5):
        next(it)
    cpu = 0.0; n = samples = 0; t_all = time.perf_counter()
    while n < args["loader_batches"]:
        c = time.thread_time(); b = next(it); cpu += time.thread_time() - c; n += 1; samples += len(b.labels)
    seconds = time.perf_counter() - t_all
    del it
    row.update(training_thread_ms_per_batch=round(1e3 * cpu / n, 4), loader_samples_per_s=round(samples / seconds, 1))
    rows.append(row)
if args.get("large"):
    from loaders.reader import SourceReader
    from shards.manifest import Manifest
    m = Manifest.load(args["large"])
    t = time.perf_counter(); SourceReader(args["large"], m); first = time.perf_counter() - t
    t = time.perf_counter(); SourceReader(args["large"], m); second = time.perf_counter() - t
    rows.append({"backend": "baseline-open-large", "samples": m.count, "first_open_s": round(first, 3),
                 "second_open_s": round(second, 3)})
print(json.dumps(rows))
"""


def run_baseline(src: str, cfg: FeedConfig, sets: dict[str, list[str]], large: Path | None) -> list[dict]:
    args = {
        "cpus": sorted(os.sched_getaffinity(0)),
        "formats": sets,
        "aug": cfg.aug,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "warmup": cfg.warmup,
        "batches": cfg.batches,
        "min_seconds": cfg.min_seconds,
        "loader_batches": cfg.loader_batches,
        "large": str(large) if large else None,
    }
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, env=env, cwd=src
    )
    if r.returncode != 0:
        raise ShardError(
            f"--baseline-src {src}: the probe failed ({(r.stderr.strip().splitlines() or ['?'])[-1][:200]})"
        )
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------
def converted(shards: list[str], cfg: FeedConfig, work: Path) -> dict[str, list[str]]:
    """``--shards`` arguments per format: a set as given where it already is in that format, else a
    converted copy under ``work`` (kept and reused when ``--work-dir`` is given)."""
    from bench.formats import FormatsConfig, convert
    from loaders.mixture import parse_shards_args

    out: dict[str, list[str]] = {f: [] for f in cfg.formats}
    for s in parse_shards_args(shards).sources:
        want = [f for f in cfg.formats if f != s.manifest.format]
        base = work / "converted" / s.name
        todo = [f for f in want if not (base / f / "manifest.json").is_file()]
        if todo:
            click.echo(f"  converting {s.path} to {', '.join(todo)} …", err=True)
            convert(Path(s.path), base, FormatsConfig(formats=tuple(todo)))
        for f in cfg.formats:
            out[f].append(f"{s.path if f == s.manifest.format else base / f}:{s.weight:g}")
    return out


def large_set(sets: list[str], cfg: FeedConfig, work: Path) -> Path:
    from bench.scale import make_standin

    out = work / f"large-{cfg.large_format}-{cfg.large_size}"
    if not (out / "manifest.json").is_file():
        bases = [Path(a.rsplit(":", 1)[0]) for a in sets]
        make_standin(bases, cfg.large_size, out, "large")
    for p in out.glob(".*.loader-cache.npz"):  # a cold open means no cache
        p.unlink()
    return out


def run(shards: list[str], cfg: FeedConfig, work: Path) -> list[dict]:
    from loaders.augment import preset
    from loaders.loader import TrainLoader
    from loaders.mixture import parse_shards_args

    work = Path(cfg.work_dir) if cfg.work_dir else work
    work.mkdir(parents=True, exist_ok=True)
    sets = converted(shards, cfg, work)
    large = large_set(sets[cfg.large_format], cfg, work) if cfg.large_size and cfg.large_format in sets else None
    before = pin(cfg.cores)
    rows: list[dict] = []
    try:
        for s in parse_shards_args(shards).sources:
            rows.append({"backend": f"open-{s.name}", **open_cost(Path(s.path))})
            click.echo(f"  open {s.name}: {rows[-1]}", err=True)
        for fmt, mix in sets.items():
            t = time.perf_counter()
            make = partial(
                TrainLoader,
                parse_shards_args(mix),
                preset(cfg.aug),
                cfg.batch_size,
                seed=cfg.seed,
                loader_device="cpu",
                num_threads=cfg.cores,
            )
            loader = make()  # the feed in a prefetch thread, as in training
            opened = time.perf_counter() - t
            row = {
                "backend": f"feed-{fmt}",
                "format": fmt,
                "open_s": round(opened, 3),
                **time_feed(loader, cfg),
                "off_training_thread": loader.prefetch_batches > 0,
            }
            real = time_loader(loader, cfg.loader_batches)
            inline = make(prefetch_batches=0)  # the feed on the calling thread
            inl = time_loader(inline, cfg.loader_batches)
            row.update(
                training_thread_ms_per_batch=real["thread_ms"],
                training_thread_ms_per_batch_inline=inl["thread_ms"],
                loader_samples_per_s=real["samples_per_s"],
                loader_samples_per_s_inline=inl["samples_per_s"],
                loader_timed_batches=real["batches"],
                loader_seconds=real["seconds"],
            )
            rows.append(row)
            click.echo(
                f"  {fmt}: feed {row['ms_per_batch']} ms/batch, training thread {row['training_thread_ms_per_batch']} "
                f"ms/batch ({row['training_thread_ms_per_batch_inline']} inline)",
                err=True,
            )
        loader = TrainLoader(
            parse_shards_args(shards),
            preset(cfg.aug),
            cfg.batch_size,
            seed=cfg.seed,
            loader_device="cpu",
            num_threads=cfg.cores,
        )
        rows.append(
            {
                "backend": "epoch-boundary",
                "steps_per_epoch": loader.steps_per_epoch,
                **boundary(loader, cfg.boundary_batches),
            }
        )
        click.echo(f"  boundary: {rows[-1]}", err=True)
        if large is not None:
            from loaders.reader import SourceReader

            m = Manifest.load(large)
            t = time.perf_counter()
            SourceReader(large, m)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            SourceReader(large, m)
            warm = time.perf_counter() - t
            t = time.perf_counter()
            TrainLoader(parse_shards_args([str(large)]), preset(cfg.aug), cfg.batch_size, loader_device="cpu")
            loader_open = time.perf_counter() - t
            rows.append(
                {
                    "backend": "open-large",
                    "samples": m.count,
                    "format": m.format,
                    "shards": len(m.shards),
                    "cold_open_s": round(cold, 3),
                    "warm_open_s": round(warm, 3),
                    "loader_open_s": round(loader_open, 3),
                }
            )
            click.echo(f"  large: {rows[-1]}", err=True)
        if cfg.baseline_src:
            base_large = None
            if large is not None:
                base_large = large
                for p in large.glob(".*.loader-cache.npz"):
                    p.unlink()
            rows += run_baseline(cfg.baseline_src, cfg, sets, base_large)
    finally:
        os.sched_setaffinity(0, before)
    return rows


@click.command("feed")
@click.option("--shards", "shards", multiple=True, metavar="DIR[:W]", help="The mixture (default: the demo data).")
@click.option("--formats", default=",".join(FORMATS), show_default=True, help="Formats to time the feed in.")
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option("--aug", default="simclr", show_default=True, help="Augmentation preset (its parameters are drawn).")
@click.option("--batches", type=int, default=200, show_default=True, help="At least this many timed feed batches …")
@click.option("--min-seconds", type=float, default=10.0, show_default=True, help="… and at least this many seconds.")
@click.option("--warmup", type=int, default=20, show_default=True)
@click.option("--loader-batches", type=int, default=50, show_default=True, help="Timed batches of the real loader.")
@click.option("--boundary-batches", type=int, default=8, show_default=True, help="Batches each side of the epoch end.")
@click.option(
    "--large-size", type=int, default=1_000_000, show_default=True, help="Samples of the large set (0: none)."
)
@click.option("--large-format", type=click.Choice(FORMATS), default="jpg", show_default=True)
@click.option("--cores", type=int, default=1, show_default=True, help="CPUs the benchmark is pinned to.")
@click.option(
    "--baseline-src",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A checkout of another version of this project to time in the same run.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep converted and large sets here (reused next time) [a temporary folder].",
)
@click.option("--device", default="cpu", show_default=True, help="Accepted for `bench all`; the feed is host work.")
@click.option("--quick", is_flag=True, help="Small sizes: 50 feed batches or 1 s, 10 loader batches, a 100k large set.")
@out_dir_option
def main(
    shards,
    formats,
    batch_size,
    aug,
    batches,
    min_seconds,
    warmup,
    loader_batches,
    boundary_batches,
    large_size,
    large_format,
    cores,
    baseline_src,
    work_dir,
    device,
    quick,
    out_dir,
):
    """Host feed per batch on one core, the training thread's share, the epoch boundary, opening sets."""
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    if not fmts or any(f not in FORMATS for f in fmts):
        raise click.BadParameter(f"{formats!r}: choose from {', '.join(FORMATS)}", param_hint="--formats")
    if quick:
        batches, min_seconds, warmup, loader_batches = (
            min(batches, 50),
            min(min_seconds, 1.0),
            min(warmup, 5),
            min(loader_batches, 10),
        )
        large_size = min(large_size, 100_000)
        batch_size = min(batch_size, 128)
    cfg = FeedConfig(
        formats=fmts,
        batch_size=batch_size,
        aug=aug,
        batches=batches,
        min_seconds=min_seconds,
        warmup=warmup,
        loader_batches=loader_batches,
        boundary_batches=boundary_batches,
        large_size=large_size,
        large_format=large_format if large_format in fmts else fmts[0],
        cores=cores,
        baseline_src=baseline_src,
        work_dir=work_dir,
    )
    rows, shards = run_in_workdir("bench-feed-", shards, run, cfg)
    print_table(
        [r for r in rows if "ms_per_batch" in r or "training_thread_ms_per_batch" in r],
        [
            "backend",
            "samples_per_s",
            "ms_per_batch",
            "ms_per_batch_p50",
            "timed_batches",
            "seconds",
            "training_thread_ms_per_batch",
            "training_thread_ms_per_batch_inline",
            "loader_samples_per_s",
        ],
    )
    print_table(
        [r for r in rows if r["backend"] == "epoch-boundary"],
        ["backend", "gap_ms", "median_interval_ms", "gap_ratio", "rebuild_gap_ms", "rebuild_gap_ratio"],
    )
    print_table(
        [r for r in rows if "open" in r["backend"]],
        [
            "backend",
            "samples",
            "format",
            "cold_open_s",
            "validation_s",
            "warm_open_s",
            "loader_open_s",
            "first_open_s",
            "second_open_s",
        ],
    )
    path = write_results("feed", {**asdict(cfg), "shards": list(shards), "quick": quick}, rows, out_dir)
    click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
