"""Packing: images/s and peak memory of ``shards.packing.pack.pack`` for npz->raw, npz->jpg, npz->png and
ImageFolder->jpg, each in a fresh process; a "batch" is one whole pack of the same input (one untimed, then
until >= 10 s). Inputs: the demo images, or with ``--source`` real ones (their pixels in the .npz, their own files
in the ImageFolder).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import click
import numpy as np

from bench import harness
from shards.base import host


def make_inputs(tmp: str, source: str | None, subdir: str, n: int | None, n_folder: int | None, size: int) -> dict:
    """``tmp/images.npz`` (the first ``n`` images, uncompressed: packing maps it) and ``tmp/folder`` (an ImageFolder
    of the first ``n_folder`` files: the source's own bytes, or the demo images as JPEG)."""
    from PIL import Image

    from shards.packing.demo import CLASSES, make_arrays
    from shards.packing.sources import open_source

    if source is None:
        images, labels = make_arrays(n, np.random.default_rng(0), size)
        files = [(labels[i], f"{i:06d}.jpg", None, images[i]) for i in range(n_folder)]
        names, what = CLASSES, "demo images (shards.packing.demo)"
    else:
        src = open_source(source, subdir=subdir)
        n, n_folder = min(n or len(src), len(src)), min(n_folder or len(src), len(src))
        images, files, names, what = [], [], [str(c) for c in src.classes], f"{source}:{subdir}"
        for batch in src.batches(np.arange(max(n, n_folder)), 1024):
            for pos, item in zip(batch.positions.tolist(), batch.payload):
                data = None if batch.kind == "pixels" else Path(item).read_bytes() if batch.kind == "paths" else item
                pixels = item if data is None else np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                ext = ".png" if data is None else Path(src.origin(pos)).suffix.lower() or ".png"
                images += [pixels] if pos < n else []
                files += [(int(src.labels[pos]), f"{pos:06d}{ext}", data, pixels)] if pos < n_folder else []
        images, labels = np.stack(images), np.asarray(src.labels[:n], dtype=np.int64)
    np.savez(Path(tmp) / "images.npz", image=images, label=labels)
    for label, name, data, pixels in files:
        folder = Path(tmp) / "folder" / (names[label] if label >= 0 and names else "images")
        folder.mkdir(parents=True, exist_ok=True)
        if data is None:
            Image.fromarray(pixels).save(folder / name, quality=95)
        else:
            (folder / name).write_bytes(data)
    return {"n": len(images), "n_imagefolder": len(files), "image_size": list(images.shape[1:3]), "input": what}


def pack_timed(
    backend: str, src: str, out_root: str, fmt: str, workers: int, quality: int, timing: harness.Timing
) -> dict:
    """Whole packs of ``src`` timed by the rule, each output removed after it."""
    from shards.packing.pack import PackConfig, pack

    runs, last = iter(range(10**6)), {}

    def one() -> int:
        out = Path(out_root) / f"run-{next(runs)}"
        cfg = PackConfig(out=out, name="bench", format=fmt, quality=quality, workers=workers, progress=False)
        r = pack(src, cfg)
        last.update(written=r.written, how=dict(r.how), bytes=sum(s.bytes for s in r.manifest.shards))
        shutil.rmtree(out, ignore_errors=True)
        return r.written

    row = harness.timed(one, timing)
    how = last["how"]  # shards.packing.pack counts passthrough / lossless / lossy
    return {
        "backend": backend,
        "format": fmt,
        **row,
        "images_per_pack": last["written"],
        "bytes_per_sample": round(last["bytes"] / last["written"], 1),
        "passthrough": how.get("passthrough", 0),
        "encoded": how.get("lossless", 0) + how.get("lossy", 0),
        "lossy": how.get("lossy", 0),
    }


@harness.command("pack")
@click.option("--n", type=click.IntRange(min=1000), help="images in the npz [50,000; --source: all]")
@click.option("--source", type=click.Path(exists=True), help="real images (anything `shards pack` reads)")
@click.option("--subdir", default="", help="folder inside --source, e.g. cifar10/train")
@harness.timing_options(warmup=1, min_batches=1, noun="packs")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="encoding processes (0 = one per core)")
@click.option("--size", type=int, default=32, show_default=True, help="demo image side")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality")
def main(n, source, subdir, timing, workers, size, quality, out_dir):
    """Packing speed and memory of `shards pack` per input kind and format (the ImageFolder capped at 10,000 files
    with --quick)."""
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        n = n or (None if source else 50_000)
        n_folder = min(n or 10**9, 10_000) if timing.small else n
        inputs = harness.in_fresh_process(make_inputs, tmp, source, subdir, n, n_folder, size)
        npz, folder, out = (os.path.join(tmp, x) for x in ("images.npz", "folder", "out"))
        common = dict(out_root=out, workers=workers, quality=quality, timing=timing)
        grid = [("npz->raw", npz, "raw"), ("npz->jpg", npz, "jpg"), ("npz->png", npz, "png")]
        grid += [("imagefolder->jpg", folder, "jpg")]
        rows = harness.run_cases(
            harness.Case(b, pack_timed, dict(backend=b, src=s, fmt=f, **common)) for b, s, f in grid
        )
    hh, ww = inputs["image_size"]
    settings = {**inputs, "workers": workers or host.cores(), "input_mb": round(inputs["n"] * hh * ww * 3 / 2**20, 1)}
    settings.update(quality=quality, **timing.settings())
    columns = "backend samples_per_s timed_batches seconds peak_pss_mb bytes_per_sample passthrough"
    harness.finish("pack", settings, rows, columns, out_dir)
