"""Feed: what the data path costs the host on ``--cores`` cores (default one). Rows: ``feed-<format>`` (the feed
alone through ``TrainLoader.feed``, and what the training thread spends per batch in ``batches()``, with and without
the prefetch thread), ``epoch-boundary`` (the interval across an epoch's end in ``batches()``, beside a pipeline
rebuilt per epoch), ``open-<set>`` and ``open-large`` (opening sets cold and warm). See bench/README.md ("Feed").
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click

from bench import harness
from bench.formats import convert
from bench.scale import make_standin
from shards.format.manifest import Manifest
from shards.format.schema import FORMATS


def feed_row(loader, timing: harness.Timing) -> dict:
    """The host feed alone (gather, validity, parameters) epoch after epoch, the next plan made ahead as in training:
    means over the timed calls, and medians and the 90th percentile, which a shared machine's stalls move less."""
    from loaders.batch.feed import Plans

    plans, secs = Plans(loader.plan), []
    feed = loader.feed(((e, k) for e in range(10**9) for k in range(loader.steps_per_epoch)), plans)

    def one() -> int:
        t = time.perf_counter()
        feed()
        feed.in_flight.popleft()
        secs.append(time.perf_counter() - t)
        return loader.batch_size

    try:
        row = harness.timed(one, timing, memory=False)
    finally:
        plans.close()
    secs = secs[timing.warmup :]
    p50, bs = statistics.median(secs), loader.batch_size
    row.update(ms_per_batch=round(1e3 * sum(secs) / len(secs), 4), samples_per_s_p50=round(bs / p50, 1))
    row.update(
        ms_per_batch_p50=round(1e3 * p50, 4), ms_per_batch_p90=round(1e3 * statistics.quantiles(secs, n=10)[-1], 4)
    )
    return row


def thread_cost(loader, batches: int) -> dict:
    """``batches()``: CPU time of the consuming (training) thread per batch, and samples/s."""
    it, cpu = loader.batches(), [0.0]

    def one() -> int:
        c = time.thread_time()
        n = len(next(it))
        cpu[0] += time.thread_time() - c
        return n

    for _ in range(5):  # warm-up
        next(it)
    row = harness.timed(one, harness.Timing(0, batches, 0.0), memory=False)
    it.close()
    return {"ms": round(1e3 * cpu[0] / row["timed_batches"], 4), **row}


def boundary(loader, n: int) -> dict:
    """Delivery intervals around the end of epoch 0 in ``batches()``, and with a pipeline per epoch (``epoch()``)."""
    steps = loader.steps_per_epoch
    n = max(2, min(n, steps - 1))

    def gaps(stamps):
        d = [b - a for a, b in zip(stamps, stamps[1:])]
        return 1e3 * d[n - 1], 1e3 * statistics.median(d[: n - 1] + d[n:])  # epoch 0's last batch to 1's first

    loader.load_state_dict({"epoch": 0, "step": steps - n - 2})
    it = loader.batches()
    next(it), next(it)  # warm-up, then n batches each side
    stamps = [time.perf_counter()] + [next(it) and time.perf_counter() for _ in range(2 * n)]
    it.close()
    one = gaps(stamps)
    it = loader.epoch(0, steps - n - 2)
    next(it), next(it)
    stamps = [time.perf_counter()] + [time.perf_counter() for _ in it]
    it = loader.epoch(1, 0)
    stamps += [next(it) and time.perf_counter() for _ in range(n)]
    it.close()
    re = gaps(stamps)
    return {
        "gap_ms": round(one[0], 2),
        "median_interval_ms": round(one[1], 2),
        "gap_ratio": round(one[0] / one[1], 3),
        "rebuild_gap_ms": round(re[0], 2),
        "rebuild_median_interval_ms": round(re[1], 2),
        "rebuild_gap_ratio": round(re[0] / re[1], 3),
        "batches_each_side": n,
    }


def open_cost(directory: Path) -> dict:
    """Opening a set cold (no cache read or written; ``validation_s``: the sample check, ``SourceReader.check_s``)
    and warm (the cached tables)."""
    from shards.read.reader import SourceReader

    m = Manifest.load(directory)
    t = time.perf_counter()
    cold = SourceReader(directory, m, cache=False)
    cold_s = time.perf_counter() - t
    SourceReader(directory, m)  # a cache exists
    t = time.perf_counter()
    SourceReader(directory, m)
    warm_s, check = time.perf_counter() - t, cold.check_s
    return {
        "samples": m.count,
        "format": m.format,
        "shards": len(m.shards),
        "cold_open_s": round(cold_s, 3),
        "validation_s": round(check, 3),
        "validation_us_per_sample": round(1e6 * check / max(m.count, 1), 1),
        "warm_open_s": round(warm_s, 4),
    }


def converted(sources, formats, work: Path) -> dict[str, list[str]]:
    """``--shards`` arguments per format: each set as given where it is in that format, else a converted copy
    (``bench.formats.convert``) under ``work``, kept and reused."""
    out: dict[str, list[str]] = {f: [] for f in formats}
    for s in sources:
        base = work / "converted" / s.name
        todo = [f for f in formats if f != s.manifest.format and not (base / f / "manifest.json").is_file()]
        if todo:
            click.echo(f"  converting {s.path} to {', '.join(todo)} …", err=True)
            convert(Path(s.path), base, todo)
        for f in formats:
            out[f].append(f"{s.path if f == s.manifest.format else base / f}:{s.weight:g}")
    return out


