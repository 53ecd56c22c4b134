"""Formats: the same images as JPEG, PNG and raw pixels, through the same loader on the training path.

The first ``--shards`` set's images (up to ``--limit``) are read with the project's reader, encoded with the
packer's encoder (``shards.packing.encode``: JPEG bytes passed through when the source is JPEG) and written with its
writer, once per format; each set is then timed by ``TrainLoader.batches()`` in a fresh process.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from bench import harness
from shards.base.host import resolve_device
from shards.format.manifest import Manifest
from shards.format.schema import FORMATS


def convert(source: Path, out: Path, formats=FORMATS, limit: int | None = None, quality: int = 95) -> dict:
    """The images of ``source`` written once per format into ``out/<format>`` (keys ``NAME/POSITION`` in source
    order, origin the source key); returns the manifests."""
    from shards.packing.encode import EncodeConfig, encode_array
    from shards.packing.writer import ShardSetWriter

    src = Manifest.load(source)
    reader, ids, data, images, labels = harness.read_images(source, limit)
    writers = {}
    try:
        meta = dict(kind=src.kind, split=src.split, classes=src.classes, command=f"bench.formats from {source}")
        for f in formats:
            writers[f] = ShardSetWriter(out / f, f"{src.name}-{f}", format=f, **meta)
        for i, d, pixels, label in zip(ids.tolist(), data, images, labels.tolist()):
            for f, w in writers.items():
                same = f == src.format  # the source's own bytes: no second lossy pass
                image = d.tobytes() if same else encode_array(pixels, EncodeConfig(format=f, quality=quality))
                w.add(f"{w.name}/{i:06d}", image, label, str(reader.keys[i]), size=pixels.shape[:2])
        return {f: w.close() for f, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


@harness.command("formats")
@harness.shards_option("the shard set whose images are converted (the first one) [the demo real set]")
@click.option("--formats", default=",".join(FORMATS), show_default=True)
@click.option("--limit", type=click.IntRange(1), help="images to convert [all; --quick 2048]")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@harness.workers_option
@harness.timing_options()
@harness.isolate_option
@harness.preset_option
@harness.device_option
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def main(shards, formats, limit, batch_size, workers, timing, isolate, preset, device, jpeg_quality, seed, out_dir):
    """Loader samples/s on jpg vs png vs raw shards of the same images."""
    from loaders.recipe.mixture import parse_shards_args

    fmts, device = harness.comma_list(formats, str, FORMATS, "--formats"), resolve_device(device)
    limit, workers = limit or (2048 if timing.small else None), harness.workers_or_cores(workers)
    shards = harness.resolve_shards(shards)[:1]
    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    try:
        manifests = convert(Path(parse_shards_args(shards).sources[0].path), work, fmts, limit, jpeg_quality)
        loader = dict(aug=preset, batch_size=batch_size, timing=timing, device=device, num_threads=workers, seed=seed)
        backend = "dali-gpu" if device.startswith("cuda") else "dali-cpu"
        grid = []
        for f, m in manifests.items():
            size = sum(s.bytes for s in m.shards)
            fields = {"backend": backend, "format": f, "images": m.count, "shard_mb": round(size / 2**20, 2)}
            fields["bytes_per_image"] = round(size / max(m.count, 1), 1)
            grid.append(harness.Case(f, harness.time_loader, {"shards": [f"{work / f}:1"], **loader}, fields))
        rows = harness.run_cases(grid, isolate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = {"formats": fmts, "limit": limit, "batch_size": batch_size, **timing.settings(), "workers": workers}
    settings.update(isolate=isolate, aug=preset, device=device, seed=seed, jpeg_quality=jpeg_quality, shards=shards)
    columns = "backend format images bytes_per_image samples_per_s peak_pss_mb timed_batches seconds"
    harness.finish("formats", settings, rows, columns, out_dir)
