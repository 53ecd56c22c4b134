"""Scale: how planning and the loader behave as the epoch grows and as sources are added.

    python -m bench.scale                      # demo data, 50k / 500k / 1.5M planned samples, 1/2/4/8 sources
    python -m bench.scale --quick              # the same sizes, loader timed over a fixed number of batches
    python -m bench.scale --shards shards/cifar10-train:10 --shards shards/edm:1 --plan-only

Two axes, one row each in the results (``axis`` = ``epoch_size`` or ``sources``):

Epoch size (``--sizes``, default 50k, 500k, 1.5M planned samples). The first ``--shards`` source is the
real set (weight ``w``, 10 in the paper), the second the generated set. For a target of ``N`` samples
the real set keeps weight ``min(w, N // R)`` (``R`` real images; a target below ``R`` takes a random
``N``-subset via a fractional weight) and the generated source is a *stand-in* of ``N − w·R`` samples:
a shard directory whose manifest lists the generated set's tars (symbolic links) as many times as
needed, the last copy cut to a prefix by its index. So the 1M generated images of the paper's 1.5M
epoch are the 50k generated images repeated 20 times under the same keys; the bytes read are the same
files again (page cache), which is what a loader sees from a warm disk. With real CIFAR-10 (50k) at
weight 10: 50k = CIFAR-10 once, 500k = CIFAR-10 ×10, 1.5M = CIFAR-10 ×10 + a 1M generated stand-in.

Number of sources (``--sources``, default 1, 2, 4, 8) at a fixed planned size (``--sources-size``):
``n`` stand-in sources of ``N / n`` samples each, weight 1, repeating the ``--shards`` sets in turn.

For every configuration: planning time and memory of ``loaders.sampler.plan_epoch`` (``tracemalloc``
peak, which counts numpy's buffers), then the real ``loaders.pipeline.TrainLoader`` built and run in a
fresh process (so its memory is its own): two-view samples/s over the whole epoch, or over
``--batches`` batches with ``--quick``, the peak resident memory of the loader's process tree (DALI's
Python workers included) and the loader's start-up time.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click

from bench.common import run_in_workdir, pick_device, print_table, resolve_shards, time_train_loader, write_results
from shards.manifest import Manifest, ShardError, ShardInfo


@dataclass(frozen=True)
class ScaleConfig:
    sizes: tuple[int, ...] = (50_000, 500_000, 1_500_000)
    sources: tuple[int, ...] = (1, 2, 4, 8)
    sources_size: int = 500_000
    batch_size: int = 256
    batches: int | None = None  # None: whole epochs; else this many timed batches per configuration
    warmup: int = 5
    aug: str = "simclr-adainf"
    device: str = "cpu"
    seed: int = 0
    plan_only: bool = False
    isolate: bool = True  # run each loader in a fresh process


# ---------------------------------------------------------------------------------------------------
# Stand-in shard sets: the same tars listed again under one manifest.
# ---------------------------------------------------------------------------------------------------
def make_standin(bases: list[Path], count: int, out: Path, name: str) -> Manifest:
    """Write a shard directory ``out`` of exactly ``count`` samples repeating the shard sets ``bases``.

    Tars are symbolic links to the originals; each copy of a tar gets its own index file, and the last
    copy's index is cut to a prefix so the total is exact. The manifest takes its kind, format, size and
    classes from the first base.
    """
    if count <= 0:
        raise ShardError(f"stand-in {name}: needs a positive sample count, got {count}")
    manifests = [Manifest.load(b) for b in bases]
    first = manifests[0]
    out.mkdir(parents=True, exist_ok=True)
    shards: list[ShardInfo] = []
    labels: dict[str, int] = {}
    left, copy = count, 0
    while left > 0:
        for base, man in zip(bases, manifests):
            for info in man.shards:
                if left <= 0:
                    break
                take = min(info.count, left)
                tar = f"{name}-{len(shards):06d}.tar"
                idx = f"{name}-{len(shards):06d}.idx"
                os.symlink(os.path.abspath(base / info.file), out / tar)
                lines = (base / info.index).read_text().splitlines()
                head = lines[0].split()
                (out / idx).write_text("\n".join([f"{head[0]} {take}", *lines[1 : 1 + take]]) + "\n")
                shards.append(ShardInfo(file=tar, index=idx, count=take, sha256=info.sha256, bytes=info.bytes))
                left -= take
        copy += 1
        if copy > count:  # every base is empty
            raise ShardError(f"stand-in {name}: the shard sets {', '.join(map(str, bases))} hold no samples")
    for man in manifests:
        for k, v in man.label_counts.items():
            labels[k] = labels.get(k, 0) + v
    manifest = replace(first, name=name, count=count, shards=tuple(shards), label_counts={},
                       command=f"bench.scale stand-in of {', '.join(map(str, bases))} ({copy} pass(es))")
    manifest.save(out)
    return manifest


@dataclass(frozen=True)
class Point:
    axis: str  # "epoch_size" | "sources"
    planned_samples: int
    parts: tuple[tuple[str, int, float], ...]  # (shard dir, count, weight) per source; count of the dir as built

    @property
    def counts(self) -> list[int]:
        return [c for _, c, _ in self.parts]

    @property
    def weights(self) -> list[float]:
        return [w for _, _, w in self.parts]


def size_points(real: tuple[Path, int, float], gen: tuple[Path, int, float] | None, sizes, work: Path) -> list[Point]:
    """Epoch-size axis: real at weight min(w, N // R) plus a generated stand-in for the rest."""
    real_dir, real_count, real_weight = real
    points = []
    for n in sizes:
        weight = min(real_weight, n // real_count) if n >= real_count else n / real_count
        rest = n - int(weight * real_count)
        parts = [(str(real_dir), real_count, float(weight))]
        if rest > 0:
            if gen is None:
                raise ShardError(f"--sizes {n}: exceeds {real_weight:g} × {real_count} real samples and no generated "
                                 "set was given; add a second --shards DIR")
            standin = work / f"gen-{n}"
            make_standin([gen[0]], rest, standin, f"gen{n}")
            parts.append((str(standin), rest, 1.0))
        points.append(Point("epoch_size", n, tuple(parts)))
    return points


def source_points(bases: list[Path], ns, size: int, work: Path) -> list[Point]:
    """Sources axis: n stand-ins of size/n samples each (weight 1), repeating the given sets in turn."""
    points = []
    for n in ns:
        parts = []
        for i in range(n):
            count = size // n + (1 if i < size % n else 0)
            out = work / f"src{n}-{i}"
            make_standin([bases[i % len(bases)]], count, out, f"s{n}x{i}")
            parts.append((str(out), count, 1.0))
        points.append(Point("sources", size, tuple(parts)))
    return points


# ---------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------
def measure_plan(counts, weights, seed: int) -> dict:
    """Time and memory of planning one epoch (tracemalloc peak, which includes numpy buffers)."""
    from loaders.sampler import plan_epoch

    plan_epoch(counts[:1], weights[:1], seed, 0)  # import-time and first-call costs out of the timing
    tracemalloc.start()
    t0 = time.perf_counter()
    plan = plan_epoch(counts, weights, seed, 0)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"plan_s": round(seconds, 4), "plan_mb": round(peak / 2**20, 2), "plan_len": len(plan),
            "plan_array_mb": round((plan.source.nbytes + plan.index.nbytes) / 2**20, 2)}


def _child(shards, cfg, queue):
    try:
        queue.put(("ok", time_train_loader(shards, cfg.aug, cfg.batch_size, cfg.batches, cfg.warmup, cfg.device, cfg.seed)))
    except BaseException as e:  # reported to the parent as one line
        queue.put(("error", f"{type(e).__name__}: {e}"))


def measure_loader_isolated(shards: list[str], cfg: ScaleConfig) -> dict:
    """`bench.common.time_train_loader` in a fresh (spawned) process, so each configuration's memory is its own."""
    if not cfg.isolate:
        return time_train_loader(shards, cfg.aug, cfg.batch_size, cfg.batches, cfg.warmup, cfg.device, cfg.seed)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(shards, cfg, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise ShardError(f"loader over {' '.join(shards)}: {value}")
    return value


def run_point(point: Point, cfg: ScaleConfig, backend: str) -> dict:
    row = {"backend": backend, "axis": point.axis, "planned_samples": point.planned_samples,
           "sources": len(point.parts), "weights": point.weights, "source_counts": point.counts}
    row.update(measure_plan(point.counts, point.weights, cfg.seed))
    if cfg.plan_only:
        row.update(samples_per_s=None, peak_rss_mb=None)
    else:
        row.update(measure_loader_isolated([f"{d}:{w:g}" for d, _, w in point.parts], cfg))
    return row


def run(shards: list[str], cfg: ScaleConfig, work: Path) -> list[dict]:
    from loaders.mixture import parse_shards_args

    mixture = parse_shards_args(shards)
    srcs = [(Path(s.path), s.manifest.count, float(s.weight)) for s in mixture.sources]
    backend = "dali-gpu" if cfg.device.startswith("cuda") else "dali-cpu"
    points = size_points(srcs[0], srcs[1] if len(srcs) > 1 else None, cfg.sizes, work / "size")
    points += source_points([p for p, _, _ in srcs], cfg.sources, cfg.sources_size, work / "sources")
    rows = []
    for point in points:
        rows.append(run_point(point, cfg, backend))
        r = rows[-1]
        click.echo(f"  {point.axis} {point.planned_samples:,} × {r['sources']} source(s): plan {r['plan_s']:.3f}s "
                   f"{r['plan_mb']:.1f} MiB, loader {r.get('samples_per_s') or '-'} samples/s", err=True)
    return rows


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(x)) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated integers such as 50000,500000,1500000") from None
    if not values or min(values) <= 0:
        raise click.BadParameter(f"{text!r}: every value must be positive")
    return values


@click.command("scale")
@click.option("--shards", "shards", multiple=True, metavar="DIR[:W]",
              help="Real then generated shard set (default: the demo mixture real:10 generated:1).")
@click.option("--sizes", default="50000,500000,1500000", show_default=True, help="Planned samples per epoch.")
@click.option("--sources", "ns", default="1,2,4,8", show_default=True, help="Numbers of sources to try.")
@click.option("--sources-size", type=int, default=None, help="Planned samples for the sources axis [500000; --quick 50000].")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--batches", type=int, default=None, help="Timed batches per configuration [whole epoch; --quick 20].")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed batches first.")
@click.option("--aug", default="simclr-adainf", show_default=True, help="Augmentation preset.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda (DALI GPU backend).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plan-only", is_flag=True, help="Only planning time and memory; no loader.")
@click.option("--quick", is_flag=True, help="Minutes, not hours: fixed number of batches per size.")
@click.option("--no-isolate", is_flag=True, help="Run loaders in this process (memory figures then accumulate).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None, help="Where the JSON goes [bench/results].")
def main(shards, sizes, ns, sources_size, batch_size, batches, warmup, aug, device, seed, plan_only, quick,
         no_isolate, out_dir):
    """How loader samples/s, planning time and memory change with epoch size and number of sources."""
    if quick and batches is None:
        batches = 20
    cfg = ScaleConfig(sizes=_ints(sizes), sources=_ints(ns),
                      sources_size=sources_size or (50_000 if quick else 500_000), batch_size=batch_size,
                      batches=batches, warmup=warmup, aug=aug, device=pick_device(device), seed=seed,
                      plan_only=plan_only, isolate=not no_isolate)
    rows, shards = run_in_workdir("bench-scale-", shards, run, cfg)
    print_table(rows, ["backend", "axis", "planned_samples", "sources", "plan_s", "plan_mb", "samples_per_s",
                       "rss_tree_peak_mb", "startup_s"])
    settings = {**asdict(cfg), "shards": shards, "quick": quick,
                "standin": "generated set repeated under one manifest (symlinked tars, prefix-cut index)"}
    path = write_results("scale", settings, rows, out_dir)
    click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
