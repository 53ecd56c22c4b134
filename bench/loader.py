"""Two-view augmentation throughput: DALI (this project) vs the reference recipe vs webdataset.

    python -m bench.loader --shards DIR[:W] ... [--quick] [--workers N] [--batch-size 256] [--device auto]

Backends, all producing two augmented views per sample of the same mixture (the same weights), with the
same recipe (``--preset``) and the same number of workers / threads (``--workers``, default: the cores
this process may use):

* ``dali-cpu`` — ``loaders.loader.TrainLoader`` on the CPU backend (``num_threads=workers``);
* ``dali-gpu`` — the same on ``cuda`` when the device is a GPU;
* ``reference`` — what the AdaInf release does: every image decoded once into one uint8 array in RAM,
  then a PyTorch ``DataLoader`` (``num_workers=workers``) with PIL + torchvision transforms, fed the
  same exact weighted epoch order (``loaders.sampler.plan_epoch``) as DALI;
* ``webdataset`` — ``webdataset.WebDataset`` over the same tars + ``WebLoader`` + the same torchvision
  transforms, configured as webdataset's documentation recommends (see :func:`bench_webdataset`).

Each backend runs in a fresh process (``bench.common.in_fresh_process``) and is timed by
``bench.common.timed`` (warm-up, then ≥ 50 batches and ≥ 10 s); memory is the peak PSS of that process
and its children (the DataLoader workers), sampled during the run (``bench.common.PssSampler``). On a GPU
the reference and webdataset batches are copied to the device (pinned memory, non-blocking), as a
training loop would, so every backend ends with views on the device.

The ``plan_epoch`` row times planning a 1.5M-sample epoch (50k real × 10 + 1M generated).
"""

from __future__ import annotations

from functools import partial

import click
import numpy as np

from bench.common import (
    default_workers,
    device_sync,
    in_fresh_process,
    out_dir_option,
    pick_device,
    print_table,
    resolve_shards,
    time_train_loader,
    timed,
    timing_kwargs,
    timing_settings,
    write_results,
)

BACKENDS = ("dali-cpu", "dali-gpu", "reference", "webdataset")


def torchvision_transform(view):
    """The reference recipe for one view (same knobs as loaders.augment.ViewAug)."""
    from torchvision import transforms as T

    ops = [
        T.RandomResizedCrop(
            view.size, scale=view.crop_scale, ratio=view.crop_ratio, interpolation=T.InterpolationMode.BICUBIC
        )
    ]
    if view.jitter_p > 0:
        ops.append(
            T.RandomApply([T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)], p=view.jitter_p)
        )
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
    """The release's dataset: decoded uint8 images in RAM, PIL + torchvision per view."""

    def __init__(self, images, labels, transforms):
        self.images, self.labels, self.transforms = images, labels, transforms

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return [t(img) for t in self.transforms], int(self.labels[i])


class _Order:
    """A DataLoader sampler that yields a fixed index order (the exact weighted epoch plan)."""

    def __init__(self, order: np.ndarray):
        self.order = order

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        return iter(self.order.tolist())


