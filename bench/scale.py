"""Scale: planning and the loader as the epoch grows (``--sizes``) and as sources are added (``--sources``), over
stand-in sets (the given tars listed again under one manifest); ``--full``: one whole real 1.5M-sample epoch over
1M distinct generated images. How the stand-ins and the 1M images are made: bench/README.md ("Scale").
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from bench import harness
from bench.loader import measure_plan
from shards.base.errors import ShardError
from shards.base.host import resolve_device
from shards.format.manifest import Manifest, ShardInfo
from shards.read.index import format_index, is_cache_file, read_index


# ---------------------------------------------------------------------------------------------------
# Stand-in sets: the same tars listed again under one manifest
# ---------------------------------------------------------------------------------------------------
def make_standin(bases: list[Path], count: int, out: Path, name: str) -> Manifest:
    """A shard folder ``out`` of exactly ``count`` samples repeating the sets ``bases``: symbolic links to their
    tars, each copy with its own index (the last one cut to a prefix), the manifest's other fields the first's."""
    manifests = [Manifest.load(b) for b in bases]
    if count <= 0 or not any(m.count for m in manifests):
        raise ShardError(f"stand-in {name} of {count} samples: give a positive count and sets that hold samples")
    out.mkdir(parents=True, exist_ok=True)
    shards, left = [], count
    for base, info in ((b, s) for _ in itertools.count() for b, m in zip(bases, manifests) for s in m.shards):
        if left <= 0:
            break
        take, stem = min(info.count, left), f"{name}-{len(shards):06d}"
        os.symlink(os.path.abspath(base / info.file), out / f"{stem}.tar")
        idx = read_index(base / info.index)
        members = [
            [(e, int(off[i]), int(idx.sizes[e][i]), f"{key}.{e}") for e, off in idx.offsets.items() if off[i] >= 0]
            for i, key in enumerate(idx.keys[:take])
        ]
        (out / f"{stem}.idx").write_text(format_index(members))  # DALI's wds2idx format, by the packer's writer
        shards.append(ShardInfo(f"{stem}.tar", f"{stem}.idx", take, info.sha256, info.bytes))
        left -= take
    what = ", ".join(map(str, bases))
    manifest = replace(manifests[0], name=name, count=count, shards=tuple(shards), label_counts={})
    manifest = replace(manifest, command=f"bench.scale stand-in of {what}", standin=what)  # repeated tars and keys
    manifest.save(out)
    return manifest


def size_points(real, gen, sizes, work: Path) -> list[dict]:
    """Epoch-size axis: the real set ``(dir, count, weight)`` at weight min(w, N // R) (fractional below R) and a
    generated stand-in for the rest."""
    (real_dir, r, w), points = real, []
    for n in sizes:
        weight = min(w, n // r) if n >= r else n / r
        parts, rest = [(str(real_dir), r, float(weight))], n - int(weight * r)
        if rest > 0:
            if gen is None:
                raise ShardError(f"--sizes {n}: more than {w:g} × {r} real samples and no generated set to add")
            make_standin([gen[0]], rest, work / f"gen-{n}", f"gen{n}")
            parts.append((str(work / f"gen-{n}"), rest, 1.0))
        points.append({"axis": "epoch_size", "planned_samples": n, "parts": parts})
    return points


def source_points(bases: list[Path], ns, size: int, work: Path) -> list[dict]:
    """Sources axis: n stand-ins of size/n samples each (weight 1), repeating the given sets in turn."""
    points = []
    for n in ns:
        counts = [size // n + (1 if i < size % n else 0) for i in range(n)]
        for i, c in enumerate(counts):
            make_standin([bases[i % len(bases)]], c, work / f"src{n}-{i}", f"s{n}x{i}")
        parts = [(str(work / f"src{n}-{i}"), c, 1.0) for i, c in enumerate(counts)]
        points.append({"axis": "sources", "planned_samples": size, "parts": parts})
    return points


def scale_cases(points, backend: str, loader: dict, plan_only: bool, seed: int):
    """One row per point: its planning figures (here) and the loader over it (a case of its own)."""
    for p in points:
        counts, weights = [c for _, c, _ in p["parts"]], [w for _, _, w in p["parts"]]
        fields = {"backend": backend, "axis": p["axis"], "planned_samples": p["planned_samples"]}
        fields.update(sources=len(counts), weights=weights, source_counts=counts)
        fields.update(measure_plan(counts, weights, seed, min(loader["timing"].min_batches, harness.MIN_BATCHES))[0])
        shards = [f"{d}:{w:g}" for d, _, w in p["parts"]]
        label = f"{p['axis']} {p['planned_samples']:,} × {len(counts)} source(s)"
        yield harness.Case(
            label, _no_loader if plan_only else harness.time_loader, {"shards": shards, **loader}, fields
        )


def _no_loader(**_) -> dict:
    return {"samples_per_s": None, "peak_pss_mb": None}


# ---------------------------------------------------------------------------------------------------
# --full: 1M distinct generated images, one whole 1.5M-sample epoch
# ---------------------------------------------------------------------------------------------------
VARIANTS_VERSION = "flip x channel-permutation x cyclic-shift, v1"
_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def variants(k: int) -> list[tuple[str, tuple[int, int, int], tuple[int, int]]]:
    """The first ``k`` (flip, channel permutation, (dy, dx) shift) triples, the identity first: the 24 flip ×
    permutation pairs without a shift, then again with shifts of growing size."""
    ring = sorted({(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}, key=lambda s: (max(map(abs, s)), s))
    out = [(f, p, s) for s in ring for f in ("none", "h", "v", "hv") for p in _PERMS]
    if k > len(out):
        raise ShardError(
            f"--generated-count needs {k} copies of each image, more than the {len(out)} distinct "
            "variants; give more source images or a smaller --generated-count"
        )
    return out[:k]


def transform(images: np.ndarray, variant) -> np.ndarray:
    """One variant applied to a batch (N, H, W, 3) of uint8 images."""
    flip, perm, shift = variant
    out = images[:, :, ::-1] if "h" in flip else images
    out = (out[:, ::-1] if "v" in flip else out)[..., list(perm)]
    return np.ascontiguousarray(np.roll(out, shift, axis=(1, 2)) if any(shift) else out)


def load_images(path: Path) -> tuple[list[str], np.ndarray]:
    """(keys, uint8 images N×H×W×3) of a shard set (the project's reader) or of anything ``shards pack`` reads."""
    if (path / "manifest.json").is_file():
        reader, ids, _, images, _ = harness.read_images(path)
        keys = [str(k).replace("/", "-") for k in reader.keys[ids]]
    else:
        from shards.packing.sources import open_source

        src, images = open_source(path), []
        for batch in src.batches(np.arange(len(src)), 1024):
            for item in batch.payload:
                data = Path(item).read_bytes() if batch.kind == "paths" else item
                images.append(item if batch.kind == "pixels" else _decode(data))
        keys = [f"{i:06d}" for i in range(len(images))]
    if len({im.shape for im in images}) != 1:
        raise ShardError(f"{path}: images of several sizes; the generated set needs one size")
    return keys, np.stack(images)


def _decode(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def recipe_of(source: Path, count: int, shard_size: int) -> dict:
    """What a built set must match to be reused: the source's files (names, sizes, times; not the loaders' index
    caches, which opening the source writes beside its indexes), count, variants."""
    digest = hashlib.sha256()
    for f in sorted(source.rglob("*")) if source.is_dir() else [source]:
        if f.is_file() and not is_cache_file(f.name):
            digest.update(
                f"{f.relative_to(source) if source.is_dir() else f.name} {f.stat().st_size} "
                f"{int(f.stat().st_mtime)}\n".encode()
            )
    return {
        "source": str(source.resolve()),
        "source_fingerprint": digest.hexdigest(),
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
        m = Manifest.load(out)
    except (OSError, ValueError, ShardError):
        return False
    ok = [
        (out / s.file).is_file() and (out / s.file).stat().st_size == s.bytes and (out / s.index).is_file()
        for s in m.shards
    ]
    return m.count == recipe["count"] and all(ok)


def build_generated(source: Path, out: Path, count: int, shard_size: int = 10_000) -> tuple[Manifest, float]:
    """The ``count``-image generated set in ``out``, built from ``source`` unless a valid one is there; returns (its
    manifest, seconds spent building: 0 when reused)."""
    from shards.packing.writer import ShardSetWriter

    recipe = recipe_of(source, count, shard_size)
    if valid_generated(out, recipe):
        click.echo(f"reusing the {count:,}-image generated set in {out}", err=True)
        return Manifest.load(out), 0.0
    t0 = time.perf_counter()
    keys, images = load_images(source)
    n, (hh, ww) = len(images), images.shape[1:3]
    need = count * (5 * 512 + -(-hh * ww * 3 // 512) * 512)  # headers, .npy header, pixels, .cls and .json blocks
    out.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(out.parent).free < need * 1.05:
        raise ShardError(
            f"{out.parent}: too little free disk for the {count:,}-image set (about "
            f"{need / 2**30:.1f} GiB); free some space or give another --work-dir"
        )
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    click.echo(f"building {count:,} generated images ({n:,} × {math.ceil(count / n)} variants, raw) in {out}", err=True)
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
            batch, desc = transform(images, var), f"{var[0]} rgb{''.join(map(str, var[1]))} shift{var[2]}"
            for i in range(min(n, count - written)):
                writer.add(f"generated/{keys[i]}_v{j:03d}", batch[i].tobytes(), -1, f"{keys[i]} {desc}", (hh, ww))
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
    """One whole epoch through ``TrainLoader.batches()`` (its first ``steps_per_epoch`` batches, the last one
    partial): samples/s after the first batch, open time, the multiplicity of every key, memory."""
    from loaders.batch.loader import TrainLoader
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    sync = harness.device_sync(device)
    with harness.PssSampler(interval=1.0) as mem:
        t0, mixture = time.perf_counter(), parse_shards_args(shards)
        loader = TrainLoader(
            mixture, preset(aug), batch_size, seed=seed, device=device, num_threads=num_threads, drop_last=False
        )
        built, seen, n, t_first = time.perf_counter() - t0, [], 0, None
        batches = loader.batches()
        for batch in itertools.islice(batches, loader.steps_per_epoch):
            # numpy copies, not the batch's tensors: 5,860 kept tensors fragment the allocator (glibc kept ~2 MB
            # per batch: 10 GB over the epoch, `cpu2-20261202-145825-scale-full.json`); the copies stay flat
            seen.append((batch.source.cpu().numpy().copy(), batch.index.cpu().numpy().copy()))
            n += len(batch)
            if t_first is None:
                sync()
                t_first, first = time.perf_counter(), n
        batches.close()
        sync()
        t_end = time.perf_counter()
    source, index = (np.concatenate(a) for a in zip(*seen))
    multiplicity, exact = {}, True
    for s, src in enumerate(mixture.sources):
        times = np.bincount(index[source == s], minlength=src.count)
        multiplicity[src.name] = {f"{t}x": int(k) for t, k in enumerate(np.bincount(times)) if k}
        exact &= bool(np.all(times == src.weight))
    seconds = t_end - t_first
    return {
        "samples": n,
        "planned": loader.samples_per_epoch,
        "batches": len(seen),
        "warmup_batches": 1,
        "timed_batches": len(seen) - 1,
        "timed_samples": n - first,
        "seconds": round(seconds, 2),
        "samples_per_s": round((n - first) / seconds, 1) if seconds > 0 else None,
        "epoch_s": round(t_end - t0, 2),
        "open_s": round(t_first - t0, 2),
        "loader_build_s": round(built, 2),
        "key_multiplicity": multiplicity,
        "multiplicities_exact": exact,
        "stopped": "exhausted",
        "meets_minimum": len(seen) - 1 >= harness.MIN_BATCHES or seconds >= harness.MIN_SECONDS,
        **mem.row(),
    }


def full_scale(real: str, generated: Path, work: Path, count: int, o: dict) -> dict:
    from loaders.recipe.mixture import parse_shards_args

    gen = work / f"generated-{count}"
    manifest, build_s = build_generated(generated, gen, count)
    shards = [real, f"{gen}:1"]
    mixture = parse_shards_args(shards)
    click.echo(f"one epoch of {int(mixture.expected_epoch_size):,} samples ...", err=True)
    args = (shards, o["aug"], o["batch_size"], o["workers"], o["device"], o["seed"])
    row = harness.in_fresh_process(run_full_epoch, *args) if o["isolate"] else run_full_epoch(*args)
    return {
        "backend": "dali-gpu" if o["device"].startswith("cuda") else "dali-cpu",
        "axis": "epoch_size",
        "variant": f"{manifest.count:,} distinct generated",
        "planned_samples": row["planned"],
        "sources": 2,
        "weights": mixture.weights,
        "source_counts": mixture.counts,
        "generated_set": str(gen),
        "generated_bytes": sum(s.bytes for s in manifest.shards),
        "generated_shards": len(manifest.shards),
        "generated_reused": build_s == 0.0,
        "build_s": round(build_s, 3),
        **row,
    }


@harness.command("scale")
@harness.shards_option("the real then the generated set [the demo mixture real:10 generated:1]")
@click.option("--sizes", default="50000,500000,1500000", show_default=True, help="planned samples per epoch")
@click.option("--sources", "ns", default="1,2,4,8", show_default=True, help="numbers of sources")
@click.option(
    "--sources-size", type=click.IntRange(1), help="planned samples on the sources axis [500000; quick 50000]"
)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@harness.workers_option
@harness.timing_options()
@click.option("--aug", default="simclr-adainf", show_default=True, help="augmentation preset")
@harness.device_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plan-only", is_flag=True, help="only planning time and memory; no loader")
@click.option("--full", is_flag=True, help="one whole epoch of the first --shards set + 1M distinct generated images")
@click.option("--generated", type=click.Path(exists=True, path_type=Path), help="--full: the images the 1M come from")
@click.option("--generated-count", type=click.IntRange(1), default=1_000_000, show_default=True)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="--full: where the 1M are kept")
@click.option("--no-isolate", is_flag=True, help="run loaders in this process (memory figures then accumulate)")
def main(shards, sizes, ns, sources_size, workers, timing, device, plan_only, full, no_isolate, out_dir, **o):
    """How loader samples/s, planning time and memory change with epoch size and number of sources."""
    from loaders.recipe.mixture import parse_shards_args

    device, workers = resolve_device(device), harness.workers_or_cores(workers)
    cfg = {
        "sizes": harness.comma_list(sizes, _int, flag="--sizes"),
        "sources": harness.comma_list(ns, _int, flag="--sources"),
    }
    cfg.update(sources_size=sources_size or (50_000 if timing.small else 500_000), batch_size=o["batch_size"])
    cfg.update(timing.settings(), workers=workers, aug=o["aug"], device=device, seed=o["seed"])
    cfg.update(plan_only=plan_only, isolate=not no_isolate)
    backend = "dali-gpu" if device.startswith("cuda") else "dali-cpu"
    if full:
        real, gen = _full_inputs(shards, o["generated"])
        work = o["work_dir"] or harness.demo_cache_dir().parent / "scale-full"
        rows = [full_scale(real, gen, work, o["generated_count"], cfg)]
        settings = {**cfg, "shards": [real], "generated": str(gen), "generated_count": o["generated_count"]}
        settings.update(work_dir=str(work), variants=VARIANTS_VERSION, quick=False)
        columns = "backend planned_samples samples_per_s epoch_s open_s multiplicities_exact peak_pss_mb"
        harness.finish("scale-full", settings, rows, columns + " peak_pss_file_mb peak_rss_sum_mb", out_dir)
        click.echo(f"key multiplicity: {rows[0]['key_multiplicity']}")
        return
    shards = harness.resolve_shards(shards)
    srcs = [(Path(s.path), s.manifest.count, float(s.weight)) for s in parse_shards_args(shards).sources]
    loader = dict(aug=o["aug"], batch_size=o["batch_size"], timing=timing, device=device, num_threads=workers)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        points = size_points(srcs[0], srcs[1] if len(srcs) > 1 else None, cfg["sizes"], Path(tmp) / "size")
        points += source_points([p for p, _, _ in srcs], cfg["sources"], cfg["sources_size"], Path(tmp) / "sources")
        grid = scale_cases(points, backend, {**loader, "seed": o["seed"]}, plan_only, o["seed"])
        rows = harness.run_cases(grid, isolate=not (no_isolate or plan_only))
    settings = {**cfg, "shards": shards, "standin": "generated set repeated under one manifest (symlinked tars)"}
    columns = "backend axis planned_samples sources plan_s plan_mb samples_per_s peak_pss_mb startup_s timed_batches"
    harness.finish("scale", settings, rows, columns + " seconds", out_dir)


def _int(text: str) -> int:
    value = int(float(text))
    if value <= 0:
        raise ValueError(text)
    return value


def _full_inputs(shards, generated) -> tuple[str, Path]:
    """--full's real set (the first --shards) and the images the 1M come from (--generated, or the second)."""
    if not shards or (generated is None and len(shards) < 2):
        raise click.UsageError("--full needs --shards REAL_DIR:10 and --generated PATH (or a second --shards set)")
    return shards[0], Path(generated or shards[1].rsplit(":", 1)[0])
