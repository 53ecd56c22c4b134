"""Loader only: two-view samples/s and memory of this project's loader against the release's recipe (a PyTorch
DataLoader with PIL + torchvision) and webdataset, same mixture, recipe, batch size and workers.

The suite: ``dali-cpu`` / ``dali-gpu`` (``TrainLoader.batches()``, the colour stage eager and compiled), then a
batch-size sweep of train.py's loader on this device, then ``reference`` and ``webdataset``; and the
time to plan a 1.5M-sample epoch. How the baselines are configured: bench/README.md ("Loader").
"""

from __future__ import annotations

import io
import random

import click
import numpy as np

from bench import harness
from shards.base.host import resolve_device

BACKENDS = ("dali-cpu", "dali-gpu", "reference", "webdataset")
COLOUR = ("eager", "compiled")


# ---------------------------------------------------------------------------------------------------
# The release's recipe: PIL + torchvision per view
# ---------------------------------------------------------------------------------------------------
def torchvision_transform(view):
    """One view of the recipe as torchvision transforms (the knobs of ``loaders.recipe.augment.ViewAug``)."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    ops = [T.RandomResizedCrop(view.size, scale=view.crop_scale, ratio=view.crop_ratio, interpolation=bicubic)]
    if view.jitter_p > 0:
        jitter = T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)
        ops.append(T.RandomApply([jitter], p=view.jitter_p))
    if view.gray_p > 0:
        ops.append(T.RandomGrayscale(p=view.gray_p))
    if view.blur_p > 0:
        ops.append(T.RandomApply([PILBlur(view.blur_sigma)], p=view.blur_p))  # solo-learn's PIL blur
    if view.solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=view.solarize_p))
    return T.Compose([*ops, T.RandomHorizontalFlip(view.flip_p), T.ToTensor(), T.Normalize(view.mean, view.std)])


class PILBlur:
    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, img):
        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class ArrayDataset:
    """The release's dataset: decoded uint8 images in RAM, PIL + torchvision per view."""

    def __init__(self, images, labels, transforms):
        self.images, self.labels, self.transforms = images, labels, transforms

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return [t(img) for t in self.transforms], int(self.labels[i])


class ViewsAndLabel:
    """(image, label) -> (view 1, view 2, …, label): one tensor per column, so ``.batched()`` stacks each view."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, sample):
        img, label = sample
        return (*[t(img) for t in self.transforms], int(label))


def decoded_arrays(mixture):
    """Every sample of every source decoded once into one uint8 array (what the release keeps in RAM);
    returns (images, labels, offset of each source's first sample)."""
    sets = [harness.read_images(s.path) for s in mixture.sources]
    offsets = np.cumsum([0] + [len(r) for r, *_ in sets[:-1]])
    images = np.stack([im for *_, ims, _ in sets for im in ims])
    return images, np.concatenate([lab for *_, lab in sets]), offsets


def reference_loader(mixture, aug, batch_size: int, workers: int, device: str):
    """The release's recipe in a DataLoader configured as PyTorch documents: default collation, ``workers``
    persistent workers, pinned memory only for a GPU; its sampler is the exact weighted epoch the DALI loader
    reads. Returns (DataLoader, number of decoded images)."""
    import torch

    from loaders.batch.sampler import plan_epoch

    images, labels, offsets = decoded_arrays(mixture)
    plan = plan_epoch(mixture.counts, mixture.weights, 0, 0)
    order = (offsets[plan.source] + plan.index).tolist()
    ds = ArrayDataset(images, labels, [torchvision_transform(v) for v in aug.views])
    cuda, keep = device.startswith("cuda"), workers > 0
    dl = torch.utils.data.DataLoader(
        ds, batch_size, sampler=order, num_workers=workers, drop_last=True, persistent_workers=keep, pin_memory=cuda
    )
    return dl, len(images)


def webdataset_urls(mixture) -> list[str]:
    """Each source's tars ``round(weight)`` times: resampled shards drawn from it mix the sources like the plan."""
    copies = [(s, max(int(round(s.weight)), 1) if s.weight > 0 else 0) for s in mixture.sources]
    return [str(s.path / sh.file) for s, k in copies for _ in range(k) for sh in s.manifest.shards]


def _npy_to_pil(data):
    from PIL import Image

    return Image.fromarray(np.load(io.BytesIO(data), allow_pickle=False))


def webdataset_loader(mixture, aug, batch_size: int, workers: int, device: str, rebatch: int = 1000):
    """webdataset as its README, ``train-resnet50-wds`` example and FAQ recommend for training (bench/README.md):
    resampled shards, ``.shuffle(1000)``, PIL decoding, batches made in the workers, the cross-worker reshuffle."""
    import webdataset as wds

    ds = (
        wds.WebDataset(webdataset_urls(mixture), resampled=True, shardshuffle=False)
        .shuffle(1000)
        .decode(wds.handle_extension("npy", _npy_to_pil), "pil")
        .to_tuple("jpg;png;npy", "cls")
        .map(ViewsAndLabel([torchvision_transform(v) for v in aug.views]))
        .batched(batch_size, partial=False)
    )
    cuda = device.startswith("cuda")
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda)
    return loader.unbatched().shuffle(rebatch).batched(batch_size) if rebatch else loader