class _ViewsAndLabel:
    """(image, label) -> (view 1, view 2, ..., label): one tensor per column, so ``.batched()`` stacks each
    view into one (B, 3, H, W) tensor inside the worker (a list of views per sample would stay a Python
    list of 2·B small tensors, each sent to the main process separately)."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, sample):
        img, label = sample
        return (*[t(img) for t in self.transforms], int(label))


def _raw_to_pil(shape, data):
    """A raw shard member (H·W·3 uint8 bytes) as a PIL image (webdataset has no decoder for ``.raw``)."""
    from PIL import Image

    return Image.frombuffer("RGB", (shape[1], shape[0]), data, "raw", "RGB", 0, 1)


def _npy_to_pil(data):
    """A ``.npy`` shard member (one H×W×3 uint8 array) as a PIL image, for the torchvision transforms."""
    import io

    from PIL import Image

    return Image.fromarray(np.load(io.BytesIO(data), allow_pickle=False))


def _load_arrays(mixture):
    """Every sample of every source decoded once into one uint8 array (what the release keeps in RAM);
    returns (images, labels, offset of each source's first sample)."""
    import io

    from PIL import Image

    from loaders.reader import SourceReader

    images, labels, offsets = [], [], [0]
    for s in mixture.sources:
        r = SourceReader(s.path, s.manifest)
        data, lab, _ = r.read(np.arange(len(r)))
        for d in data:
            if r.format == "raw":
                images.append(np.asarray(d).reshape(r.raw_shape))
            else:
                images.append(np.asarray(Image.open(io.BytesIO(d.tobytes())).convert("RGB")))
        labels.append(lab)
        offsets.append(offsets[-1] + len(r))
    return np.stack(images), np.concatenate(labels), np.array(offsets[:-1], dtype=np.int64)


def _to_device(views, device: str):
    return [v.to(device, non_blocking=True) for v in views] if device.startswith("cuda") else views


COLOUR = ("eager", "compiled")


def bench_dali(shards, preset_name, device, batch_size, workers, timing, colour="eager") -> dict:
    return time_train_loader(
        shards, preset_name, batch_size, device=device, num_threads=workers, compile=colour == "compiled", **timing
    )


def reference_loader(mixture, aug, batch_size: int, workers: int, device: str):
    """The AdaInf release's recipe, configured as PyTorch's DataLoader documentation recommends: automatic
    batching with the default collation (one (B, 3, H, W) tensor per view), ``num_workers`` worker processes
    kept alive across epochs (``persistent_workers``), ``pin_memory`` only when batches go to a GPU. The
    sampler is the exact weighted epoch of ``loaders.sampler.plan_epoch`` (what the DALI loader reads), over
    images decoded once into RAM (the release copies the real array 10 times instead; the order is the same
    multiset). Returns (DataLoader, number of decoded images)."""
    import torch

    from loaders.sampler import plan_epoch

    images, labels, offsets = _load_arrays(mixture)
    plan = plan_epoch(mixture.counts, mixture.weights, 0, 0)
    order = offsets[plan.source] + plan.index
    ds = _ArrayDataset(images, labels, [torchvision_transform(v) for v in aug.views])
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        sampler=_Order(order),
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        pin_memory=device.startswith("cuda"),
    )
    return dl, len(images)


def bench_reference(shards, preset_name, device, batch_size, workers, timing) -> dict:
    from loaders.augment import preset
    from loaders.mixture import parse_shards_args

    dl, decoded = reference_loader(parse_shards_args(shards), preset(preset_name), batch_size, workers, device)

    def batches():
        while True:
            yield from dl

    it = batches()

    def run_one() -> int:
        views, lab = next(it)
        _to_device(views, device)
        return len(lab)

    row = timed(run_one, sync=device_sync(device), **timing)
    it.close()  # shut the workers down now, not during interpreter exit
    row["decoded_images"] = int(decoded)
    return row


def webdataset_urls(mixture) -> list[str]:
    """Each source's tars ``round(weight)`` times: resampled shards drawn uniformly from this list mix the
    sources like the epoch plan, in expectation."""
    urls = []
    for s in mixture.sources:
        copies = max(int(round(s.weight)), 1) if s.weight > 0 else 0
        urls += [str(s.path / sh.file) for sh in s.manifest.shards] * copies
    return urls


