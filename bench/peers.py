"""The loaders a user would pick instead, as rows of ``python -m bench loader``: MosaicML Streaming (``mosaic``),
LitData (``litdata``) and SPDL (``spdl``).

Each is an optional extra (``pip install -e '.[peers]'``, ``make peers``: a venv of its own, ``.venv-peers``, since
mosaicml-streaming pins an older numpy); none is needed by the tests or the demo. Every peer:

* is **converted** from the same packed sets — every sample's stored bytes (the JPEG/PNG member, or the raw
  pixels), its label and its place ``(source, index)`` in the mixture, in the sets' order — into its own format
  once, cached under ``--work-dir`` (``<work-dir>/<peer>/<set name>-<manifest digest>``); the conversion time is
  reported (``conversion_s``), never timed;
* is **configured as its own docs recommend for a training loop**, with ``workers`` processes (the same core
  budget as every row), the same batch size and the same two-view recipe
  (``bench.torchvision_recipe.torchvision_transform``, PIL decoding, as the reference);
* gives the **order of one epoch** without the transform (:func:`audit_batches`): each peer decides which sample
  comes where before it reads it, so the same configuration with a transform that returns ``(source, index)``
  delivers the same order (the seeds are the same);
* is **timed by the harness's rule** (:func:`time_peer`).

``python -m bench.peers`` prints which peers are installed here, with their versions or why not.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench import harness as h

# name -> (the module it imports, the distribution it is installed as, what it is)
PEERS = {
    "mosaic": ("streaming", "mosaicml-streaming", "MosaicML Streaming: MDS shards, StreamingDataset, Stream(repeat=w)"),
    "litdata": ("litdata", "litdata", "LitData: optimize(), StreamingDataset(subsample=w), CombinedStreamingDataset"),
    "spdl": ("spdl", "spdl", "SPDL: MergeIterator source, PipelineBuilder, a process pool for the transform"),
}
INSTALL = (
    "install the peers: `make peers` (pip install -e '.[peers]' in .venv-peers), then run with .venv-peers/bin/python"
)
SEED = 0


def unavailable(name: str) -> str | None:
    """Why peer ``name`` cannot run here (not installed), or None; looks the package up without importing it."""
    module, dist, _ = PEERS[name]
    if importlib.util.find_spec(module) is None:
        return f"{dist} is not installed in {sys.prefix}: {INSTALL}"
    return None


def version(name: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(PEERS[name][1])
    return None


def peers_work_dir() -> Path:
    return h.demo_cache_dir().parent / "peers"


# ---------------------------------------------------------------------------------------------------
# Reading the packed sets, decoding what they store
# ---------------------------------------------------------------------------------------------------
def stored_samples(directory):
    """Every sample of a packed set in its order: (its stored bytes, label) through the project's reader."""
    from shards.format.manifest import Manifest
    from shards.read.reader import SourceReader

    reader = SourceReader(directory, Manifest.load(directory))
    for start in range(0, len(reader.keys), 4096):
        ids = np.arange(start, min(start + 4096, len(reader.keys)))
        data, labels, _ = reader.read(ids)
        for d, label in zip(data, labels.tolist()):
            yield bytes(np.ascontiguousarray(d).view(np.uint8)), int(label)


def set_format(directory) -> tuple[str, list[int] | None]:
    """(the member extension, the raw (H, W, 3) shape or None) of a packed set."""
    from shards.format.manifest import Manifest
    from shards.read.reader import SourceReader

    reader = SourceReader(directory, Manifest.load(directory))
    return reader.ext, (list(reader.raw_shape) if reader.raw_shape else None)


def decode(data: bytes, raw_shape):
    """A stored sample as a PIL image (PNG/JPEG bytes, an ``.npy`` member or bare raw pixels)."""
    from PIL import Image

    if data[:6] == b"\x93NUMPY":
        return Image.fromarray(np.load(io.BytesIO(data), allow_pickle=False))
    if raw_shape:
        return Image.fromarray(np.frombuffer(data, np.uint8).reshape(raw_shape))
    return Image.open(io.BytesIO(data)).convert("RGB")


