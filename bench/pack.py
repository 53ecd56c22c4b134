"""Packing throughput: images/s and peak memory of ``shards pack`` for npz->raw, npz->jpg, npz->png
and ImageFolder->jpg, through the real ``shards.pack.pack`` code path.

    python bench/pack.py                 # --quick: 50,000 images 32×32 (ImageFolder: 10,000 files)
    python bench/pack.py --n 200000 --workers 2

Inputs are demo images (``shards.demo``: shapes with noise, compress like natural 32×32 images), made
in a child process; every backend also runs in its own child, so ``peak_rss_mb`` is that pack's own
peak (main process or its largest worker), to compare with the input array's size.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, write_results  # noqa: E402


def _make_inputs(tmp: str, n: int, n_folder: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    from shards.demo import CLASSES, make_arrays

    images, labels = make_arrays(n, np.random.default_rng(0), size)
    np.savez(Path(tmp) / "images.npz", image=images, label=labels)  # uncompressed: packing memory-maps it
    for i in range(n_folder):
        d = Path(tmp) / "folder" / CLASSES[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i:06d}.jpg", quality=95)


def _run_one(backend: str, src: str, out: str, fmt: str, workers: int, queue) -> None:
    from shards.pack import PackConfig, pack

    r = pack(src, PackConfig(out=Path(out), name="bench", format=fmt, shard_size=10000, workers=workers, progress=False))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    queue.put({
        "backend": backend, "samples": r.written, "seconds": round(r.seconds, 3),
        "samples_per_s": round(r.written / r.seconds, 1), "peak_rss_mb": round(max(own, kids) / 1024, 1),
        "bytes_per_sample": round(sum(s.bytes for s in r.manifest.shards) / r.written, 1),
        "passthrough": r.how.get("passthrough", 0),
    })


@click.command()
@click.option("--n", type=click.IntRange(min=1000), default=50000, show_default=True, help="Images in the npz.")
@click.option("--quick/--full", default=True, help="--quick: ImageFolder capped at 10,000 files.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Encoding processes (0 = one per core).")
@click.option("--size", type=int, default=32, show_default=True, help="Image side.")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="Results folder (default bench/results).")
def main(n, quick, workers, size, out_dir):
    ctx = mp.get_context("fork")
    n_folder = min(n, 10000) if quick else n
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        p = ctx.Process(target=_make_inputs, args=(tmp, n, n_folder, size))
        p.start()
        p.join()
        if p.exitcode:
            raise SystemExit(f"making inputs failed (exit {p.exitcode})")
        npz = os.path.join(tmp, "images.npz")
        runs = [("npz->raw", npz, "raw"), ("npz->jpg", npz, "jpg"), ("npz->png", npz, "png"),
                ("imagefolder->jpg", os.path.join(tmp, "folder"), "jpg")]
        results = []
        for backend, src, fmt in runs:
            q = ctx.Queue()
            p = ctx.Process(target=_run_one, args=(backend, src, os.path.join(tmp, backend.replace(">", "")), fmt, workers, q))
            p.start()
            row = q.get()
            p.join()
            results.append(row)
            print(f"{backend}: {row['samples_per_s']:,.0f} images/s", file=sys.stderr)
    settings = {"n": n, "n_imagefolder": n_folder, "image_size": [size, size], "workers": workers or os.cpu_count(),
                "input_mb": round(n * size * size * 3 / 2**20, 1), "shard_size": 10000, "quality": 95}
    print_table(results, ["backend", "samples", "seconds", "samples_per_s", "peak_rss_mb", "bytes_per_sample", "passthrough"])
    print(f"input array: {settings['input_mb']} MB")
    print(f"wrote {write_results('pack', settings, results, out_dir)}")


if __name__ == "__main__":
    main()