def webdataset_loader(mixture, aug, batch_size: int, workers: int, device: str, rebatch: int = 1000):
    """webdataset configured as its documentation recommends for training (README "The webdataset Pipeline
    API", examples/train-resnet50-wds.ipynb, FAQ on WebLoader); yields (view 1, view 2, labels):

    * ``resampled=True``: each worker draws shards with replacement — an endless stream, no worker runs dry
      (``shardshuffle`` is then meaningless and set to False to silence its warning); the shard list is
      :func:`webdataset_urls` (10:1 for CIFAR-10 ×10 + EDM ×1);
    * ``.shuffle(1000)``: the documented sample-buffer size, applied to the encoded samples before decoding;
    * ``.decode("pil")``: the torchvision transforms of the recipe take PIL images ("rgb8"/"torchrgb"
      would only add a conversion back to PIL); raw shards get a small ``.npy`` (or, before manifest
      version 2, ``.raw``) handler;
    * ``.to_tuple("jpg;png;raw;npy", "cls")`` then ``.map`` to (view 1, view 2, label), so that
    * ``.batched(batch_size)`` in the dataset (batching inside the workers; ``WebLoader(batch_size=None)``)
      stacks each view into one tensor — transferring single samples between processes is slow;
    * ``WebLoader(num_workers=workers, persistent_workers, pin_memory only with a GPU)``; node splitting is
      left at ``single_node_only`` (one machine), worker splitting at ``split_by_worker``;
    * ``.unbatched().shuffle(rebatch).batched(batch_size)`` on the loader: the documented cross-worker
      shuffle (0 turns it off), so a batch is not drawn from one worker's few shards only.
    """
    import webdataset as wds

    raw_shapes = {tuple(s.manifest.image_size) for s in mixture.sources if s.manifest.format == "raw"}
    if len(raw_shapes) > 1:
        raise click.ClickException(f"the webdataset backend needs one raw image size, got {sorted(raw_shapes)}")
    handlers = [wds.handle_extension("raw", partial(_raw_to_pil, next(iter(raw_shapes))))] if raw_shapes else []
    handlers.append(wds.handle_extension("npy", _npy_to_pil))  # raw pixels since manifest version 2
    ds = (
        wds.WebDataset(webdataset_urls(mixture), resampled=True, shardshuffle=False)
        .shuffle(1000)
        .decode(*handlers, "pil")
        .to_tuple("jpg;png;raw;npy", "cls")
        .map(_ViewsAndLabel([torchvision_transform(v) for v in aug.views]))
        .batched(batch_size, partial=False)
    )
    loader = wds.WebLoader(
        ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0, pin_memory=device.startswith("cuda")
    )
    if rebatch:
        loader = loader.unbatched().shuffle(rebatch).batched(batch_size)
    return loader


def bench_webdataset(shards, preset_name, device, batch_size, workers, timing, rebatch: int = 1000) -> dict:
    from loaders.augment import preset
    from loaders.mixture import parse_shards_args

    mixture = parse_shards_args(shards)
    aug = preset(preset_name)
    loader = webdataset_loader(mixture, aug, batch_size, workers, device, rebatch)

    def batches():
        yield from loader

    it = batches()
    nviews = len(aug.views)

    def run_one() -> int:
        b = next(it)
        _to_device(list(b[:nviews]), device)
        return len(b[nviews])

    row = timed(run_one, sync=device_sync(device), **timing)
    it.close()  # shut the workers down now, not during interpreter exit
    row.update(shard_urls=len(webdataset_urls(mixture)), cross_worker_shuffle=rebatch)
    return row