class TwoViews:
    """A stored sample -> (view 1, view 2, …, label) with the recipe's torchvision transforms (picklable)."""

    def __init__(self, aug, raw_shapes):
        from bench.torchvision_recipe import torchvision_transform

        self.transforms, self.raw_shapes = [torchvision_transform(v) for v in aug.views], raw_shapes

    def __call__(self, data: bytes, label: int, source: int):
        img = decode(data, self.raw_shapes[source])
        return (*[t(img) for t in self.transforms], int(label))


# ---------------------------------------------------------------------------------------------------
# Conversion: once per set and peer, cached
# ---------------------------------------------------------------------------------------------------
def _digest(directory) -> str:
    return hashlib.sha256((Path(directory) / "manifest.json").read_bytes()).hexdigest()[:16]


def convert(name: str, mixture, work_dir) -> dict:
    """Each source of ``mixture`` in peer ``name``'s format under ``work_dir`` (kept while the set's manifest is
    the same). Returns ``{"dirs": [...], "conversion_s": seconds of the conversions done now or recorded then,
    "conversion_cached": whether every set was already there}``."""
    writer = {"mosaic": _write_mds, "litdata": _write_litdata, "spdl": _write_bytes_file}[name]
    dirs, seconds, cached = [], 0.0, True
    for s_id, source in enumerate(mixture.sources):
        out = Path(work_dir) / name / f"{source.name}-{_digest(source.path)}"
        done = out / "conversion.json"
        if not done.is_file():
            cached = False
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            t0 = time.perf_counter()
            count = writer(source.path, s_id, tmp)
            record = {"seconds": round(time.perf_counter() - t0, 3), "samples": count, "set": str(source.path)}
            (tmp / "conversion.json").write_text(json.dumps(record))
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)  # whole or not at all
        seconds += json.loads(done.read_text())["seconds"]
        dirs.append(str(out))
    return {"dirs": dirs, "conversion_s": round(seconds, 3), "conversion_cached": cached}


def _write_mds(directory, s_id: int, out: Path) -> int:
    from streaming import MDSWriter

    columns = {"data": "bytes", "label": "int", "source": "int", "index": "int"}
    n = 0
    with MDSWriter(out=str(out), columns=columns, size_limit="64mb") as writer:
        for n, (data, label) in enumerate(stored_samples(directory), 1):
            writer.write({"data": data, "label": label, "source": s_id, "index": n - 1})
    return n


def _litdata_items(chunk, directory, s_id):
    from shards.format.manifest import Manifest
    from shards.read.reader import SourceReader

    reader = SourceReader(directory, Manifest.load(directory))
    data, labels, _ = reader.read(np.arange(*chunk))
    for i, d, label in zip(range(*chunk), data, labels.tolist()):
        yield {"data": bytes(np.ascontiguousarray(d).view(np.uint8)), "label": int(label), "source": s_id, "index": i}


def _write_litdata(directory, s_id: int, out: Path) -> int:
    from litdata import optimize

    from shards.format.manifest import Manifest

    n = Manifest.load(directory).count
    chunks = [(a, min(a + 4096, n)) for a in range(0, n, 4096)]
    fn = functools.partial(_litdata_items, directory=str(directory), s_id=s_id)
    # one worker keeps the sets' order in the chunks; the optimize() call LitData's docs show, without a progress bar
    with contextlib.redirect_stdout(sys.stderr):
        optimize(fn=fn, inputs=chunks, output_dir=str(out), chunk_bytes="64MB", num_workers=1, mode="overwrite")
    return n


