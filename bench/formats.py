"""Formats: the same images as JPEG, PNG and raw pixels, through the same loader.

    python -m bench.formats --quick                       # demo images
    python -m bench.formats --shards shards/cifar10-train --limit 20000 --device cuda

Takes the first ``--shards`` set (default: the demo real set), decodes up to ``--limit`` of its images
once and writes three shard sets of exactly those images with ``shards.writer.ShardSetWriter``:

* ``jpg`` — the original bytes when the source is JPEG (no second lossy pass), else quality ``--jpeg-quality``,
* ``png`` — lossless, PIL's default compression,
* ``raw`` — H·W·3 uint8 pixels (no decoding at all in the loader).

Each set is then read by the real ``loaders.loader.TrainLoader`` (weight 1, the given augmentation), one
format after the other in the same run, each in a fresh process (``bench.common.in_fresh_process``: its
memory figure is its own), timed by ``bench.common.timed`` (warm-up, then ≥ 50 batches and ≥ 10 s, epoch
after epoch if the set is small). On the GPU the DALI ``mixed`` decoder decodes JPEG with nvJPEG while PNG
stays on the CPU, so the ranking may differ by device.
"""

from __future__ import annotations

import io
import json
import mmap
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from bench.common import (
    default_workers,
    in_fresh_process,
    out_dir_option,
    pick_device,
    print_table,
    run_in_workdir,
    time_train_loader,
    timing_kwargs,
    timing_settings,
    write_results,
)
from shards.check import npy_shape
from shards.index import read_index
from shards.manifest import FORMATS, Manifest, ShardError
from shards.writer import ShardSetWriter


@dataclass(frozen=True)
class FormatsConfig:
    formats: tuple[str, ...] = FORMATS
    limit: int | None = None
    batch_size: int = 256
    warmup: int = 10
    min_batches: int = 50
    min_seconds: float = 10.0
    workers: int = 2  # DALI threads
    isolate: bool = True  # each format's loader in a fresh process
    aug: str = "simclr-adainf"
    device: str = "cpu"
    seed: int = 0
    jpeg_quality: int = 95
    shard_size: int = 10_000