def run(shards, sets: dict, work: Path, o: dict, timing: harness.Timing) -> list[dict]:
    """Every row, pinned to the first ``--cores`` CPUs."""
    from loaders.batch.loader import TrainLoader
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    def loader(mix, **kw):
        recipe, bs = preset(o["aug"]), o["batch_size"]
        return TrainLoader(parse_shards_args(mix), recipe, bs, loader_device="cpu", num_threads=o["cores"], **kw)

    import torch

    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, set(sorted(before)[: o["cores"]]))
    torch.set_num_threads(o["cores"])  # as torch would start on these cores (more threads than cores spin-wait)
    try:
        rows = [{"backend": f"open-{s.name}", **open_cost(Path(s.path))} for s in parse_shards_args(shards).sources]
        for fmt, mix in sets.items():
            t = time.perf_counter()
            real = loader(mix)
            row = {"backend": f"feed-{fmt}", "format": fmt, "open_s": round(time.perf_counter() - t, 3)}
            row.update(feed_row(real, timing), off_training_thread=real.prefetch_batches > 0)
            cost = thread_cost(real, o["loader_batches"])
            inline = thread_cost(loader(mix, prefetch_batches=0), o["loader_batches"])  # all on the calling thread
            row.update(training_thread_ms_per_batch=cost["ms"], training_thread_ms_per_batch_inline=inline["ms"])
            row.update(loader_samples_per_s=cost["samples_per_s"], loader_samples_per_s_inline=inline["samples_per_s"])
            rows.append({**row, "loader_timed_batches": cost["timed_batches"], "loader_seconds": cost["seconds"]})
            click.echo(f"  {fmt}: feed {row['ms_per_batch']} ms/batch, training thread {cost['ms']} ms/batch", err=True)
        first = loader(shards)
        rows.append({"backend": "epoch-boundary", "steps_per_epoch": first.steps_per_epoch})
        rows[-1].update(boundary(first, o["boundary_batches"]))
        if o["large_size"]:
            large = work / f"large-{o['large_format']}-{o['large_size']}"
            if not (large / "manifest.json").is_file():
                bases = [Path(a.rsplit(":", 1)[0]) for a in sets[o["large_format"]]]
                make_standin(bases, o["large_size"], large, "large")
            for cache in large.glob(".*.loader-cache.npz"):  # a cold open means no cache
                cache.unlink()
            row = {"backend": "open-large", **open_cost(large)}
            t = time.perf_counter()
            loader([str(large)])
            rows.append({**row, "loader_open_s": round(time.perf_counter() - t, 3)})
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)
    return rows


@harness.command("feed")
@harness.shards_option()
@click.option("--formats", default=",".join(FORMATS), show_default=True, help="formats to time the feed in")
@click.option("--batch-size", type=click.IntRange(1), default=512, show_default=True, help="[--quick: at most 128]")
@click.option("--aug", default="simclr", show_default=True, help="augmentation preset (its parameters are drawn)")
@harness.timing_options(warmup=20, min_batches=200)
@click.option("--loader-batches", type=click.IntRange(1), default=50, show_default=True, help="[--quick 10]")
@click.option("--boundary-batches", type=click.IntRange(2), default=8, show_default=True, help="each side")
@click.option("--large-size", type=click.IntRange(0), default=1_000_000, show_default=True, help="[--quick 100000]")
@click.option("--large-format", type=click.Choice(FORMATS), default="jpg", show_default=True)
@click.option("--cores", type=click.IntRange(1), default=1, show_default=True, help="CPUs the run is pinned to")
@click.option("--work-dir", type=click.Path(file_okay=False), help="keep converted and large sets here [a temp dir]")
@harness.device_option
def main(shards, formats, timing, work_dir, device, out_dir, **o):
    """Host feed per batch on one core, the training thread's share, the epoch boundary, opening sets."""
    from loaders.recipe.mixture import parse_shards_args

    fmts = harness.comma_list(formats, str, FORMATS, "--formats")
    if timing.small:
        o.update(batch_size=min(o["batch_size"], 128), loader_batches=min(o["loader_batches"], 10))
        o["large_size"] = min(o["large_size"], 100_000)
    o["large_format"] = o["large_format"] if o["large_format"] in fmts else fmts[0]
    shards = harness.resolve_shards(shards)
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-feed-"))
    try:
        rows = run(shards, converted(parse_shards_args(shards).sources, fmts, work), work, o, timing)
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
    settings = {"formats": fmts, **o, **timing.settings(), "work_dir": work_dir, "shards": shards}
    columns = "backend samples_per_s ms_per_batch ms_per_batch_p50 timed_batches training_thread_ms_per_batch"
    columns += " training_thread_ms_per_batch_inline loader_samples_per_s gap_ms gap_ratio rebuild_gap_ratio"
    harness.finish("feed", settings, rows, columns + " cold_open_s validation_s warm_open_s loader_open_s", out_dir)
