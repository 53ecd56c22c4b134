"""Two-view augmentation throughput: DALI (this project) vs the reference recipe vs webdataset.

    python -m bench.loader --shards DIR[:W] ... [--quick] [--workers 2] [--batch-size 256]

Backends, all producing two augmented views per sample with the same recipe (``--preset``) and the
same number of workers / threads:

* ``dali-cpu`` — ``loaders.pipeline.TrainLoader`` on the CPU backend (``num_threads=workers``);
* ``dali-gpu`` — the same on ``cuda`` when a GPU is visible;
* ``reference`` — what the AdaInf release does: all images decoded into one uint8 array in RAM,
  a PyTorch ``DataLoader`` (``num_workers=workers``) with PIL + torchvision transforms;
* ``webdataset`` — ``webdataset.WebDataset`` over the same tars + ``DataLoader`` + torchvision.

Peak RSS is sampled with psutil (this process plus its children) while each backend runs.
``--plan-only`` times ``plan_epoch`` on a 1.5M-sample epoch (50k real × 10 + 1M generated).
"""
from __future__ import annotations

import threading
import time

import click
import numpy as np

from bench.common import RssSampler, print_table, resolve_shards, write_results


class PeakRSS(RssSampler):
    """`RssSampler` sampled every 50 ms in a background thread (the loaders under test own the main one)."""

    def __init__(self):
        super().__init__()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(0.05):
            self.sample()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.sample()

    @property
    def mb(self) -> float:
        return self.peak_mb


def torchvision_transform(view):
    """The reference recipe for one view (same knobs as loaders.augment.ViewAug)."""
    from torchvision import transforms as T

    ops = [T.RandomResizedCrop(view.size, scale=view.crop_scale, ratio=view.crop_ratio,
                               interpolation=T.InterpolationMode.BICUBIC)]
    if view.jitter_p > 0:
        ops.append(T.RandomApply([T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)],
                                 p=view.jitter_p))
    if view.gray_p > 0:
        ops.append(T.RandomGrayscale(p=view.gray_p))
    if view.blur_p > 0:
        ops.append(T.RandomApply([_PILBlur(view.blur_sigma)], p=view.blur_p))  # solo-learn's PIL blur
    if view.solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=view.solarize_p))
    ops += [T.RandomHorizontalFlip(view.flip_p), T.ToTensor(), T.Normalize(view.mean, view.std)]
    return T.Compose(ops)


class _PILBlur:
    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, img):
        import random

        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class _ArrayDataset:
    def __init__(self, images, labels, transforms):
        self.images, self.labels, self.transforms = images, labels, transforms

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return [t(img) for t in self.transforms], int(self.labels[i])


class _TwoViews:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        return [t(img) for t in self.transforms]


def _load_arrays(mixture):
    """Every sample of the mixture decoded to one uint8 array (what the release keeps in RAM)."""
    import io

    from PIL import Image

    from loaders.reader import SourceReader

    images, labels = [], []
    for s in mixture.sources:
        r = SourceReader(s.path, s.manifest)
        data, lab, _ = r.read(np.arange(len(r)))
        for d in data:
            if r.format == "raw":
                images.append(np.asarray(d).reshape(r.raw_shape))
            else:
                images.append(np.asarray(Image.open(io.BytesIO(d.tobytes())).convert("RGB")))
        labels.append(lab)
    return np.stack(images), np.concatenate(labels)


def _drain(batches, limit: int, count) -> tuple[int, float]:
    """Consume batches until ``limit`` samples (after one warm-up batch); (samples, seconds)."""
    n, t0 = 0, None
    for b in batches:
        if t0 is None:
            t0 = time.perf_counter()
            continue
        n += count(b)
        if n >= limit:
            break
    return n, time.perf_counter() - (t0 or time.perf_counter())


def bench_dali(mixture, aug, device, batch_size, workers, limit):
    from loaders.pipeline import TrainLoader

    loader = TrainLoader(mixture, aug, batch_size, device=device, num_threads=workers, drop_last=False)

    def batches():
        e = 0
        while True:
            yield from loader.epoch(e)
            e += 1

    return _drain(batches(), limit, len)


def bench_reference(mixture, aug, batch_size, workers, limit):
    import torch

    images, labels = _load_arrays(mixture)
    ds = _ArrayDataset(images, labels, [torchvision_transform(v) for v in aug.views])
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                                     persistent_workers=workers > 0)

    def batches():
        while True:
            yield from dl

    return _drain(batches(), limit, lambda b: len(b[1]))


