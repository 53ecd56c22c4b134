"""DALI training and evaluation loaders fed by the exact epoch plan.

Why an ``external_source`` and not ``fn.readers.webdataset``: DALI's webdataset reader reads tars
in order and shuffles only inside a buffer of ``initial_fill`` samples, and has no weights, so it
cannot replicate the real set 10× inside one global shuffle or keep every batch mixed. Here the
plan (``loaders.sampler``) decides every position of the epoch; a batch-mode ``external_source``
hands DALI the batch's encoded bytes, sliced zero-copy out of memory-mapped tars
(``loaders.reader``), with labels, source ids and sample indices; it raises ``StopIteration`` after
the plan's last batch, so epochs are exact (a last partial batch is a smaller batch, never lost or
padded). We drive ``Pipeline.run()`` ourselves instead of ``DALIGenericIterator(size=...)``, which
drops or duplicates samples at the epoch boundary.

``parallel=True`` external sources were not used: reading is a few slices of an mmap per sample
(microseconds); the decoders and augmentations run in DALI's own threads.

Decoding: JPEG/PNG with ``fn.decoders.image`` (``mixed`` = nvJPEG on a GPU, CPU otherwise; PNG is
always decoded on the CPU); raw pixels skip the decoder (reshape to the manifest's ``H×W×3``). A
mixture of raw and encoded sources takes both paths per sample through a DALI conditional, decoding
on the CPU (then moving to the GPU) — correct everywhere, at the cost of nvJPEG.

Augmentation draws are made on the host, not by DALI's RNG: for each step the feed draws every
view's parameters (``loaders.augment.sample_view_params``, vectorised numpy) from a counter-based
generator keyed by ``(seed, epoch, rank, step)`` and hands them to DALI as extra external-source
outputs (CPU argument inputs and conditional predicates, also with a GPU pipeline). The DALI graph
has no random op and a fixed seed, so a batch is a pure function of (seed, epoch, rank, step, data):
a run is reproducible, and a resumed run (``epoch(e, start_step=k)`` or ``load_state_dict``) yields
the batches — samples and augmentations — the uninterrupted run would have had next (bitwise on the
CPU backend, where the tests check it).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import torch

from shards.manifest import Manifest, ShardError

from .augment import (CIFAR_MEAN, CIFAR_STD, AugConfig, augment_rng, augment_view, dali_param_arrays,
                      dali_param_names, sample_view_params)
from .mixture import Mixture, Source
from .reader import SourceReader
from .sampler import EpochPlan, plan_epoch


@dataclass
class Batch:
    views: list[torch.Tensor]  # each (B, 3, H, W) on the device
    labels: torch.Tensor  # int64 (B,), -1 for generated / unlabelled
    source: torch.Tensor  # int64 (B,), index into mixture.sources
    index: torch.Tensor  # int64 (B,), sample index within its source
    epoch: int = 0  # the epoch this batch belongs to
    step: int = 0  # its index within that epoch

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class LoaderStats:
    samples: int = 0
    batches: int = 0
    corrupt: int = 0  # samples skipped (on_corrupt="skip")
    corrupt_keys: list[str] = field(default_factory=list)  # the first 100 skipped keys

    def to_dict(self) -> dict:
        return {"samples": self.samples, "batches": self.batches, "corrupt": self.corrupt,
                "corrupt_keys": list(self.corrupt_keys)}


class _Readers:
    """The readers of a list of sources and the batch gathering shared by train and eval."""

    def __init__(self, sources: list[tuple[str, Source | None, Manifest, str]], on_corrupt: str):
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt={on_corrupt!r}: use 'error' or 'skip'")
        self.on_corrupt = on_corrupt
        self.names = [name for name, *_ in sources]
        self.readers = [SourceReader(path, manifest) for _, _, manifest, path in sources]
        formats = {r.format for r in self.readers}
        self.has_raw = "raw" in formats
        self.has_encoded = bool(formats - {"raw"})
        self.stats = LoaderStats()

    def gather(self, source: np.ndarray, index: np.ndarray):
        """External-source outputs for one batch and the positions kept (``None``: all); damaged samples
        raise or are dropped."""
        n = len(index)
        data: list = [None] * n
        labels = np.empty(n, np.int64)
        bad = np.zeros(n, bool)
        keep = None
        for s in np.unique(source):
            where = np.flatnonzero(source == s)
            d, lab, b = self.readers[s].read(index[where])
            for j, w in enumerate(where.tolist()):
                data[w] = d[j]
            labels[where], bad[where] = lab, b
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            if self.on_corrupt == "error":
                raise ShardError(self.readers[source[j]].describe(int(index[j])))
            self._count_skipped(source[bad], index[bad])
            keep = np.flatnonzero(~bad)
            data = [data[k] for k in keep.tolist()]
            labels, source, index = labels[keep], source[keep], index[keep]
        outs = [data, labels, source.astype(np.int64), index.astype(np.int64)]
        if self.has_raw:
            outs.append(np.array([self.readers[s].raw_shape or (1, 1, 3) for s in source.tolist()], dtype=np.int64))
        if self.has_raw and self.has_encoded:
            outs.append(np.array([self.readers[s].format == "raw" for s in source.tolist()], dtype=bool))
        return outs, keep

    def _count_skipped(self, source, index) -> None:
        self.stats.corrupt += len(index)
        for s, i in zip(source.tolist(), index.tolist()):
            if len(self.stats.corrupt_keys) < 100:
                self.stats.corrupt_keys.append(f"{self.names[s]}/{self.readers[s].keys[i]}")

    def culprit(self, source: np.ndarray, index: np.ndarray) -> str:
        """One line naming the first sample of a batch that PIL cannot decode (DALI's decoder failed)."""
        for s, i in zip(source.tolist(), index.tolist()):
            if not self.readers[s].decodes(i):
                return self.readers[s].describe(i, "undecodable")
        files = sorted({str(self.readers[s].shard_file(i)) for s, i in zip(source.tolist(), index.tolist())})
        return f"DALI failed on a batch from {', '.join(files[:4])}; run `python -m shards verify` on these shard sets"

    def keys(self, source, index) -> list[str]:
        source, index = np.asarray(source), np.asarray(index)
        return [f"{self.names[s]}/{self.readers[s].keys[i]}" for s, i in zip(source.tolist(), index.tolist())]


class _Feed:
    """Batch-mode external source over a slice of the plan; StopIteration after the last batch.

    ``params(step, source)``, when given, returns extra per-sample arrays for the planned batch of
    ``step`` (the augmentation parameters); they are drawn for the whole planned batch and then reduced
    to the samples kept, so a skipped sample never shifts the draws of the others.
    """

    def __init__(self, readers: _Readers, plan: EpochPlan, batch_size: int, start_step: int, steps: int,
                 params=None):
        self.readers, self.plan, self.batch_size, self.params = readers, plan, batch_size, params
        self.step, self.steps = start_step, steps
        self.fed: collections.deque[int] = collections.deque()  # steps handed to DALI, not yet delivered

    def __call__(self):
        while self.step < self.steps:
            b = self.plan.batch(self.step, self.batch_size)
            self.fed.append(self.step)
            self.step += 1
            outs, keep = self.readers.gather(b.source, b.index)
            if len(outs[1]):
                if self.params is not None:
                    extra = self.params(self.step - 1, b.source)
                    outs += extra if keep is None else [a[keep] for a in extra]
                return outs
            self.fed.pop()  # every sample of this batch was skipped
        raise StopIteration


def _decode(enc, readers: _Readers, raw_shape, is_raw, device: str):
    """Decoded HWC uint8 RGB images on ``device`` ("cpu" or "gpu")."""
    from nvidia.dali import fn, types

    if readers.has_raw and not readers.has_encoded:
        images = fn.reshape(enc, shape=raw_shape, layout="HWC")
        return images.gpu() if device == "gpu" else images
    if not readers.has_raw:
        return fn.decoders.image(enc, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
    if is_raw:  # raw and encoded sources in one batch: per-sample branch, decoded on the CPU
        images = fn.reshape(enc, shape=raw_shape, layout="HWC")
    else:
        images = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
    return images.gpu() if device == "gpu" else images


def _build(readers: _Readers, feed: _Feed, process, *, batch_size: int, device: str, num_threads: int, seed: int,
           num_params: int = 0):
    """The pipeline: external source → decode → ``process(images, dali_device, params)`` (``params``: the
    ``num_params`` extra CPU outputs of the feed) → (outputs of process…, labels, source, index)."""
    from nvidia.dali import fn, pipeline_def

    dali_device = "gpu" if device.startswith("cuda") else "cpu"
    device_id = torch.device(device).index or 0 if dali_device == "gpu" else None
    fixed = 4 + readers.has_raw + (readers.has_raw and readers.has_encoded)  # + raw shape, + is-raw flag

    @pipeline_def(enable_conditionals=True)
    def pipe():
        outs = fn.external_source(source=feed, num_outputs=fixed + num_params, batch=True)
        enc, labels, source, index = outs[:4]
        extra = list(outs[4:fixed]) + [None] * (6 - fixed)
        images = _decode(enc, readers, *extra, dali_device)
        return (*process(images, dali_device, list(outs[fixed:])), labels, source, index)

    p = pipe(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
             prefetch_queue_depth=2, exec_dynamic=True)
    p.build()
    return p


def _to_torch(tl, device: torch.device) -> torch.Tensor:
    """A PyTorch-owned copy of a dense DALI TensorList (CPU or GPU)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    t = tl.as_tensor()
    out = torch.empty(t.shape(), dtype=_TORCH_DTYPES[str(t.dtype)], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(t, out, cuda_stream=stream)
    return out


_TORCH_DTYPES = {"DALIDataType.FLOAT": torch.float32, "DALIDataType.INT64": torch.int64,
                 "DALIDataType.UINT8": torch.uint8, "DALIDataType.FLOAT16": torch.float16}


def _run(pipe, readers: _Readers, feed: _Feed):
    """Yield the pipeline's outputs until the feed's StopIteration; name the shard when DALI fails."""
    while True:
        try:
            outs = pipe.run()
        except StopIteration:
            return
        except ShardError:
            raise
        except RuntimeError as e:
            steps = list(feed.fed)
            srcs = np.concatenate([feed.plan.batch(s, feed.batch_size).source for s in steps]) if steps else np.zeros(0, int)
            idxs = np.concatenate([feed.plan.batch(s, feed.batch_size).index for s in steps]) if steps else np.zeros(0, int)
            raise ShardError(readers.culprit(srcs, idxs) + f" [DALI: {str(e).strip().splitlines()[0][:200]}]") from None
        if feed.fed:
            feed.fed.popleft()
        yield outs


class TrainLoader:
    """Augmented multi-view batches of a weighted mixture, planned exactly per epoch.

    ``for batch in loader.epoch(e, start_step=k)`` yields the batches of epoch ``e`` from step ``k``.
    ``state_dict()`` holds ``(epoch, step)`` of the next batch; after ``load_state_dict()``,
    ``loader.epoch()`` with no arguments resumes there.
    """

    def __init__(self, mixture: Mixture, aug: AugConfig, batch_size: int, *, seed: int = 0, device: str = "cpu",
                 rank: int = 0, world_size: int = 1, num_threads: int = 2, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, drop_last: bool = True, on_corrupt: str = "error"):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.mixture, self.aug, self.batch_size = mixture, aug, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ShardError("device cuda requested but no GPU is visible; use device='cpu'")
        self.num_threads, self.dtype, self.channels_last, self.drop_last = num_threads, dtype, channels_last, drop_last
        active = [s for s in mixture.sources]
        self._readers = _Readers([(s.name, s, s.manifest, str(s.path)) for s in active], on_corrupt)
        self._position = (0, 0)
        # image sizes per source for the crop sampler (0: unknown, crop in relative units of a square)
        self._sizes = np.array([s.manifest.image_size or (0, 0) for s in active], dtype=np.int64).reshape(-1, 2)
        self._relative = bool((self._sizes == 0).any())
        plan = self.plan(0)
        self.samples_per_epoch = len(plan)
        self.steps_per_epoch = plan.num_batches(self.batch_size, drop_last)
        if self.steps_per_epoch == 0:
            raise ShardError(f"rank {rank}/{world_size} gets {len(plan)} samples per epoch, fewer than batch size "
                             f"{batch_size}; lower --batch-size or add data")

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
        return {"epoch": self._position[0], "step": self._position[1], "seed": self.seed,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "batch_size", "world_size"):
            if k in state and state[k] != getattr(self, k):
                raise ShardError(f"loader state has {k}={state[k]} but this loader has {getattr(self, k)}; "
                                 f"resume with the same {k}")
        self._position = (int(state["epoch"]), int(state["step"]))

    def epoch(self, epoch: int | None = None, start_step: int | None = None):
        """Yield :class:`Batch` es of ``epoch`` from ``start_step`` (default: the loaded / current position)."""
        if epoch is None:
            epoch, start_step = self._position if start_step is None else (self._position[0], start_step)
        start_step = 0 if start_step is None else int(start_step)
        if start_step >= self.steps_per_epoch:  # a state saved after the last step: the next epoch starts
            epoch, start_step = epoch + 1, 0
        plan = self.plan(epoch)
        feed = _Feed(self._readers, plan, self.batch_size, start_step, plan.num_batches(self.batch_size, self.drop_last),
                     params=lambda step, source: self.aug_params(epoch, step, source))
        names = [dali_param_names(v) for v in self.aug.views]
        pipe = _build(self._readers, feed, self._augment, batch_size=self.batch_size, device=str(self.device),
                      num_threads=self.num_threads, seed=0, num_params=sum(map(len, names)))
        nviews = len(self.aug.views)
        step = start_step
        self._position = (epoch, step)
        try:
            for outs in _run(pipe, self._readers, feed):
                views = [self._view(_to_torch(o, self.device)) for o in outs[:nviews]]
                labels, source, index = (_to_torch(o, torch.device("cpu")).to(self.device, non_blocking=True)
                                         for o in outs[nviews:])
                step += 1
                self._position = (epoch, step)
                self.stats.batches += 1
                self.stats.samples += len(labels)
                yield Batch(views, labels, source, index, epoch, step - 1)
        finally:
            del pipe

    def batches(self):
        """Endless batches from the current position (``load_state_dict``, default epoch 0 step 0), across
        epochs; each carries its ``epoch`` and in-epoch ``step``, and ``state_dict()`` is always the position
        of the next batch to deliver."""
        while True:
            yield from self.epoch()
            if self._position[1] >= self.steps_per_epoch:
                self._position = (self._position[0] + 1, 0)

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

    def _augment(self, images, device: str, params: list) -> list:
        layout = "HWC" if self.channels_last else "CHW"
        views, it = [], iter(params)
        for view in self.aug.views:
            nodes = {name: next(it) for name in dali_param_names(view)}
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
    capped evaluation of a class-ordered test set still sees every class.
    """

    def __init__(self, dirs, batch_size: int, device: str = "cpu", size: int = 32, *, num_threads: int = 2,
                 mean=CIFAR_MEAN, std=CIFAR_STD, on_corrupt: str = "error", limit: int = 0, seed: int = 0):
        from pathlib import Path

        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        if not dirs:
            raise ShardError("no evaluation shards given; pass the test shard directory")
        manifests = [Manifest.load(d) for d in dirs]
        self._readers = _Readers([(f"{m.name}{i}" if [x.name for x in manifests].count(m.name) > 1 else m.name,
                                   None, m, str(d)) for i, (d, m) in enumerate(zip(dirs, manifests))], on_corrupt)
        self.batch_size, self.device, self.size = int(batch_size), torch.device(device), int(size)
        self.num_threads, self.mean, self.std = num_threads, tuple(mean), tuple(std)
        counts = [m.count for m in manifests]
        self._plan = EpochPlan(np.repeat(np.arange(len(counts), dtype=np.int32), counts),
                               np.concatenate([np.arange(c, dtype=np.int64) for c in counts]))
        if 0 < limit < len(self._plan):
            keep = np.sort(np.random.default_rng(seed).permutation(len(self._plan))[:limit])
            self._plan = EpochPlan(self._plan.source[keep], self._plan.index[keep])
        self._resize = any(m.image_size != (self.size, self.size) for m in manifests)
        self.num_samples = len(self._plan)

    def __len__(self) -> int:
        return self._plan.num_batches(self.batch_size, drop_last=False)

    @property
    def stats(self) -> LoaderStats:
        return self._readers.stats

    def _process(self, images, device, params):
        from nvidia.dali import fn, types

        if self._resize:
            images = fn.resize(images, device=device, resize_shorter=self.size, interp_type=types.INTERP_CUBIC,
                               antialias=True)
        return [fn.crop_mirror_normalize(images, device=device, crop=(self.size, self.size), dtype=types.FLOAT,
                                         output_layout="CHW", mean=[255.0 * m for m in self.mean],
                                         std=[255.0 * s for s in self.std])]

    def __iter__(self):
        feed = _Feed(self._readers, self._plan, self.batch_size, 0, len(self))
        pipe = _build(self._readers, feed, self._process, batch_size=self.batch_size, device=str(self.device),
                      num_threads=self.num_threads, seed=0)
        try:
            for outs in _run(pipe, self._readers, feed):
                yield _to_torch(outs[0], self.device), _to_torch(outs[1], torch.device("cpu")).to(self.device)
        finally:
            del pipe