def _write_bytes_file(directory, s_id: int, out: Path) -> int:
    """SPDL has no storage format of its own: one file of the stored bytes, their offsets and the labels."""
    offsets, labels = [0], []
    with open(out / "data.bin", "wb") as fh:
        for data, label in stored_samples(directory):
            fh.write(data)
            offsets.append(offsets[-1] + len(data))
            labels.append(label)
    np.save(out / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    return len(labels)


# ---------------------------------------------------------------------------------------------------
# The loaders, each as its docs recommend for a training loop
# ---------------------------------------------------------------------------------------------------
class Keys:
    """The audit's "transform": a sample's place in the mixture, nothing decoded."""

    def __call__(self, data, label, source, index):
        return int(source), int(index)


class _Apply:
    """sample dict -> the recipe's views (``TwoViews``) or its place (``Keys``)."""

    def __init__(self, views: TwoViews | None):
        self.views = views

    def __call__(self, sample: dict):
        if self.views is None:
            return int(sample["source"]), int(sample["index"])
        return self.views(sample["data"], sample["label"], int(sample["source"]))


def mosaic_loader(dirs, mixture, batch_size: int, workers: int, views: TwoViews | None, device: str):
    """MosaicML Streaming as its docs show for training: the MDS sets as ``Stream`` s, each ``repeat=`` its weight
    (upsampling: 10× the real set, 1× the generated one), ``shuffle=True`` with the default ``py1e`` algorithm and
    ``batching_method="random"``, ``batch_size`` given to the dataset (it partitions by it), and its
    ``StreamingDataLoader`` with ``workers`` persistent workers, pinned memory only for a GPU."""
    from streaming import Stream, StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    class Dataset(StreamingDataset):
        def __init__(self, apply, **kw):
            super().__init__(**kw)
            self.apply = apply

        def __getitem__(self, idx):
            return self.apply(super().__getitem__(idx))

    clean_stale_shared_memory()
    streams = [Stream(local=d, repeat=float(s.weight)) for d, s in zip(dirs, mixture.sources) if s.weight > 0]
    ds = Dataset(
        _Apply(views), streams=streams, shuffle=True, shuffle_seed=SEED + 9176, batch_size=batch_size,
        batching_method="random",
    )  # fmt: skip
    cuda = device.startswith("cuda")
    return StreamingDataLoader(
        ds, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda, drop_last=True
    )


def litdata_loader(dirs, mixture, batch_size: int, workers: int, views: TwoViews | None, device: str):
    """LitData as its docs show for mixing datasets: one ``StreamingDataset(shuffle=True)`` per optimized set,
    the real set upsampled by its weight (``subsample=10``: ten passes over it per epoch), combined by
    ``CombinedStreamingDataset(iterate_over_all=True)`` (an epoch is every sample of every set, the docs' way to
    keep an epoch whole; its ``weights=`` instead stops the epoch when one set runs out), and its
    ``StreamingDataLoader`` with ``workers`` workers."""
    from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset

    sets = [
        StreamingDataset(d, shuffle=True, seed=SEED + 42, subsample=float(s.weight), transform=_Apply(views))
        for d, s in zip(dirs, mixture.sources)
        if s.weight > 0
    ]
    ds = CombinedStreamingDataset(sets, seed=SEED + 42, iterate_over_all=True)
    cuda = device.startswith("cuda")
    return StreamingDataLoader(
        ds, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda, drop_last=True
    )


class _SpdlBatch:
    """SPDL's stage (in a process pool): a batch of places -> the stored bytes read and, with ``views``, the
    views stacked (one tensor per view) and the labels; without, the places."""

    def __init__(self, dirs, views: TwoViews | None):
        self.dirs, self.views = list(dirs), views

    def __call__(self, places):
        import torch

        source = np.array([s for s, _ in places], dtype=np.int64)
        index = np.array([i for _, i in places], dtype=np.int64)
        if self.views is None:
            return source, index
        files = _bytes_files(tuple(self.dirs))
        out = []
        for s, i in zip(source.tolist(), index.tolist()):
            data, offsets, labels = files[s]
            out.append(self.views(data[offsets[i] : offsets[i + 1]].tobytes(), int(labels[i]), s))
        return (*[torch.stack(col) for col in list(zip(*out))[:-1]], torch.tensor([o[-1] for o in out]))


@functools.lru_cache(maxsize=4)
def _bytes_files(dirs: tuple[str, ...]) -> list:
    """The SPDL sets' files, opened once per worker process (the stage object is pickled with every task)."""
    return [
        (np.memmap(d / "data.bin", np.uint8, "r"), np.load(d / "offsets.npy"), np.load(d / "labels.npy"))
        for d in map(Path, dirs)
    ]


def spdl_epoch_order(mixture, epoch: int):
    """SPDL's way to mix sources: ``MergeIterator`` picking the next sample's source at random with the given
    weights. SPDL has no weighted epoch, so each source's multiset is built by hand (each sample ``w`` times,
    shuffled per epoch) and the weights are the sources' shares of the epoch; exhausted sources drop out."""
    from spdl.source.utils import MergeIterator

    rng = np.random.default_rng([SEED, epoch])
    lists, shares = [], []
    for s_id, s in enumerate(mixture.sources):
        reps = int(round(s.weight))
        if reps <= 0:
            continue
        idx = rng.permutation(np.tile(np.arange(s.count), reps))
        lists.append([(s_id, int(i)) for i in idx])
        shares.append(float(len(idx)))
    return MergeIterator(lists, weights=shares, seed=SEED + epoch)


def spdl_loader(dirs, mixture, batch_size: int, workers: int, views: TwoViews | None, device: str, epochs=None):
    """SPDL as its docs recommend for GIL-bound work (PIL + torchvision): the places batched first
    (``aggregate(batch_size, drop_last=True)``), each batch read and transformed in a ``ProcessPoolExecutor`` of
    ``workers`` processes (``concurrency=workers``, ``output_order="input"``: the merged order is kept), a sink
    buffer of 2, the pipeline's event loop on one thread. ``epochs``: None for endless epochs."""
    from concurrent.futures import ProcessPoolExecutor

    from spdl.pipeline import PipelineBuilder

    def places():
        epoch = 0
        while epochs is None or epoch < epochs:
            yield from spdl_epoch_order(mixture, epoch)
            epoch += 1

    executor = ProcessPoolExecutor(max_workers=workers) if views is not None else None
    builder = (
        PipelineBuilder()
        .add_source(places())
        .aggregate(batch_size, drop_last=True)
        .pipe(_SpdlBatch(dirs, views), concurrency=max(workers, 1), executor=executor, output_order="input")
        .add_sink(2)
    )
    return builder.build(num_threads=1), executor


# ---------------------------------------------------------------------------------------------------
# Timing and the audit's order
# ---------------------------------------------------------------------------------------------------
def _views_of(mixture, aug) -> TwoViews:
    return TwoViews(aug, [set_format(s.path)[1] for s in mixture.sources])


@contextlib.contextmanager
def _batches(name, dirs, mixture, batch_size, workers, views, device, epochs=None):
    """The peer's batches, epoch after epoch (``epochs``: how many; None: without end)."""
    if name == "spdl":
        pipeline, executor = spdl_loader(dirs, mixture, batch_size, workers, views, device, epochs)
        try:
            with pipeline.auto_stop():
                yield iter(pipeline)
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
        return
    make = mosaic_loader if name == "mosaic" else litdata_loader
    dl = make(dirs, mixture, batch_size, workers, views, device)
    gen = (b for e in (range(epochs) if epochs is not None else iter(int, 1)) for b in dl)
    try:
        yield gen
    finally:
        gen.close()
        del dl


def time_peer(name, shards, aug: str, batch_size, workers, device, timing: h.Timing, work_dir, memory=True) -> dict:
    """Peer ``name`` timed by the rule (converting the sets first, untimed); on a GPU each batch is copied to it
    (pinned, non-blocking) as a training loop would, like the reference."""
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    mixture, recipe = parse_shards_args(shards), preset(aug)
    conv = convert(name, mixture, work_dir)
    n = len(recipe.views)
    with _batches(name, conv["dirs"], mixture, batch_size, workers, _views_of(mixture, recipe), device) as source:

        def run_one() -> int:
            batch = next(source)
            if device.startswith("cuda"):
                [v.to(device, non_blocking=True) for v in batch[:n]]
            return len(batch[-1])

        row = h.timed(run_one, timing, sync=h.device_sync(device), memory=memory)
    return {**row, "peer_version": version(name), **{k: conv[k] for k in ("conversion_s", "conversion_cached")}}


def audit_batches(name, shards, batch_size, workers, device, work_dir):
    """One epoch of peer ``name``'s order as ``(source, index)`` per batch: the same configuration and seeds,
    with a transform that returns each sample's place instead of its views."""
    from loaders.recipe.mixture import parse_shards_args

    mixture = parse_shards_args(shards)
    conv = convert(name, mixture, work_dir)
    with _batches(name, conv["dirs"], mixture, batch_size, workers, None, device, epochs=1) as source:
        for batch in source:
            if isinstance(batch, dict):
                batch = (batch["source"], batch["index"])
            source_ids, index = (np.asarray(x) for x in batch[:2])
            yield source_ids, index


def main() -> None:
    for name, (_, dist, what) in PEERS.items():
        why = unavailable(name)
        print(f"{name:8} {dist} {version(name)}: {what}" if why is None else f"{name:8} not available: {why}")


if __name__ == "__main__":
    main()