def bench_webdataset(mixture, aug, batch_size, workers, limit):
    import torch
    import webdataset as wds

    urls = [str(s.path / sh.file) for s in mixture.sources for sh in s.manifest.shards]
    fmt = {s.manifest.format for s in mixture.sources}
    if "raw" in fmt:
        raise click.ClickException("the webdataset backend reads jpg/png shards only")
    two = _TwoViews([torchvision_transform(v) for v in aug.views])
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node,
                         workersplitter=wds.split_by_worker, empty_check=False).repeat()
          .shuffle(1000).decode("pil").to_tuple("jpg;png", "cls").map_tuple(two, int).batched(batch_size))
    dl = wds.WebLoader(ds, batch_size=None, num_workers=workers)
    return _drain(iter(dl), limit, lambda b: len(b[1]))


def bench_plan() -> dict:
    import tracemalloc

    from loaders.sampler import plan_epoch

    plan_epoch([50_000, 1_000_000], [10, 1], 0, 0)
    tracemalloc.start()
    t = time.perf_counter()
    plan = plan_epoch([50_000, 1_000_000], [10, 1], 0, 1)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"backend": "plan_epoch", "samples": len(plan), "seconds": round(dt, 3),
            "samples_per_s": round(len(plan) / dt, 1), "peak_alloc_mb": round(peak / 2**20, 1), "peak_rss_mb": None}


@click.command()
@click.option("--shards", multiple=True, help="DIR[:WEIGHT] (repeatable) or mix.yaml; CIFAR-10 train shards")
@click.option("--preset", "preset_name", default="simclr", show_default=True)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0),
              help="DataLoader workers and DALI threads, the same for every backend")
@click.option("--samples", default=None, type=click.IntRange(1), help="samples timed per backend")
@click.option("--quick", is_flag=True, help="a run of a minute or two")
@click.option("--backends", default="dali-cpu,dali-gpu,reference,webdataset", show_default=True)
@click.option("--plan-only", is_flag=True, help="only time the 1.5M-sample epoch plan")
@click.option("--no-save", is_flag=True, help="do not write bench/results/*.json")
@click.option("--out-dir", default=None, type=click.Path(file_okay=False), help="where the JSON goes (default bench/results)")
def main(shards, preset_name, batch_size, workers, samples, quick, backends, plan_only, no_save, out_dir):
    """Two-view samples/s and peak RSS of each loading backend."""
    import torch

    from loaders.augment import preset
    from loaders.mixture import parse_shards_args
    from shards.manifest import ShardError

    results = [bench_plan()]
    if not plan_only:
        shards = resolve_shards(shards)  # the built-in demo mixture when none are given
        try:
            mixture = parse_shards_args(shards)
        except ShardError as e:
            raise click.ClickException(str(e)) from None
        aug = preset(preset_name)
        limit = samples or (4_000 if quick else 20_000)
        for name in backends.split(","):
            if name == "dali-gpu" and not torch.cuda.is_available():
                continue
            with PeakRSS() as rss:
                if name in ("dali-cpu", "dali-gpu"):
                    n, dt = bench_dali(mixture, aug, "cuda" if name == "dali-gpu" else "cpu", batch_size, workers, limit)
                elif name == "reference":
                    n, dt = bench_reference(mixture, aug, batch_size, workers, limit)
                elif name == "webdataset":
                    n, dt = bench_webdataset(mixture, aug, batch_size, workers, limit)
                else:
                    raise click.UsageError(f"unknown backend {name!r}")
            results.append({"backend": name, "samples": n, "seconds": round(dt, 2),
                            "samples_per_s": round(n / dt, 1), "peak_rss_mb": rss.mb, "views": len(aug.views),
                            "workers": workers, "batch_size": batch_size})
        ref = next((r["samples_per_s"] for r in results if r["backend"] == "reference"), None)
        for r in results[1:]:
            r["vs_reference"] = round(r["samples_per_s"] / ref, 2) if ref else None
    settings = {"shards": list(shards), "preset": preset_name, "batch_size": batch_size, "workers": workers,
                "samples": samples, "quick": quick}
    print(f"workers/threads per backend: {workers}, batch {batch_size}, preset {preset_name}, two views")
    print_table(results, ["backend", "samples", "samples_per_s", "peak_rss_mb", "vs_reference", "seconds"])
    if not no_save:
        print("wrote", write_results("loader", settings, results, out_dir))


if __name__ == "__main__":
    main()