def time_baseline(backend, shards, aug: str, batch_size, workers, device, timing: harness.Timing) -> dict:
    """``reference`` or ``webdataset`` timed by the rule; on a GPU each batch is copied to it (pinned,
    non-blocking) as a training loop would."""
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    mixture, recipe = parse_shards_args(shards), preset(aug)
    if backend == "reference":
        dl, decoded = reference_loader(mixture, recipe, batch_size, workers, device)
        extra = {"decoded_images": decoded}
        source = (b for _ in iter(int, 1) for b in dl)  # epoch after epoch
    else:
        source = iter(webdataset_loader(mixture, recipe, batch_size, workers, device))
        extra = {"shard_urls": len(webdataset_urls(mixture)), "cross_worker_shuffle": 1000}
    n = len(recipe.views)

    def run_one() -> int:
        batch = next(source)
        if device.startswith("cuda"):
            [v.to(device, non_blocking=True) for v in batch[:n]]
        return len(batch[-1])

    row = harness.timed(run_one, timing, sync=harness.device_sync(device))
    getattr(source, "close", lambda: None)()  # the workers stop now, not at interpreter exit
    return {**row, **extra}


def measure_plan(counts, weights, seed: int = 0, min_plans: int = 50) -> tuple[dict, dict]:
    """Planning one epoch: (its figures — mean time over ``min_plans`` plans after one, tracemalloc peak of one
    more, which counts numpy's buffers, and the plan's own arrays —, the timed row)."""
    import tracemalloc

    from loaders.batch.sampler import plan_epoch

    epochs = iter(range(1, 10**9))
    row = harness.timed(
        lambda: len(plan_epoch(counts, weights, seed, next(epochs))), harness.Timing(1, min_plans, 0.0), memory=False
    )
    tracemalloc.start()
    plan = plan_epoch(counts, weights, seed, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "plan_s": round(row["seconds"] / row["timed_batches"], 4),
        "plans_timed": row["timed_batches"],
        "plan_mb": round(peak / 2**20, 2),
        "plan_len": len(plan),
        "plan_array_mb": round((plan.source.nbytes + plan.index.nbytes) / 2**20, 2),
    }, row


