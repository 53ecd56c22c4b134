"""Scale: how planning and the loader behave as the epoch grows and as sources are added — and one real
1.5M-sample epoch.

    python -m bench.scale                      # demo data, 50k / 500k / 1.5M planned samples, 1/2/4/8 sources
    python -m bench.scale --quick              # the same sizes, lower timing minimums (a smoke run)
    python -m bench.scale --shards data/cifar10-train:10 --shards data/edm:1 --plan-only
    python -m bench.scale --full --shards data/cifar10-train:10 \\
        --generated ../shared/data/edm-cifar10-50k-png.tar.gz --work-dir /tmp/scale-full

Two axes, one row each in the results (``axis`` = ``epoch_size`` or ``sources``):

Epoch size (``--sizes``, default 50k, 500k, 1.5M planned samples). The first ``--shards`` source is the
real set (weight ``w``, 10 in the paper), the second the generated set. For a target of ``N`` samples
the real set keeps weight ``min(w, N // R)`` (``R`` real images; a target below ``R`` takes a random
``N``-subset via a fractional weight) and the generated source is a *stand-in* of ``N − w·R`` samples:
a shard directory whose manifest lists the generated set's tars (symbolic links) as many times as
needed, the last copy cut to a prefix by its index. So the 1M generated images of the paper's 1.5M
epoch are the 50k generated images repeated 20 times under the same keys; the bytes read are the same
files again (page cache). ``--full`` measures the real thing instead (below).

Number of sources (``--sources``, default 1, 2, 4, 8) at a fixed planned size (``--sources-size``):
``n`` stand-in sources of ``N / n`` samples each, weight 1, repeating the ``--shards`` sets in turn.

For every configuration: planning time of ``loaders.sampler.plan_epoch`` (mean over ≥ 50 plans) and its
memory (``tracemalloc`` peak, which counts numpy's buffers), then the real ``loaders.loader.TrainLoader``
built and run in a fresh process (so its memory is its own), timed by ``bench.common.timed`` (warm-up,
then ≥ 50 batches and ≥ 10 s): two-view samples/s, peak PSS of the loader's process tree, start-up time.

``--full`` (bench name ``scale-full``): one whole 1.5M-sample epoch of CIFAR-10 ×10 + 1M *distinct*
generated images ×1 through ``TrainLoader``. The 1M images are built once into ``--work-dir`` (reused while
its recipe matches) from the ``--generated`` images (a shard set, or anything ``shards pack`` reads, e.g.
the EDM archive) by cheap per-copy transformations — horizontal/vertical flips × the 6 channel
permutations × small cyclic shifts, a different one per copy — packed as raw pixels (about 5.6 GB for 1M
32×32 images in 100 shards). Reported: samples/s over the epoch, open time (manifests, indexes, plan and
pipeline to the first batch), the exact multiplicity of every key (every real key 10×, every generated key
1×), peak PSS of the process (and how much of it is the memory-mapped shards' page cache) and peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click
import numpy as np

from bench.common import (
    MIN_BATCHES,
    MIN_SECONDS,
    PssSampler,
    default_workers,
    in_fresh_process,
    out_dir_option,
    pick_device,
    print_table,
    run_in_workdir,
    time_train_loader,
    timed,
    timing_settings,
    write_results,
)
from shards.manifest import Manifest, ShardError, ShardInfo


@dataclass(frozen=True)
class ScaleConfig:
    sizes: tuple[int, ...] = (50_000, 500_000, 1_500_000)
    sources: tuple[int, ...] = (1, 2, 4, 8)
    sources_size: int = 500_000
    batch_size: int = 256
    warmup: int = 10
    min_batches: int = 50
    min_seconds: float = 10.0
    max_batches: int | None = None
    workers: int = 2  # DALI threads
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
    manifest = replace(
        first,
        name=name,
        count=count,
        shards=tuple(shards),
        label_counts={},
        command=f"bench.scale stand-in of {', '.join(map(str, bases))} ({copy} pass(es))",
        standin=", ".join(map(str, bases)),  # repeated tars and keys, prefix-cut indexes: allowed for a stand-in
    )
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
                raise ShardError(
                    f"--sizes {n}: exceeds {real_weight:g} × {real_count} real samples and no generated "
                    "set was given; add a second --shards DIR"
                )
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
def measure_plan(counts, weights, seed: int, min_plans: int = MIN_BATCHES) -> dict:
    """Planning one epoch: mean time over ``min_plans`` plans (epochs 1, 2, …) after one warm-up plan, and
    memory of one more (tracemalloc peak, which includes numpy buffers)."""
    from loaders.sampler import plan_epoch

    epochs = iter(range(1, 10**9))
    row = timed(
        lambda: len(plan_epoch(counts, weights, seed, next(epochs))),
        warmup=1,
        min_batches=min_plans,
        min_seconds=0.0,
        memory=False,
    )
    tracemalloc.start()
    plan = plan_epoch(counts, weights, seed, 0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "plan_s": round(row["seconds"] / row["timed_batches"], 4),
        "plans_timed": row["timed_batches"],
        "plan_mb": round(peak / 2**20, 2),
        "plan_len": len(plan),
        "plan_array_mb": round((plan.source.nbytes + plan.index.nbytes) / 2**20, 2),
    }


def measure_loader(shards: list[str], cfg: ScaleConfig) -> dict:
    """`bench.common.time_train_loader` in a fresh process (``cfg.isolate``), so each configuration's memory
    is its own."""
    args = (shards, cfg.aug, cfg.batch_size)
    kwargs = dict(
        device=cfg.device,
        warmup=cfg.warmup,
        min_batches=cfg.min_batches,
        min_seconds=cfg.min_seconds,
        max_batches=cfg.max_batches,
        seed=cfg.seed,
        num_threads=cfg.workers,
    )
    return in_fresh_process(time_train_loader, *args, **kwargs) if cfg.isolate else time_train_loader(*args, **kwargs)


def run_point(point: Point, cfg: ScaleConfig, backend: str) -> dict:
    row = {
        "backend": backend,
        "axis": point.axis,
        "planned_samples": point.planned_samples,
        "sources": len(point.parts),
        "weights": point.weights,
        "source_counts": point.counts,
    }
    row.update(measure_plan(point.counts, point.weights, cfg.seed, min(cfg.min_batches, MIN_BATCHES)))
    if cfg.plan_only:
        row.update(samples_per_s=None, peak_pss_mb=None)
    else:
        row.update(measure_loader([f"{d}:{w:g}" for d, _, w in point.parts], cfg))
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
        click.echo(
            f"  {point.axis} {point.planned_samples:,} × {r['sources']} source(s): plan {r['plan_s']:.3f}s "
            f"{r['plan_mb']:.1f} MiB, loader {r.get('samples_per_s') or '-'} samples/s",
            err=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# --full: 1M distinct generated images, one whole 1.5M-sample epoch
# ---------------------------------------------------------------------------------------------------
VARIANTS_VERSION = "flip x channel-permutation x cyclic-shift, v1"
_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_FLIPS = ("none", "h", "v", "hv")


def variants(k: int) -> list[tuple[str, tuple[int, int, int], tuple[int, int]]]:
    """The first ``k`` (flip, channel permutation, (dy, dx) shift) triples, the identity first: the 24
    flip × permutation pairs without a shift, then the same with shifts of growing size."""
    shifts = [(0, 0)] + sorted(
        {(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)} - {(0, 0)},
        key=lambda s: (max(abs(s[0]), abs(s[1])), s),
    )
    out = [(f, p, s) for s in shifts for f in _FLIPS for p in _PERMS]
    if k > len(out):
        raise ShardError(
            f"--generated-count needs {k} transformed copies of each image, more than the {len(out)} "
            "distinct variants; give more source images or a smaller --generated-count"
        )
    return out[:k]


def transform(images: np.ndarray, variant) -> np.ndarray:
    """One variant applied to a batch (N, H, W, 3) of uint8 images."""
    flip, perm, (dy, dx) = variant
    out = images
    if "h" in flip:
        out = out[:, :, ::-1]
    if "v" in flip:
        out = out[:, ::-1]
    out = out[..., list(perm)]
    if dy or dx:
        out = np.roll(out, (dy, dx), axis=(1, 2))
    return np.ascontiguousarray(out)


def load_images(path: Path) -> tuple[list[str], np.ndarray]:
    """(keys, uint8 images N×H×W×3) of a shard set directory, or of anything ``shards pack`` reads."""
    import io

    from PIL import Image

    def decode(data) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    if (path / "manifest.json").is_file():
        from bench.formats import iter_samples

        manifest = Manifest.load(path)
        keys, images = [], []
        for key, data, _, _ in iter_samples(path):
            keys.append(key)
            if manifest.format == "raw":
                images.append(np.frombuffer(data, np.uint8).reshape(*manifest.image_size, 3))
            else:
                images.append(decode(data))
    else:
        from shards.sources import open_source

        src = open_source(path)
        keys, images = [f"{i:06d}" for i in range(len(src))], [None] * len(src)
        for batch in src.batches(np.arange(len(src)), 1024):
            for pos, item in zip(
                batch.positions.tolist(), batch.payload if batch.kind != "pixels" else list(batch.payload)
            ):
                if batch.kind == "pixels":
                    images[pos] = item
                elif batch.kind == "paths":
                    images[pos] = decode(Path(item).read_bytes())
                else:
                    images[pos] = decode(item)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ShardError(f"{path}: images of {len(shapes)} different sizes; the generated set needs one size")
    return keys, np.stack(images)


def _recipe(source: Path, count: int, shard_size: int) -> dict:
    files = sorted(source.rglob("*")) if source.is_dir() else [source]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(
                f"{f.relative_to(source) if source.is_dir() else f.name} {st.st_size} {int(st.st_mtime)}\n".encode()
            )
    return {
        "source": str(source.resolve()),
        "source_fingerprint": h.hexdigest(),
        "count": count,
        "shard_size": shard_size,
        "variants": VARIANTS_VERSION,
        "format": "raw",
    }


def valid_generated(out: Path, recipe: dict) -> bool:
    """The set in ``out`` was built by this recipe and is complete (manifest, recipe, every tar at its size)."""
    try:
        if json.loads((out / "recipe.json").read_text()) != recipe:
            return False
        manifest = Manifest.load(out)
    except (OSError, ValueError, ShardError):
        return False
    return manifest.count == recipe["count"] and all(
        (out / s.file).is_file() and (out / s.file).stat().st_size == s.bytes and (out / s.index).is_file()
        for s in manifest.shards
    )


def build_generated(source: Path, out: Path, count: int, shard_size: int = 10_000, log=print) -> tuple[Manifest, float]:
    """The ``count``-image generated set in ``out`` (built from ``source`` unless a valid one is there);
    returns (its manifest, seconds spent building: 0 when reused)."""
    from shards.writer import ShardSetWriter

    recipe = _recipe(source, count, shard_size)
    if valid_generated(out, recipe):
        log(f"reusing the {count:,}-image generated set in {out}")
        return Manifest.load(out), 0.0
    t0 = time.perf_counter()
    keys, images = load_images(source)
    n, (h, w) = len(images), images.shape[1:3]
    per_sample = 3 * 512 + (-(-h * w * 3 // 512)) * 512 + 2 * 512  # headers + raw + cls + json blocks
    need = count * per_sample
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < need * 1.05:
        raise ShardError(
            f"{out.parent}: {free / 2**30:.1f} GiB free, the {count:,}-image set needs about "
            f"{need / 2**30:.1f} GiB; free some space or give another --work-dir"
        )
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"building {count:,} generated images ({n:,} sources × {math.ceil(count / n)} variants, raw, "
        f"~{need / 2**30:.1f} GiB) in {out}"
    )
    writer = ShardSetWriter(
        tmp,
        "generated",
        kind="generated",
        format="raw",
        shard_size=shard_size,
        command=f"bench.scale --full from {source} ({VARIANTS_VERSION})",
    )
    try:
        written = 0
        for j, var in enumerate(variants(math.ceil(count / n))):
            batch = transform(images, var)
            desc = f"{var[0]} rgb{''.join(map(str, var[1]))} shift{var[2][0]:+d}{var[2][1]:+d}"
            for i in range(min(n, count - written)):
                writer.add(f"{keys[i]}_v{j:03d}", batch[i].tobytes(), -1, f"{keys[i]} {desc}", size=(h, w))
            written += min(n, count - written)
        manifest = writer.close()
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return manifest, time.perf_counter() - t0


def run_full_epoch(shards: list[str], aug: str, batch_size: int, num_threads: int, device: str, seed: int) -> dict:
    """One whole epoch of the mixture through ``TrainLoader``: samples/s, open time, the multiplicity of
    every key, memory. Meant to run in a fresh process."""
    from bench.common import device_sync
    from loaders.augment import preset
    from loaders.loader import TrainLoader
    from loaders.mixture import parse_shards_args

    sync = device_sync(device)
    with PssSampler(interval=1.0) as mem:
        t0 = time.perf_counter()
        mixture = parse_shards_args(shards)
        loader = TrainLoader(
            mixture, preset(aug), batch_size, seed=seed, device=device, num_threads=num_threads, drop_last=False
        )
        built = time.perf_counter() - t0
        planned = loader.samples_per_epoch
        source = np.empty(planned, np.int64)
        index = np.empty(planned, np.int64)
        n = batches = 0
        t_first = None
        for batch in loader.epoch(0, 0):
            k = len(batch)
            source[n : n + k] = batch.source.cpu().numpy()
            index[n : n + k] = batch.index.cpu().numpy()
            n += k
            batches += 1
            if t_first is None:
                sync()
                t_first = time.perf_counter()
                first = n
        sync()
        t_end = time.perf_counter()
    multiplicity, exact = {}, True
    for s, src in enumerate(mixture.sources):
        seen = np.bincount(index[:n][source[:n] == s], minlength=src.count)
        hist = np.bincount(seen)
        multiplicity[src.name] = {f"{times}x": int(keys) for times, keys in enumerate(hist) if keys}
        exact &= bool(np.all(seen == src.weight))
    seconds = t_end - t_first
    return {
        "samples": n,
        "planned": planned,
        "batches": batches,
        "warmup_batches": 1,
        "timed_batches": batches - 1,
        "timed_samples": n - first,
        "seconds": round(seconds, 2),
        "samples_per_s": round((n - first) / seconds, 1) if seconds > 0 else None,
        "epoch_s": round(t_end - t0, 2),
        "open_s": round(t_first - t0, 2),
        "loader_build_s": round(built, 2),
        "key_multiplicity": multiplicity,
        "multiplicities_exact": exact,
        "meets_minimum": batches - 1 >= MIN_BATCHES or seconds >= MIN_SECONDS,
        "stopped": "exhausted",
        **mem.row(),
    }


def full_scale(real: str, generated: Path, work_dir: Path, count: int, cfg: ScaleConfig) -> dict:
    from loaders.mixture import parse_shards_args

    gen_dir = work_dir / f"generated-{count}"
    manifest, build_s = build_generated(generated, gen_dir, count, log=lambda m: click.echo(m, err=True))
    shards = [real, f"{gen_dir}:1"]
    mixture = parse_shards_args(shards)
    click.echo(f"one epoch of {int(mixture.expected_epoch_size):,} samples ...", err=True)
    args = (shards, cfg.aug, cfg.batch_size, cfg.workers, cfg.device, cfg.seed)
    row = in_fresh_process(run_full_epoch, *args) if cfg.isolate else run_full_epoch(*args)
    backend = "dali-gpu" if cfg.device.startswith("cuda") else "dali-cpu"
    return {
        "backend": backend,
        "axis": "epoch_size",
        "variant": f"{manifest.count:,} distinct generated",
        "planned_samples": row["planned"],
        "sources": 2,
        "weights": mixture.weights,
        "source_counts": mixture.counts,
        "generated_set": str(gen_dir),
        "generated_bytes": sum(s.bytes for s in manifest.shards),
        "generated_shards": len(manifest.shards),
        "generated_reused": build_s == 0.0,
        "build_s": round(build_s, 3),
        **row,
    }


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(x)) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated integers such as 50000,500000,1500000") from None
    if not values or min(values) <= 0:
        raise click.BadParameter(f"{text!r}: every value must be positive")
    return values


@click.command("scale")
@click.option(
    "--shards",
    "shards",
    multiple=True,
    metavar="DIR[:W]",
    help="Real then generated shard set (default: the demo mixture real:10 generated:1).",
)
@click.option("--sizes", default="50000,500000,1500000", show_default=True, help="Planned samples per epoch.")
@click.option("--sources", "ns", default="1,2,4,8", show_default=True, help="Numbers of sources to try.")
@click.option(
    "--sources-size", type=int, default=None, help="Planned samples for the sources axis [500000; --quick 50000]."
)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="DALI threads [the cores available].")
@click.option("--warmup", type=click.IntRange(0), default=None, help="Untimed batches first [10; --quick 2].")
@click.option("--min-batches", type=click.IntRange(1), default=None, help="Timed batches at least [50; --quick 5].")
@click.option("--min-seconds", type=float, default=None, help="Timed seconds at least [10; --quick 1].")
@click.option("--max-batches", type=click.IntRange(1), default=None, help="Timed batches at most.")
@click.option("--aug", default="simclr-adainf", show_default=True, help="Augmentation preset.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda (DALI GPU backend).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plan-only", is_flag=True, help="Only planning time and memory; no loader.")
@click.option("--quick", is_flag=True, help="Lower timing minimums (marked quick in the JSON): a smoke run.")
@click.option("--full", is_flag=True, help="One whole epoch of the first --shards set + 1M distinct generated images.")
@click.option(
    "--generated",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="--full: the images the 1M are made from (a shard set, or an archive/folder `shards pack` reads) "
    "[the second --shards set].",
)
@click.option(
    "--generated-count",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="--full: distinct generated images to build.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="--full: where the generated set is built once and reused [~/.cache/adainf-bench/scale-full].",
)
@click.option("--no-isolate", is_flag=True, help="Run loaders in this process (memory figures then accumulate).")
@out_dir_option
def main(
    shards,
    sizes,
    ns,
    sources_size,
    batch_size,
    workers,
    warmup,
    min_batches,
    min_seconds,
    max_batches,
    aug,
    device,
    seed,
    plan_only,
    quick,
    full,
    generated,
    generated_count,
    work_dir,
    no_isolate,
    out_dir,
):
    """How loader samples/s, planning time and memory change with epoch size and number of sources."""
    timing = timing_settings(quick, warmup, min_batches, min_seconds)
    cfg = ScaleConfig(
        sizes=_ints(sizes),
        sources=_ints(ns),
        sources_size=sources_size or (50_000 if quick else 500_000),
        batch_size=batch_size,
        warmup=timing["warmup"],
        min_batches=timing["min_batches"],
        min_seconds=timing["min_seconds"],
        max_batches=max_batches,
        workers=workers or default_workers(),
        aug=aug,
        device=pick_device(device),
        seed=seed,
        plan_only=plan_only,
        isolate=not no_isolate,
    )
    if full:
        from bench.common import demo_cache_dir

        if not shards:
            raise click.UsageError("--full needs --shards REAL_DIR:10 (and --generated, or a second --shards set)")
        real, gen = shards[0], generated
        if gen is None:
            if len(shards) < 2:
                raise click.UsageError(
                    "--full needs --generated PATH or a second --shards set to make the 1M images from"
                )
            gen = Path(shards[1].rsplit(":", 1)[0] if ":" in shards[1] else shards[1])
        work = work_dir or demo_cache_dir().parent / "scale-full"
        try:
            rows = [full_scale(real, Path(gen), work, generated_count, cfg)]
        except ShardError as e:
            raise click.ClickException(str(e)) from None
        r = rows[0]
        print_table(
            rows,
            [
                "backend",
                "planned_samples",
                "samples_per_s",
                "epoch_s",
                "open_s",
                "multiplicities_exact",
                "peak_pss_mb",
                "peak_pss_file_mb",
                "peak_rss_sum_mb",
            ],
        )
        print(f"key multiplicity: {r['key_multiplicity']}")
        settings = {
            **asdict(cfg),
            "shards": [real],
            "generated": str(gen),
            "generated_count": generated_count,
            "work_dir": str(work),
            "variants": VARIANTS_VERSION,
            "quick": False,
        }
        path = write_results("scale-full", settings, rows, out_dir)
        click.echo(f"wrote {path}", err=True)
        return
    rows, shards = run_in_workdir("bench-scale-", shards, run, cfg)
    print_table(
        rows,
        [
            "backend",
            "axis",
            "planned_samples",
            "sources",
            "plan_s",
            "plan_mb",
            "samples_per_s",
            "peak_pss_mb",
            "startup_s",
            "timed_batches",
            "seconds",
        ],
    )
    settings = {
        **asdict(cfg),
        "shards": shards,
        "quick": timing["quick"],
        "standin": "generated set repeated under one manifest (symlinked tars, prefix-cut index)",
    }
    path = write_results("scale", settings, rows, out_dir)
    click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