def iter_samples(directory: Path, limit: int | None = None):
    """(key, image bytes, label, origin) of a shard set, in shard order, via its DALI index files."""
    manifest = Manifest.load(directory)
    ext = manifest.ext  # npy for raw sets since manifest version 2: the pixels follow the .npy header
    seen = 0
    for info in manifest.shards:
        index = read_index(directory / info.index)
        if ext not in index.offsets:
            raise ShardError(f"{directory / info.index}: no .{ext} members although the manifest says format {ext}")
        with open(directory / info.file, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for i, key in enumerate(index.keys):
                if limit is not None and seen >= limit:
                    return
                image = bytes(_member(mm, index, ext, i))
                if ext == "npy":
                    image = image[npy_shape(image)[0] :]
                label = int(_member(mm, index, "cls", i) or b"-1")
                meta = _member(mm, index, "json", i)
                origin = str(json.loads(meta).get("origin", "")) if meta else ""
                seen += 1
                yield str(key), image, label, origin


def _member(mm, index, ext: str, i: int) -> bytes | None:
    if ext not in index.offsets or index.offsets[ext][i] < 0:
        return None
    off, size = int(index.offsets[ext][i]), int(index.sizes[ext][i])
    return mm[off : off + size]


def encode(pixels: np.ndarray, fmt: str, jpeg_quality: int) -> bytes:
    from PIL import Image

    if fmt == "raw":
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(pixels).save(buf, format="JPEG", quality=jpeg_quality)
    else:
        Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def convert(source: Path, out: Path, cfg: FormatsConfig) -> dict[str, Manifest]:
    """Write the images of ``source`` once per format into ``out/<format>``; return the manifests."""
    from PIL import Image

    src = Manifest.load(source)
    writers = {
        fmt: ShardSetWriter(
            out / fmt,
            f"{src.name}-{fmt}",
            kind=src.kind,
            format=fmt,
            split=src.split,
            shard_size=cfg.shard_size,
            classes=src.classes,
            command=f"bench.formats from {source}",
        )
        for fmt in cfg.formats
    }
    try:
        for key, image, label, origin in iter_samples(source, cfg.limit):
            if src.format == "raw":
                h, w = src.image_size
                pixels = np.frombuffer(image, dtype=np.uint8).reshape(h, w, 3)
            else:
                pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
            for fmt, writer in writers.items():
                data = image if fmt == src.format else encode(pixels, fmt, cfg.jpeg_quality)
                writer.add(key, data, label, origin, size=pixels.shape[:2])
        return {fmt: writer.close() for fmt, writer in writers.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


def run(shards: list[str], cfg: FormatsConfig, work: Path) -> list[dict]:
    from loaders.mixture import parse_shards_args

    source = Path(parse_shards_args(shards[:1]).sources[0].path)
    manifests = convert(source, work, cfg)
    backend = "dali-gpu" if cfg.device.startswith("cuda") else "dali-cpu"
    rows = []
    for fmt, manifest in manifests.items():
        size_mb = sum(s.bytes for s in manifest.shards) / 2**20
        row = {
            "backend": backend,
            "format": fmt,
            "images": manifest.count,
            "shard_mb": round(size_mb, 2),
            "bytes_per_image": round(size_mb * 2**20 / max(manifest.count, 1), 1),
        }
        args = ([f"{work / fmt}:1"], cfg.aug, cfg.batch_size)
        kwargs = dict(
            device=cfg.device,
            seed=cfg.seed,
            num_threads=cfg.workers,
            warmup=cfg.warmup,
            min_batches=cfg.min_batches,
            min_seconds=cfg.min_seconds,
        )
        row.update(
            in_fresh_process(time_train_loader, *args, **kwargs) if cfg.isolate else time_train_loader(*args, **kwargs)
        )
        click.echo(f"  {fmt}: {row['samples_per_s']} samples/s", err=True)
        rows.append(row)
    return rows


@click.command("formats")
@click.option(
    "--shards",
    "shards",
    multiple=True,
    metavar="DIR[:W]",
    help="The shard set whose images are converted (first one only; default: the demo real set).",
)
@click.option("--formats", "formats", default=",".join(FORMATS), show_default=True, help="Formats to compare.")
@click.option("--limit", type=int, default=None, help="Images to convert [all; --quick 2048].")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="DALI threads [the cores available].")
@click.option("--warmup", type=click.IntRange(0), default=None, help="Untimed batches first [10; --quick 2].")
@click.option("--min-batches", type=click.IntRange(1), default=None, help="Timed batches at least [50; --quick 5].")
@click.option("--min-seconds", type=float, default=None, help="Timed seconds at least [10; --quick 1].")
@click.option("--isolate/--no-isolate", default=True, show_default=True, help="Each format in a fresh process.")
@click.option("--aug", default="simclr-adainf", show_default=True, help="Augmentation preset.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="2,048 images, lower timing minimums (marked quick in the JSON).")
@out_dir_option
def main(
    shards,
    formats,
    limit,
    batch_size,
    workers,
    warmup,
    min_batches,
    min_seconds,
    isolate,
    aug,
    device,
    jpeg_quality,
    seed,
    quick,
    out_dir,
):
    """Loader samples/s on jpg vs png vs raw shards of the same images."""
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise click.BadParameter(f"{formats!r}: choose from {', '.join(FORMATS)}", param_hint="--formats")
    if quick:
        limit = 2048 if limit is None else limit
    timing = timing_settings(quick, warmup, min_batches, min_seconds)
    cfg = FormatsConfig(
        formats=fmts,
        limit=limit,
        batch_size=batch_size,
        aug=aug,
        device=pick_device(device),
        seed=seed,
        jpeg_quality=jpeg_quality,
        workers=workers or default_workers(),
        isolate=isolate,
        **timing_kwargs(timing),
    )
    rows, shards = run_in_workdir("bench-formats-", shards, run, cfg)
    print_table(
        rows,
        ["backend", "format", "images", "bytes_per_image", "samples_per_s", "peak_pss_mb", "timed_batches", "seconds"],
    )
    path = write_results("formats", {**asdict(cfg), "shards": shards[:1], "quick": timing["quick"]}, rows, out_dir)
    click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