# ---------------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------------
def cases(names, colours, sizes, shards, preset, workers, device, timing):
    """The grid: DALI rows x colour stages at the first batch size, train.py's loader on this device (its DALI
    pipeline and colour stage) at the sweep's sizes, then the baselines."""
    cuda = device.startswith("cuda")

    def dali(name, batch_size, compile):
        label = name + ("-compiled" if compile or (compile is None and cuda) else "")
        kwargs = dict(shards=shards, aug=preset, batch_size=batch_size, timing=timing, device=device)
        kwargs.update(loader_device=name[5:], num_threads=workers, compile=compile)
        colour = "compiled" if label.endswith("compiled") else "eager"
        return harness.Case(
            f"{label} batch {batch_size}",
            harness.time_loader,
            kwargs,
            {"backend": label, "colour": colour, "batch_size": batch_size},
        )

    dalis = [n for n in names if n.startswith("dali") and (cuda or n == "dali-cpu")]
    yield from (dali(n, sizes[0], c == "compiled") for n in dalis for c in colours)
    default = "dali-gpu" if cuda else "dali-cpu"  # what train.py runs on this device, with its colour stage
    yield from (dali(default, bs, None) for bs in sizes[1:] if default in dalis)
    for n in (n for n in names if not n.startswith("dali")):
        kwargs = dict(backend=n, shards=shards, aug=preset, batch_size=sizes[0], workers=workers, device=device)
        yield harness.Case(
            n, time_baseline, {**kwargs, "timing": timing}, {"backend": n, "colour": None, "batch_size": sizes[0]}
        )


@harness.command("loader")
@harness.shards_option()
@harness.preset_option
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(1))
@click.option("--sweep", default="", help="more batch sizes for the DALI rows, e.g. 64,128,256,1024 (a per-batch cost)")
@harness.workers_option
@harness.device_option
@click.option("--backends", default=",".join(BACKENDS), show_default=True)
@click.option("--colour", default="eager,compiled", show_default=True, help="the DALI rows' colour stage(s)")
@harness.timing_options()
@harness.isolate_option
@click.option("--plan-only", is_flag=True, help="only time planning a 1.5M-sample epoch")
@click.option("--no-save", is_flag=True, help="write no JSON")
def main(shards, preset, batch_size, sweep, workers, device, backends, colour, timing, isolate, plan_only, **o):
    """Two-view samples/s and peak PSS of each loading backend."""
    from loaders.recipe.augment import preset as recipe

    names = harness.comma_list(backends, str, BACKENDS, "--backends")
    colours = harness.comma_list(colour, str, COLOUR, "--colour")
    sizes = list(dict.fromkeys([batch_size, *(harness.comma_list(sweep, int, flag="--sweep") if sweep else [])]))
    device, workers = resolve_device(device), harness.workers_or_cores(workers)
    plan, row = measure_plan([50_000, 1_000_000], [10, 1], min_plans=timing.min_batches)
    rows = [{"backend": "plan_epoch", "planned_samples": 1_500_000, **row, **plan}]
    if "dali-gpu" in names and not device.startswith("cuda") and not plan_only:
        why = f"--device {device}: no GPU here, so DALI's GPU pipeline cannot run"
        print(f"dali-gpu: skipped ({why})")
        rows.append({"backend": "dali-gpu", "samples_per_s": None, "skipped": why})
    if not plan_only:
        shards = harness.resolve_shards(shards)
        grid = cases(names, colours, sizes, shards, preset, workers, device, timing)
        fields = {"device": device, "views": len(recipe(preset).views), "workers": workers}
        rows += [{**r, **fields} for r in harness.run_cases(grid, isolate)]
    ref = next((r["samples_per_s"] for r in rows if r["backend"] == "reference"), None)
    for r in rows[1:]:
        r["vs_reference"] = round(r["samples_per_s"] / ref, 2) if ref and r.get("samples_per_s") else None
    settings = {"shards": list(shards), "preset": preset, "batch_size": batch_size, "sweep": sizes[1:]}
    settings.update(workers=workers, device=device, colour=colours, isolate=isolate, **timing.settings())
    print(f"workers/threads per backend: {workers}, batch {batch_size}, preset {preset}, device {device}")
    columns = "backend samples_per_s peak_pss_mb vs_reference batch_size dali_operators startup_s timed_batches seconds"
    harness.finish("loader", settings, rows, columns, o["out_dir"], save=not o["no_save"])
