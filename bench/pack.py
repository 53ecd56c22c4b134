"""Packing throughput: images/s and peak memory of ``shards pack`` for npz->raw, npz->jpg, npz->png and
ImageFolder->jpg, through the real ``shards.pack.pack`` code path.

    python -m bench.pack                                   # demo images: 50,000 32×32, also as 50,000 JPEG files
    python -m bench.pack --source ../shared/data/cifar10-jpg.tar.gz --subdir cifar10/train   # real images
    python -m bench.pack --quick                           # a smoke run (ImageFolder: 10,000 files, ≥ 1 s)

Inputs: the demo images (``shards.demo``: shapes with noise, compress like natural 32×32 images), or with
``--source`` real images (anything ``shards pack`` reads): their decoded pixels become the ``.npz`` and their
original files the ImageFolder tree (so JPEG inputs to ``--format jpg`` are passed through, not re-encoded).
Inputs are made in a child process. Every backend then runs in a fresh process
(``bench.common.in_fresh_process``): one untimed pack (warm-up: page cache, imports), then packs of the same
input until ≥ 10 s have passed (``bench.common.timed``, one "batch" = one whole pack). Memory is the peak PSS
of that process and its encoding workers (``bench.common.PssSampler``), to compare with the input array's size.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from bench.common import (
    MIN_SECONDS,
    QUICK_MIN_SECONDS,
    in_fresh_process,
    out_dir_option,
    print_table,
    timed,
    write_results,
)


def _make_demo_inputs(tmp: str, n: int, n_folder: int, size: int) -> dict:
    import numpy as np
    from PIL import Image

    from shards.demo import CLASSES, make_arrays

    images, labels = make_arrays(n, np.random.default_rng(0), size)
    np.savez(Path(tmp) / "images.npz", image=images, label=labels)  # uncompressed: packing memory-maps it
    for i in range(n_folder):
        d = Path(tmp) / "folder" / CLASSES[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i:06d}.jpg", quality=95)
    return {"n": n, "n_imagefolder": n_folder, "image_size": [size, size], "input": "demo images (shards.demo)"}


def _make_real_inputs(tmp: str, source: str, subdir: str, n: int | None, n_folder: int | None) -> dict:
    """The source's images decoded into images.npz (first ``n``) and its original files copied into an
    ImageFolder tree (first ``n_folder``), both in source order."""
    import io

    import numpy as np
    from PIL import Image

    from shards.sources import open_source

    src = open_source(source, subdir=subdir)
    total = len(src)
    n = min(n or total, total)
    n_folder = min(n_folder or total, total)
    images = []
    names = [f"{c}" for c in src.classes] or ["images"]
    for batch in src.batches(np.arange(max(n, n_folder)), 1024):
        for pos, item in zip(batch.positions.tolist(), batch.payload):
            if batch.kind == "pixels":
                pixels, data, ext = item, None, ".png"
            else:
                data = Path(item).read_bytes() if batch.kind == "paths" else item
                pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                ext = Path(src.origin(pos)).suffix.lower() or ".png"
            if pos < n:
                images.append(pixels)
            if pos < n_folder:
                label = int(src.labels[pos])
                d = Path(tmp) / "folder" / (names[label] if label >= 0 and src.classes else "images")
                d.mkdir(parents=True, exist_ok=True)
                if data is None:
                    Image.fromarray(pixels).save(d / f"{pos:06d}{ext}")
                else:
                    (d / f"{pos:06d}{ext}").write_bytes(data)
    arr = np.stack(images)
    np.savez(Path(tmp) / "images.npz", image=arr, label=np.asarray(src.labels[:n], dtype=np.int64))
    return {"n": n, "n_imagefolder": n_folder, "image_size": list(arr.shape[1:3]), "input": f"{source}:{subdir}"}


def pack_timed(
    backend: str, src: str, out_root: str, fmt: str, workers: int, quality: int, shard_size: int, min_seconds: float
) -> dict:
    """Pack ``src`` once untimed, then again until ``min_seconds`` have passed; each output removed after."""
    from shards.pack import PackConfig, pack

    runs = iter(range(10**6))
    last = {}

    def run_one() -> int:
        out = Path(out_root) / f"run-{next(runs)}"
        r = pack(
            src,
            PackConfig(
                out=out,
                name="bench",
                format=fmt,
                quality=quality,
                shard_size=shard_size,
                workers=workers,
                progress=False,
            ),
        )
        last.update(written=r.written, how=dict(r.how), bytes=sum(s.bytes for s in r.manifest.shards))
        shutil.rmtree(out, ignore_errors=True)
        return r.written

    row = timed(run_one, warmup=1, min_batches=1, min_seconds=min_seconds)
    return {
        "backend": backend,
        "format": fmt,
        **row,
        "images_per_pack": last["written"],
        "bytes_per_sample": round(last["bytes"] / last["written"], 1),
        "passthrough": last["how"].get("passthrough", 0),  # shards.pack counts passthrough / lossless / lossy
        "encoded": last["how"].get("lossless", 0) + last["how"].get("lossy", 0),
        "lossy": last["how"].get("lossy", 0),
    }


@click.command()
@click.option("--n", type=click.IntRange(min=1000), default=None, help="Images in the npz [50,000; --source: all].")
@click.option(
    "--source",
    type=click.Path(exists=True),
    default=None,
    help="Real images to pack (anything `shards pack` reads) instead of demo images.",
)
@click.option("--subdir", default="", help="Folder inside --source, e.g. cifar10/train.")
@click.option(
    "--quick",
    is_flag=True,
    help="ImageFolder capped at 10,000 files, ≥ 1 s timed per path (marked quick "
    "in the JSON); default: every file, ≥ 10 s.",
)
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Encoding processes (0 = one per core).")
@click.option("--size", type=int, default=32, show_default=True, help="Demo image side.")
@click.option(
    "--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality when encoding."
)
@out_dir_option
def main(n, source, subdir, quick, workers, size, quality, out_dir):
    """Packing speed and memory of `shards pack` per input kind and format."""
    from shards.manifest import ShardError

    shard_size = 10000
    min_seconds = QUICK_MIN_SECONDS if quick else MIN_SECONDS
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        try:
            if source:
                n_folder = min(n or 10**9, 10000) if quick else n
                inputs = in_fresh_process(_make_real_inputs, tmp, source, subdir, n, n_folder)
            else:
                n = n or 50000
                inputs = in_fresh_process(_make_demo_inputs, tmp, n, min(n, 10000) if quick else n, size)
            npz = os.path.join(tmp, "images.npz")
            runs = [
                ("npz->raw", npz, "raw"),
                ("npz->jpg", npz, "jpg"),
                ("npz->png", npz, "png"),
                ("imagefolder->jpg", os.path.join(tmp, "folder"), "jpg"),
            ]
            results = []
            for backend, src, fmt in runs:
                row = in_fresh_process(
                    pack_timed, backend, src, os.path.join(tmp, "out"), fmt, workers, quality, shard_size, min_seconds
                )
                results.append(row)
                print(f"{backend}: {row['samples_per_s']:,.0f} images/s", file=sys.stderr)
        except ShardError as e:
            raise click.ClickException(str(e)) from None
    h, w = inputs["image_size"]
    settings = {
        **inputs,
        "workers": workers or os.cpu_count(),
        "input_mb": round(inputs["n"] * h * w * 3 / 2**20, 1),
        "shard_size": shard_size,
        "quality": quality,
        "min_seconds": min_seconds,
        "quick": quick,
    }
    print_table(
        results,
        ["backend", "samples_per_s", "timed_batches", "seconds", "peak_pss_mb", "bytes_per_sample", "passthrough"],
    )
    print(f"input array: {settings['input_mb']} MB")
    print(f"wrote {write_results('pack', settings, results, out_dir)}")


if __name__ == "__main__":
    main()
