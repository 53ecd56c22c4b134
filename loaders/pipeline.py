"""DALI training and evaluation loaders fed by the exact epoch plan.

Why an ``external_source`` and not ``fn.readers.webdataset``: DALI's webdataset reader reads tars
in order and shuffles only inside a buffer of ``initial_fill`` samples, and has no weights, so it
cannot replicate the real set 10× inside one global shuffle or keep every batch mixed. Here the
plan (``loaders.sampler``) decides every position of the epoch, and a batch-mode ``external_source``
hands DALI each batch. We drive ``Pipeline.run()`` ourselves instead of
``DALIGenericIterator(size=...)``, which drops or duplicates samples at the epoch boundary.

One pipeline for a whole run: :meth:`TrainLoader.batches` feeds positions ``(epoch, step)`` one
after the other across epochs, so there is no rebuild and no drained prefetch queue at an epoch
boundary; the next epoch's plan is computed in a background thread while the current one runs.
:meth:`TrainLoader.epoch` is the same machinery over one epoch (it raises ``StopIteration`` after
the plan's last batch, so epochs are exact: a last partial batch is a smaller batch, never lost or
padded).

The feed is the Python code on the training thread, so it is vectorised end to end (a benchmark:
``python -m bench feed``):

* the encoded bytes of a batch are gathered in one ``np.take`` of 512-byte tar blocks from every tar
  of the loader mapped back to back (``loaders.reader.Region``), giving one dense ``(B, K·512)``
  array — DALI ingests one dense array about ten times faster than a list of per-sample arrays — and
  the graph cuts each row to its length (``fn.slice``); raw pixels of one size arrive as one
  ``(B, H, W, 3)`` array;
* labels and the validity of every sample were decided once per set when it was opened (cached
  with the index, see ``loaders.reader``): a damaged sample never reaches DALI, whose decoder can
  crash the process on some corrupt JPEGs; it raises a one-line :class:`ShardError` or, with
  ``on_corrupt="skip"``, is left out of its batch and counted in :attr:`TrainLoader.stats`;
* every augmentation parameter of the batch travels in one ``(B, P)`` float32 array (each extra
  external-source output costs DALI about 60 µs per batch), which the graph slices per parameter;
* labels, source ids and sample indices never go through DALI: the feed keeps them with the step
  it fed, and the loader pairs them with DALI's outputs, which come back in feeding order.

Decoding: JPEG/PNG with ``fn.decoders.image`` (``mixed`` = nvJPEG on a GPU with libjpeg-turbo's
chroma upsampling, CPU otherwise; PNG is always decoded on the CPU); raw pixels skip the decoder. A
mixture of raw and encoded sources takes both paths per sample through a DALI conditional, decoding on
the CPU (then moving to the GPU).

Where the pipeline runs (``loader_device``) is independent of where the model runs (``device``):
``"gpu"`` runs the ``mixed`` decoder and GPU ops; ``"cpu"`` runs the CPU pipeline with
``num_threads`` threads and, for a CUDA model, copies each finished batch through pinned memory on a
side CUDA stream (the consumer's stream waits on an event, so the copy overlaps the previous step);
``"auto"`` is ``"gpu"`` exactly when the model is on CUDA.

Augmentation draws are made on the host, not by DALI's RNG: for each step the feed draws every
view's parameters (``loaders.augment.sample_view_params``) from a counter-based generator keyed by
``(seed, epoch, rank, step)``. The DALI graph has no random op and a fixed seed, so a batch is a
pure function of (seed, epoch, rank, step, data): a resumed run (``load_state_dict`` then
``batches()``, or ``epoch(e, start_step=k)``) yields the batches — samples and augmentations — the
uninterrupted run would have had next (bitwise on the CPU backend, where the tests check it; within
interpolation tolerance between the CPU and GPU pipelines, which get the same parameters).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from shards.manifest import Manifest, ShardError

from .augment import (
    CIFAR_MEAN,
    CIFAR_STD,
    AugConfig,
    augment_rng,
    augment_view,
    dali_param_arrays,
    dali_param_names,
    sample_view_params,
)
from .mixture import Mixture, Source
from .reader import BLOCK, OK, Region, SourceReader
from .sampler import EpochPlan, plan_epoch

LOADER_DEVICES = ("auto", "cpu", "gpu")


@dataclass
class Batch:
    views: list[torch.Tensor]  # each (B, 3, H, W) on the device
    labels: torch.Tensor  # int64 (B,), -1 for generated / unlabelled
    source: torch.Tensor  # int64 (B,), index into mixture.sources
    index: torch.Tensor  # int64 (B,), sample index within its source
    epoch: int = 0  # the epoch of the plan this batch comes from
    step: int = 0  # its position within that epoch (0 … steps_per_epoch − 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class LoaderStats:
    samples: int = 0
    batches: int = 0
    corrupt: int = 0  # samples skipped (on_corrupt="skip")
    corrupt_keys: list[str] = field(default_factory=list)  # the first 100 skipped keys

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "batches": self.batches,
            "corrupt": self.corrupt,
            "corrupt_keys": list(self.corrupt_keys),
        }


# ---------------------------------------------------------------------------------------------------
# Gathering batches
# ---------------------------------------------------------------------------------------------------
class _Readers:
    """The readers of a list of sources as one table of samples, and the batch gathering shared by train
    and eval. ``mode``: "raw" (every source raw, one image size: a dense HWC batch), "encoded" (no raw
    source) or "mixed"."""

    def __init__(
        self, sources: list[tuple[str, Source | None, Manifest, str]], on_corrupt: str, *, contiguous: bool = True
    ):
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt={on_corrupt!r}: use 'error' or 'skip'")
        self.on_corrupt = on_corrupt
        self.names = [name for name, *_ in sources]
        self.readers = [SourceReader(path, manifest, on_corrupt=on_corrupt) for _, _, manifest, path in sources]
        self.stats = LoaderStats()
        formats = {r.format for r in self.readers}
        shapes = {r.raw_shape for r in self.readers}
        self.mode = "raw" if formats == {"raw"} and len(shapes) == 1 else "encoded" if "raw" not in formats else "mixed"
        self.raw_shape = next(iter(shapes)) if self.mode == "raw" else None
        counts = [len(r) for r in self.readers]
        self.base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        def cat(f):
            return np.concatenate([f(r) for r in self.readers]) if self.readers else np.zeros(0)

        self.verdict = cat(lambda r: r.verdict)
        self.labels = cat(lambda r: r.labels)
        self.sizes = cat(lambda r: r.sizes)
        self._src_raw = np.array([r.format == "raw" for r in self.readers])
        self._src_hw = np.array([r.manifest.image_size or (0, 0) for r in self.readers], np.int32).reshape(-1, 2)
        self.region = None
        offsets = cat(lambda r: r.offsets)
        if contiguous and not (offsets % BLOCK).any():
            files = [f for r in self.readers for f in r.files]
            shard_base = np.concatenate([[0], np.cumsum([len(r.files) for r in self.readers])]).astype(np.int64)
            gfile = cat(lambda r: r.shard_of.astype(np.int64))
            gfile = gfile + np.repeat(shard_base[:-1], counts)
            try:
                self.region = Region(files)
            except OSError:
                self.region = None
            if self.region is not None:
                self._row0 = self.region.first_block[gfile] + offsets // BLOCK
                self._last = self.region.last_block[gfile]
                self._nblk = np.maximum(-(-self.sizes // BLOCK), 1)

    def select(self, source: np.ndarray, index: np.ndarray):
        """Global ids of the usable samples of a planned batch, the positions kept (None: all), the damaged
        ones as ``(source, index)`` arrays (empty when none) and, with ``on_corrupt="error"``, the one-line
        error naming the first of them (raised by the consumer when it reaches this batch, so every batch
        before it is delivered). With ``"skip"`` the damaged samples are counted in :attr:`stats` when
        their batch is delivered (``count_skipped``), not when it is prefetched."""
        g = self.base[source] + index
        bad = self.verdict[g] != OK
        if not bad.any():
            return g, None, _NONE_SKIPPED, None
        error = None
        if self.on_corrupt == "error":
            j = int(np.flatnonzero(bad)[0])
            error = self.readers[source[j]].describe(int(index[j]))
        keep = np.flatnonzero(~bad)
        return g[keep], keep, (source[bad], index[bad]), error

    def encode(self, g: np.ndarray, source: np.ndarray) -> list[np.ndarray]:
        """The external-source data of samples ``g`` (of sources ``source``): ``[images]`` in "raw" mode,
        else ``[blocks, meta]`` (rows of whole tar blocks, int32 per-sample [length, is_raw, H, W, 3])."""
        n, size = len(g), self.sizes[g]
        if self.region is not None:
            k = int(self._nblk[g].max())
            rows = self._row0[g][:, None] + np.arange(k)
            np.minimum(rows, self._last[g][:, None], out=rows)  # never read past a tar's end
            data = np.take(self.region.blocks, rows, axis=0).reshape(n, k * BLOCK)
        else:
            data = np.zeros((n, int(size.max())), np.uint8)
            for j, gi in enumerate(g.tolist()):
                s = int(np.searchsorted(self.base, gi, side="right")) - 1
                data[j, : size[j]] = self.readers[s].bytes_of(gi - int(self.base[s]))
        if self.mode == "raw":
            hw3 = int(np.prod(self.raw_shape))
            data = data[:, :hw3] if data.shape[1] != hw3 else data
            return [np.ascontiguousarray(data).reshape(n, *self.raw_shape)]
        meta = np.empty((n, 5), np.int32)
        meta[:, 0], meta[:, 1], meta[:, 2:4], meta[:, 4] = size, self._src_raw[source], self._src_hw[source], 3
        return [data, meta]

    def count_skipped(self, skipped: tuple[np.ndarray, np.ndarray]) -> None:
        source, index = skipped
        self.stats.corrupt += len(index)
        for s, i in zip(source.tolist(), index.tolist()):
            if len(self.stats.corrupt_keys) < 100:
                self.stats.corrupt_keys.append(f"{self.names[s]}/{self.readers[s].keys[i]}")

    def culprit(self, source: np.ndarray, index: np.ndarray) -> str:
        """One line naming the first sample of a batch that fails the host checks (DALI's decoder failed)."""
        for s, i in zip(source.tolist(), index.tolist()):
            if not self.readers[s].decodes(i):
                return self.readers[s].describe(i, "undecodable")
        files = sorted({str(self.readers[s].shard_file(i)) for s, i in zip(source.tolist(), index.tolist())})
        return f"DALI failed on a batch from {', '.join(files[:4])}; run `python -m shards verify` on these shard sets"

    def keys(self, source, index) -> list[str]:
        source, index = np.asarray(source), np.asarray(index)
        return [f"{self.names[s]}/{self.readers[s].keys[i]}" for s, i in zip(source.tolist(), index.tolist())]


_NONE_SKIPPED = (np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass
class _Fed:
    """What the feed handed DALI for one step; DALI's outputs come back in the same order."""

    epoch: int
    step: int
    steps: int  # steps of its epoch
    source: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    error: str | None = None  # a damaged sample at or before this batch (on_corrupt="error")
    skipped: tuple[np.ndarray, np.ndarray] | None = None  # damaged (source, index) skipped up to this batch


class _Feed:
    """Batch-mode external source over a sequence of positions ``(epoch, step)``; StopIteration when it ends.

    ``batch_of(epoch, step)`` returns the planned (source, index) arrays of a position and the number of
    steps of its epoch; ``params(epoch,
    step, source)``, when given, the (B, P) float32 augmentation parameters of the planned batch, drawn
    for the whole planned batch and then reduced to the samples kept, so a skipped sample never shifts
    the draws of the others. A position whose samples are all skipped is passed over.
    """

    def __init__(
        self,
        readers: _Readers,
        positions: Iterator[tuple[int, int]],
        batch_of: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
        params=None,
    ):
        self.readers, self.positions, self.batch_of, self.params = readers, positions, batch_of, params
        self.fed: collections.deque[_Fed] = collections.deque()  # handed to DALI, not yet delivered

    def __call__(self):
        pending = None  # an error of a batch with nothing left to feed: reported with the next one
        skipped = []  # damaged samples skipped since the last batch fed: counted when that one is delivered
        for epoch, step in self.positions:
            source, index, steps = self.batch_of(epoch, step)
            g, keep, bad, error = self.readers.select(source, index)
            pending = pending or error
            if len(bad[0]):
                skipped.append(bad)
            if not len(g):
                continue  # every sample of this batch was skipped (or damaged)
            if self.params is not None:
                p = self.params(epoch, step, source)
            if keep is not None:
                source, index = source[keep], index[keep]
            outs = self.readers.encode(g, source)
            if self.params is not None:
                outs.append(p if keep is None else p[keep])
            done = (
                (np.concatenate([a for a, _ in skipped]), np.concatenate([b for _, b in skipped])) if skipped else None
            )
            self.fed.append(_Fed(epoch, step, steps, source, index, self.readers.labels[g], pending, done))
            return outs
        if pending:
            raise ShardError(pending)
        raise StopIteration


def _decode(enc, meta, readers: _Readers, device: str):
    """Decoded HWC uint8 RGB images on ``device`` ("cpu" or "gpu")."""
    from nvidia.dali import fn, types

    if readers.mode == "raw":
        images = fn.reshape(enc, layout="HWC")
        return images.gpu() if device == "gpu" else images
    enc = fn.slice(enc, start=[0], shape=meta[0:1], axes=[0])  # the sample's bytes out of its tar blocks
    if readers.mode == "encoded":
        # fancy upsampling: nvJPEG upsamples chroma as libjpeg-turbo does, so both loader devices decode alike
        # (without it, on an H200, JPEG-only batches differed by 3.3 levels on average after augmentation)
        gpu = {"jpeg_fancy_upsampling": True} if device == "gpu" else {}
        return fn.decoders.image(enc, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB, **gpu)
    if fn.cast(meta[1], dtype=types.BOOL):  # raw and encoded sources in one batch: per-sample branch, on the CPU
        images = fn.reshape(enc, shape=meta[2:5], layout="HWC")
    else:
        images = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
    return images.gpu() if device == "gpu" else images


def _build(
    readers: _Readers,
    feed: _Feed,
    process,
    *,
    batch_size: int,
    loader_device: str,
    device_id: int | None,
    num_threads: int,
    seed: int,
    with_params: bool = False,
):
    """The pipeline: external source → decode → ``process(images, dali_device, params)`` (``params``: the
    packed (P,) float32 parameters of each sample, or None) → the outputs of ``process``."""
    from nvidia.dali import fn, pipeline_def

    num_outputs = (1 if readers.mode == "raw" else 2) + with_params

    @pipeline_def(enable_conditionals=True)
    def pipe():
        outs = fn.external_source(source=feed, num_outputs=num_outputs, batch=True)
        meta = outs[1] if readers.mode != "raw" else None
        images = _decode(outs[0], meta, readers, loader_device)
        return tuple(process(images, loader_device, outs[-1] if with_params else None))

    p = pipe(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if loader_device == "gpu" else None,
        seed=seed,
        prefetch_queue_depth=2,
        exec_dynamic=True,
    )
    try:
        p.build()
    except Exception as e:  # noqa: BLE001 - any start-up failure of a GPU pipeline gets the same advice
        if loader_device != "gpu" or isinstance(e, ShardError):
            raise
        raise ShardError(
            f"the GPU loader pipeline failed to start ({_first_line(e)}); run the loader on the CPU "
            f"with loader_device='cpu' (--loader-device cpu)"
        ) from None
    return p


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


_TORCH_DTYPES = {
    "DALIDataType.FLOAT": torch.float32,
    "DALIDataType.INT64": torch.int64,
    "DALIDataType.UINT8": torch.uint8,
    "DALIDataType.FLOAT16": torch.float16,
}


class _Delivery:
    """DALI outputs → PyTorch tensors on the model's device, owned by PyTorch (DALI reuses its buffers).

    ``make`` runs where ``pipe.run()`` runs (the prefetch thread): CPU outputs are copied into host
    tensors — pinned (PyTorch's caching host allocator keeps a block until its copy is done) when the
    model is on CUDA, then copied to the GPU on a side stream; GPU outputs are copied on the side stream,
    and that thread waits for those copies (device to device, microseconds) before DALI's buffers go.
    An event marks the copies; ``take`` runs on the consumer's thread and makes its current stream wait
    on that event (without blocking the host) and marks the tensors as used there for the caching
    allocator. So a batch's copy overlaps the GPU work already queued for the previous step.
    """

    def __init__(self, device: torch.device, loader_device: str):
        self.device, self.loader_device = device, loader_device
        self.gpu = device if device.type == "cuda" else torch.device("cuda", 0) if loader_device == "gpu" else None
        self.side = torch.cuda.Stream(self.gpu) if self.gpu is not None else None

    def make(self, outs: list, host: list[np.ndarray], convert=lambda t: t) -> tuple[list, list, object]:
        """(``convert`` of each dense output, host arrays as tensors, event or None) on the model's device."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self.side is None:  # CPU pipeline, CPU model
            dense = []
            for o in outs:
                t = o.as_tensor()
                dense.append(torch.empty(t.shape(), dtype=_TORCH_DTYPES[str(t.dtype)]))
                feed_ndarray(t, dense[-1])
            return [convert(t) for t in dense], [torch.from_numpy(a) for a in host], None
        with torch.cuda.device(self.gpu), torch.cuda.stream(self.side):
            dense = []
            for o in outs:
                t = o.as_tensor()
                if self.loader_device == "gpu":
                    out = torch.empty(t.shape(), dtype=_TORCH_DTYPES[str(t.dtype)], device=self.gpu)
                    feed_ndarray(t, out, cuda_stream=self.side)
                else:
                    pinned = torch.empty(t.shape(), dtype=_TORCH_DTYPES[str(t.dtype)], pin_memory=True)
                    feed_ndarray(t, pinned)
                    out = pinned.to(self.gpu, non_blocking=True)
                dense.append(convert(out))
            small = [torch.from_numpy(a).pin_memory().to(self.gpu, non_blocking=True) for a in host]
            event = self.side.record_event()
        if self.loader_device == "gpu":  # DALI may reuse its output buffers once they are released: copy first
            event.synchronize()
        if self.device.type != "cuda":  # a GPU pipeline feeding a CPU model
            event.synchronize()
            return [t.cpu() for t in dense], [t.cpu() for t in small], None
        return dense, small, event

    def take(self, dense: list[torch.Tensor], small: list[torch.Tensor], event) -> None:
        """On the consumer's thread: its current stream waits for the copies."""
        if event is None:
            return
        current = torch.cuda.current_stream(self.gpu)
        current.wait_event(event)
        for t in dense + small:
            t.record_stream(current)


class _Prefetcher:
    """Runs a generator in a background thread, ``depth`` items ahead; exceptions re-raised in order.

    The training thread then spends almost nothing per step on data: the feed (gathering, parameter
    draws), ``pipe.run()`` and the copies of the outputs run here. Most of that time is spent in numpy,
    DALI or CUDA calls, which release the GIL.
    """

    _END = object()

    def __init__(self, gen: Iterator, depth: int):
        self._gen, self._queue, self._stop = gen, queue.Queue(max(1, depth)), threading.Event()
        self._thread = threading.Thread(target=self._work, name="loader-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._gen:
                if not self._put((item, None)):
                    break
            else:
                self._put((self._END, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put((None, e))
        finally:
            self._gen.close()

    def __iter__(self):
        while True:
            item, error = self._queue.get()
            if error is not None:
                raise error
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def _resolve_loader_device(loader_device: str, device: torch.device) -> str:
    if loader_device not in LOADER_DEVICES:
        raise ValueError(f"loader_device={loader_device!r}: use one of {', '.join(LOADER_DEVICES)}")
    if loader_device == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    if loader_device == "gpu" and not torch.cuda.is_available():
        raise ShardError(
            "loader_device='gpu' requested but no GPU is visible; use loader_device='cpu' (--loader-device cpu)"
        )
    return loader_device


def _run(pipe, readers: _Readers, feed: _Feed) -> Iterator[tuple[list, _Fed]]:
    """Yield (the pipeline's outputs, what was fed for them) until the feed's StopIteration; name the shard
    when DALI fails."""
    while True:
        try:
            outs = pipe.run()
        except StopIteration:
            return
        except ShardError:
            raise
        except RuntimeError as e:
            fed = list(feed.fed)
            srcs = np.concatenate([f.source for f in fed]) if fed else np.zeros(0, int)
            idxs = np.concatenate([f.index for f in fed]) if fed else np.zeros(0, int)
            raise ShardError(readers.culprit(srcs, idxs) + f" [DALI: {_first_line(e)}]") from None
        fed = feed.fed.popleft()
        if fed.error:
            raise ShardError(fed.error)
        yield outs, fed


class _Plans:
    """Epoch plans of a loader, the next one computed in a background thread while the current one runs
    (planning a 1.5M-sample epoch takes tens of milliseconds: more than a GPU step)."""

    def __init__(self, make: Callable[[int], EpochPlan]):
        self.make = make
        self._plans: dict[int, EpochPlan | concurrent.futures.Future] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def get(self, epoch: int, ahead: bool = False) -> EpochPlan:
        p = self._plans.get(epoch)
        if p is None:
            p = self._plans[epoch] = self.make(epoch)
        elif isinstance(p, concurrent.futures.Future):
            p = self._plans[epoch] = p.result()
        if ahead and epoch + 1 not in self._plans:
            for old in [e for e in self._plans if e < epoch - 1]:  # the previous one may still be delivering
                del self._plans[old]
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="plan")
            self._plans[epoch + 1] = self._pool.submit(self.make, epoch + 1)
        return p

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ---------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------
class TrainLoader:
    """Augmented multi-view batches of a weighted mixture, planned exactly per epoch.

    ``for batch in loader.batches()`` yields batches endlessly, across epochs, from the loader's
    position (``load_state_dict``; default epoch 0, step 0), with one DALI pipeline for its whole life;
    each :class:`Batch` carries its ``epoch`` and ``step``. ``state_dict()`` is the position of the next
    batch *delivered* (not prefetched): after batch ``(e, k)`` it is ``(e, k + 1)``, or ``(e + 1, 0)``
    after an epoch's last batch. ``for batch in loader.epoch(e, start_step=k)`` yields the batches of
    epoch ``e`` from step ``k`` (with no arguments: from the loaded position to the end of its epoch).

    ``device`` is the model's device (where batches are delivered); ``loader_device`` where the DALI
    pipeline runs: "auto" (the GPU when ``device`` is CUDA), "cpu" or "gpu". ``prefetch_batches``: how
    many batches a background thread keeps ready (the feed, ``pipe.run()`` and the copies run there, off
    the training thread); 0 runs them on the calling thread.
    """

    def __init__(
        self,
        mixture: Mixture,
        aug: AugConfig,
        batch_size: int,
        *,
        seed: int = 0,
        device: str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        num_threads: int = 2,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        drop_last: bool = True,
        on_corrupt: str = "error",
        loader_device: str = "auto",
        prefetch_batches: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.mixture, self.aug, self.batch_size = mixture, aug, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ShardError("device cuda requested but no GPU is visible; use device='cpu'")
        self.loader_device = _resolve_loader_device(loader_device, self.device)
        self.num_threads, self.dtype, self.channels_last, self.drop_last = num_threads, dtype, channels_last, drop_last
        self.prefetch_batches = int(prefetch_batches)
        active = list(mixture.sources)
        self._readers = _Readers([(s.name, s, s.manifest, str(s.path)) for s in active], on_corrupt)
        self._position = (0, 0)
        # image sizes per source for the crop sampler (0: unknown, crop in relative units of a square)
        self._sizes = np.array([s.manifest.image_size or (0, 0) for s in active], dtype=np.int64).reshape(-1, 2)
        self._relative = bool((self._sizes == 0).any())
        self._layout = self._param_layout()
        plan = self.plan(0)
        self.samples_per_epoch = len(plan)
        self.steps_per_epoch = plan.num_batches(self.batch_size, drop_last)
        if self.steps_per_epoch == 0:
            raise ShardError(
                f"rank {rank}/{world_size} gets {len(plan)} samples per epoch, fewer than batch size "
                f"{batch_size}; lower --batch-size or add data"
            )

    @property
    def stats(self) -> LoaderStats:
        return self._readers.stats

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's part of epoch ``epoch``'s plan."""
        full = plan_epoch(self.mixture.counts, self.mixture.weights, self.seed, epoch)
        return full.for_rank(self.rank, self.world_size)

    def keys_for(self, batch: Batch) -> list[str]:
        """``SOURCE_NAME/KEY`` of every sample of the batch."""
        return self._readers.keys(batch.source.cpu().numpy(), batch.index.cpu().numpy())

    def state_dict(self) -> dict:
        return {
            "epoch": self._position[0],
            "step": self._position[1],
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "batch_size", "world_size"):
            if k in state and state[k] != getattr(self, k):
                raise ShardError(
                    f"loader state has {k}={state[k]} but this loader has {getattr(self, k)}; resume with the same {k}"
                )
        self._position = (int(state["epoch"]), int(state["step"]))

    # -- iteration ---------------------------------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        """Batches without end from the current position, across epochs, through one DALI pipeline."""
        plans = _Plans(self.plan)
        epoch, step = self._start(plans, *self._position)

        def positions():
            e, first = epoch, step
            while True:
                steps = self._steps(plans.get(e, ahead=True))
                for k in range(first, steps):
                    yield e, k
                e, first = e + 1, 0

        try:
            yield from self._stream(plans, positions())
        finally:
            plans.close()

    def epoch(self, epoch: int | None = None, start_step: int | None = None) -> Iterator[Batch]:
        """Yield :class:`Batch` es of ``epoch`` from ``start_step`` (default: the loaded / current position)."""
        if epoch is None:
            epoch, start_step = self._position if start_step is None else (self._position[0], start_step)
        plans = _Plans(self.plan)
        epoch, start = self._start(plans, int(epoch), 0 if start_step is None else int(start_step))
        steps = self._steps(plans.get(epoch))
        yield from self._stream(plans, ((epoch, k) for k in range(start, steps)))

    def _steps(self, plan: EpochPlan) -> int:
        return plan.num_batches(self.batch_size, self.drop_last)

    def _start(self, plans: _Plans, epoch: int, step: int) -> tuple[int, int]:
        """A position saved after an epoch's last step is the next epoch's start."""
        if step >= self._steps(plans.get(epoch)):
            return epoch + 1, 0
        return epoch, step

    def _stream(self, plans: _Plans, positions: Iterator[tuple[int, int]]) -> Iterator[Batch]:
        """Build one pipeline, feed it ``positions`` and deliver its batches (made ready by a background
        thread when ``prefetch_batches`` > 0); the position advances as each batch is delivered."""
        positions = iter(positions)
        first = next(positions, None)
        if first is None:
            return
        self._position = first

        def batch_of(e: int, k: int):
            plan = plans.get(e, ahead=True)
            b = plan.batch(k, self.batch_size)
            return b.source, b.index, self._steps(plan)

        feed = _Feed(self._readers, itertools.chain([first], positions), batch_of, params=self._packed_params)
        pipe = _build(
            self._readers,
            feed,
            self._augment,
            batch_size=self.batch_size,
            loader_device=self.loader_device,
            device_id=self.device.index or 0 if self.device.type == "cuda" else 0,
            num_threads=self.num_threads,
            seed=0,
            with_params=True,
        )
        delivery = _Delivery(self.device, self.loader_device)

        def produce():
            for outs, fed in _run(pipe, self._readers, feed):
                host = [fed.labels, fed.source.astype(np.int64), fed.index.astype(np.int64)]
                yield (*delivery.make(list(outs), host, self._view), fed)

        made = _Prefetcher(produce(), self.prefetch_batches) if self.prefetch_batches > 0 else produce()
        try:
            for views, (labels, source, index), event, fed in made:
                delivery.take(views, [labels, source, index], event)
                self._position = (fed.epoch, fed.step + 1) if fed.step + 1 < fed.steps else (fed.epoch + 1, 0)
                if fed.skipped is not None:
                    self._readers.count_skipped(fed.skipped)
                self.stats.batches += 1
                self.stats.samples += len(fed.index)
                yield Batch(views, labels, source, index, fed.epoch, fed.step)
        finally:
            made.close()  # the producer is done with the pipeline; drop our reference to it
            pipe = None  # noqa: F841

    # -- augmentation parameters -------------------------------------------------------------------
    def aug_params(self, epoch: int, step: int, source: np.ndarray) -> list[np.ndarray]:
        """The augmentation inputs of the planned batch ``step`` of ``epoch`` (``source``: its source ids):
        every view's :func:`~loaders.augment.sample_view_params` from ``augment_rng(seed, epoch, rank,
        step)``, view after view, as :func:`~loaders.augment.dali_param_arrays`."""
        rng = augment_rng(self.seed, epoch, self.rank, step)
        h, w = self._sizes[source, 0], self._sizes[source, 1]
        out: list[np.ndarray] = []
        for view in self.aug.views:
            out += dali_param_arrays(view, sample_view_params(rng, view, h, w), h, w, self._relative)
        return out

    def _param_layout(self) -> list[list[tuple[str, int, int, str, bool]]]:
        """Per view, (name, first column, width, dtype, per-sample vector?) of each parameter in the packed
        array (a (B, 1) parameter stays a 1-element vector, a (B,) one becomes a scalar)."""
        arrays = iter(self.aug_params(0, 0, np.zeros(1, np.int64)))
        layout, col = [], 0
        for view in self.aug.views:
            entries = []
            for name in dali_param_names(view):
                a = next(arrays)
                width = int(np.prod(a.shape[1:]))
                entries.append((name, col, width, a.dtype.name, a.ndim > 1))
                col += width
            layout.append(entries)
        self._num_params = col
        return layout

    def _packed_params(self, epoch: int, step: int, source: np.ndarray) -> np.ndarray:
        """:meth:`aug_params` as one (B, P) float32 array (exact: flags, small integers and float32 values)."""
        arrays = self.aug_params(epoch, step, source)
        out = np.empty((len(source), self._num_params), np.float32)
        col = 0
        for a in arrays:
            a = a.reshape(len(source), -1)
            out[:, col : col + a.shape[1]] = a
            col += a.shape[1]
        return out

    def _augment(self, images, device: str, packed) -> list:
        from nvidia.dali import fn, types

        casts = {"bool": types.BOOL, "int32": types.INT32}
        layout = "HWC" if self.channels_last else "CHW"
        views = []
        for view, entries in zip(self.aug.views, self._layout):
            nodes = {}
            for name, col, width, dtype, vector in entries:
                node = packed[col : col + width] if vector else packed[col]
                nodes[name] = fn.cast(node, dtype=casts[dtype]) if dtype in casts else node
            views.append(augment_view(images, view, nodes, device, layout, relative=self._relative))
        return views

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # DALI wrote NHWC; the permuted view is NCHW with channels-last strides
            t = t.permute(0, 3, 1, 2)
        return t.to(self.dtype) if self.dtype != torch.float32 else t

    def __len__(self) -> int:
        return self.steps_per_epoch


class EvalLoader:
    """Clean, sequential, unaugmented batches of test shards: every sample exactly once.

    Decode, resize the shorter side to ``size`` and centre-crop when the images are not already
    ``size×size``, normalise with ``mean``/``std`` (CIFAR by default). Yields ``(images, labels)``.
    ``limit`` (> 0) keeps a fixed random subset of that many samples (seeded, in shard order), so a
    capped evaluation of a class-ordered test set still sees every class. ``loader_device`` as in
    :class:`TrainLoader`.
    """

    def __init__(
        self,
        dirs,
        batch_size: int,
        device: str = "cpu",
        size: int = 32,
        *,
        num_threads: int = 2,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        on_corrupt: str = "error",
        limit: int = 0,
        seed: int = 0,
        loader_device: str = "auto",
    ):
        from pathlib import Path

        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        if not dirs:
            raise ShardError("no evaluation shards given; pass the test shard directory")
        manifests = [Manifest.load(d) for d in dirs]
        self._readers = _Readers(
            [
                (f"{m.name}{i}" if [x.name for x in manifests].count(m.name) > 1 else m.name, None, m, str(d))
                for i, (d, m) in enumerate(zip(dirs, manifests))
            ],
            on_corrupt,
        )
        self.batch_size, self.device, self.size = int(batch_size), torch.device(device), int(size)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ShardError("device cuda requested but no GPU is visible; use device='cpu'")
        self.loader_device = _resolve_loader_device(loader_device, self.device)
        self.num_threads, self.mean, self.std = num_threads, tuple(mean), tuple(std)
        counts = [m.count for m in manifests]
        self._plan = EpochPlan(
            np.repeat(np.arange(len(counts), dtype=np.int32), counts),
            np.concatenate([np.arange(c, dtype=np.int64) for c in counts]),
        )
        if 0 < limit < len(self._plan):
            keep = np.sort(np.random.default_rng(seed).permutation(len(self._plan))[:limit])
            self._plan = EpochPlan(self._plan.source[keep], self._plan.index[keep])
        self._resize = any(m.image_size != (self.size, self.size) for m in manifests)
        self.num_samples = len(self._plan)

    @property
    def stats(self) -> LoaderStats:
        return self._readers.stats

    def __len__(self) -> int:
        return self._plan.num_batches(self.batch_size, drop_last=False)

    def _process(self, images, device, params):
        from nvidia.dali import fn, types

        if self._resize:
            images = fn.resize(
                images, device=device, resize_shorter=self.size, interp_type=types.INTERP_CUBIC, antialias=True
            )
        return [
            fn.crop_mirror_normalize(
                images,
                device=device,
                crop=(self.size, self.size),
                dtype=types.FLOAT,
                output_layout="CHW",
                mean=[255.0 * m for m in self.mean],
                std=[255.0 * s for s in self.std],
            )
        ]

    def __iter__(self):
        steps = len(self)

        def batch_of(e: int, k: int):
            b = self._plan.batch(k, self.batch_size)
            return b.source, b.index, steps

        feed = _Feed(self._readers, ((0, k) for k in range(steps)), batch_of)
        pipe = _build(
            self._readers,
            feed,
            self._process,
            batch_size=self.batch_size,
            loader_device=self.loader_device,
            device_id=self.device.index or 0 if self.device.type == "cuda" else 0,
            num_threads=self.num_threads,
            seed=0,
        )
        delivery = _Delivery(self.device, self.loader_device)
        try:
            for outs, fed in _run(pipe, self._readers, feed):
                (images,), (labels,), event = delivery.make(list(outs), [fed.labels])
                delivery.take([images], [labels], event)
                if fed.skipped is not None:
                    self._readers.count_skipped(fed.skipped)
                yield images, labels
        finally:
            del pipe