def bench_plan(timing: dict) -> dict:
    """Planning a 1.5M-sample epoch: repeated calls of ``plan_epoch`` (mean time per plan), and its memory
    (tracemalloc peak, which counts numpy's buffers) from one separate call."""
    import tracemalloc

    from loaders.sampler import plan_epoch

    counts, weights = [50_000, 1_000_000], [10, 1]
    epoch = iter(range(10**9))
    row = timed(
        lambda: len(plan_epoch(counts, weights, 0, next(epoch))),
        warmup=1,
        min_batches=timing["min_batches"],
        min_seconds=0.0,
        memory=False,
    )
    tracemalloc.start()
    plan_epoch(counts, weights, 0, 1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    row.update(
        backend="plan_epoch",
        planned_samples=1_500_000,
        plan_s=round(row["seconds"] / row["timed_batches"], 4),
        plan_mb=round(peak / 2**20, 1),
    )
    return row


RUNNERS = {"dali-cpu": bench_dali, "dali-gpu": bench_dali, "reference": bench_reference, "webdataset": bench_webdataset}


@click.command()
@click.option("--shards", multiple=True, help="DIR[:WEIGHT] (repeatable) or mix.yaml; default: the demo mixture")
@click.option(
    "--preset",
    "preset_name",
    default="symmetric_adainf",
    show_default=True,
    help="the recipe (default: what train.py resolves for SimCLR on real + generated data, the release's AdaInf)",
)
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(1))
@click.option(
    "--sweep",
    default="",
    help="more batch sizes for the DALI rows, comma-separated (e.g. 64,128,256,1024): samples/s against batch "
    "size shows a per-batch overhead (a flat cost per batch makes small batches slow)",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(0),
    help="DataLoader workers and DALI threads, the same for every backend [the cores available]",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto | cpu | cuda: with a GPU, dali-gpu runs and every backend's views end on the GPU",
)
@click.option("--backends", default=",".join(BACKENDS), show_default=True)
@click.option(
    "--colour",
    default="eager,compiled",
    show_default=True,
    help="the DALI backends' colour stage, comma-separated: eager and/or compiled (torch.compile; its "
    "compilation is in the row's startup_s); a compiled row is named dali-cpu-compiled / dali-gpu-compiled",
)
@click.option("--warmup", type=click.IntRange(0), default=None, help="untimed batches first [10; --quick 2]")
@click.option("--min-batches", type=click.IntRange(1), default=None, help="timed batches at least [50; --quick 5]")
@click.option("--min-seconds", type=float, default=None, help="timed seconds at least [10; --quick 1]")
@click.option("--quick", is_flag=True, help="lower minimums (marked quick in the JSON): a smoke run")
@click.option(
    "--isolate/--no-isolate",
    default=True,
    show_default=True,
    help="run each backend in a fresh process (its memory figure is its own)",
)
@click.option("--plan-only", is_flag=True, help="only time the 1.5M-sample epoch plan")
@click.option("--no-save", is_flag=True, help="do not write bench/results/*.json")
@out_dir_option
def main(
    shards,
    preset_name,
    batch_size,
    sweep,
    workers,
    device,
    backends,
    colour,
    warmup,
    min_batches,
    min_seconds,
    quick,
    isolate,
    plan_only,
    no_save,
    out_dir,
):
    """Two-view samples/s and peak PSS of each loading backend."""
    from loaders.augment import preset
    from shards.manifest import ShardError

    timing = timing_settings(quick, warmup, min_batches, min_seconds)
    workers = default_workers() if workers is None else workers
    device = pick_device(device)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in RUNNERS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: choose from {', '.join(BACKENDS)}", param_hint="--backends")
    impls = [j.strip() for j in colour.split(",") if j.strip()]
    if not impls or set(impls) - set(COLOUR):
        raise click.BadParameter(f"{colour!r}: choose from {', '.join(COLOUR)}", param_hint="--colour")
    sizes = [batch_size] + [int(x) for x in sweep.split(",") if x.strip() and int(x) != batch_size]
    dali = [(n, impl) for n in names if n.startswith("dali") for impl in impls]
    # the DALI rows at --batch-size, then the sweep's sizes, then the peers at --batch-size
    runs = [(n, impl, bs) for bs in sizes for n, impl in dali]
    runs += [(n, "eager", batch_size) for n in names if not n.startswith("dali")]
    results = [bench_plan(timing)]
    if not plan_only:
        shards = resolve_shards(shards)  # the built-in demo mixture when none are given
        for name, impl, bs in runs:
            if name == "dali-gpu" and not device.startswith("cuda"):
                continue
            dev = "cpu" if name == "dali-cpu" else device
            args = (shards, preset_name, dev, bs, workers, timing_kwargs(timing))
            args += (impl,) if name.startswith("dali") else ()
            label = name if impl == "eager" else f"{name}-{impl}"
            click.echo(f"  {label} ...", err=True)
            try:
                row = in_fresh_process(RUNNERS[name], *args) if isolate else RUNNERS[name](*args)
            except ShardError as e:
                raise click.ClickException(str(e)) from None
            results.append(
                {
                    "backend": label,
                    "device": dev,
                    "colour": impl if name.startswith("dali") else None,
                    **row,
                    "views": len(preset(preset_name).views),
                    "workers": workers,
                    "batch_size": bs,
                }
            )
            click.echo(f"  {label}: {row['samples_per_s']} samples/s, peak PSS {row['peak_pss_mb']} MiB", err=True)
        ref = next((r["samples_per_s"] for r in results if r["backend"] == "reference"), None)  # at batch_size
        for r in results[1:]:
            r["vs_reference"] = round(r["samples_per_s"] / ref, 2) if ref and r["samples_per_s"] else None
    settings = {
        "shards": list(shards),
        "preset": preset_name,
        "batch_size": batch_size,
        "sweep": sizes[1:],
        "workers": workers,
        "device": device,
        "colour": impls,
        "isolate": isolate,
        **timing,
    }
    print(
        f"workers/threads per backend: {workers}, batch {batch_size}, preset {preset_name}, two views, device {device}"
    )
    print_table(
        results,
        [
            "backend",
            "samples_per_s",
            "peak_pss_mb",
            "vs_reference",
            "batch_size",
            "dali_operators",
            "startup_s",
            "timed_batches",
            "seconds",
            "warmup_batches",
        ],
    )
    if not no_save:
        print("wrote", write_results("loader", settings, results, out_dir))


if __name__ == "__main__":
    main()
