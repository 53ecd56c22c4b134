"""The training and evaluation loaders: the plan, the feed, the DALI graph, the delivery and the colour stage
put together, yielding finished batches on the model's device.

One pipeline for a whole run: :meth:`TrainLoader.batches` feeds positions ``(epoch, step)`` one after the
other across epochs, so there is no rebuild and no drained prefetch queue at an epoch boundary; the next
epoch's plan is computed in a background thread while the current one runs (``loaders.batch.feed.Plans``).
:meth:`TrainLoader.epoch` is the same machinery over one epoch (it stops after the plan's last batch, so
epochs are exact: a last partial batch is a smaller batch, never lost or padded). We drive
``Pipeline.run()`` ourselves instead of ``DALIGenericIterator(size=...)``, which drops or duplicates
samples at the epoch boundary.

The path of a batch through these modules is told in ``docs/design.md``. Every random parameter is drawn on the
host from ``(seed, epoch, step)`` for the whole global batch (``loaders.batch.params``), so a batch is a pure
function of (seed, epoch, step, data): a resumed run (``load_state_dict`` then ``batches()``, or
``epoch(e, start_step=k)``) yields the batches the uninterrupted run would have had next — bitwise on the
CPU, within interpolation tolerance between the CPU and GPU pipelines, which get the same parameters.

Elastic determinism: ``batch_size`` is the *global* batch ``G``. Step ``k`` of an epoch is the window
``[k·G, (k+1)·G)`` of the epoch plan whatever the number of processes ``W``; rank ``r`` delivers the ``r``-th of
its ``W`` consecutive parts (``loaders.batch.sampler.part_rows``) with its part of the global batch's draws. So
the ranks' batches of a step, concatenated in rank order, are bitwise the batch of a one-process run, and a
position saved on ``W`` ranks resumes on any ``W'`` that divides ``G`` (:meth:`TrainLoader.load_state_dict`).

Where the DALI graph runs (``loader_device``, decided by ``shards.base.host.resolve_loader_device``) is
independent of where the model runs (``device``): ``"gpu"`` runs the ``mixed`` decoder and GPU resizes;
``"cpu"`` runs the graph with ``num_threads`` CPU threads and hands uint8 crops to the model's device. The
colour stage always runs on the model's device.

Damaged samples: labels and the validity of every sample were decided once per set when it was opened
(``shards.read.reader``): a damaged sample never reaches DALI; it raises a one-line :class:`ShardError` or, with
``on_corrupt="skip"``, is left out of its batch and counted in :attr:`TrainLoader.stats`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from loaders.batch.colour import ColourStage, normalise
from loaders.batch.delivery import Delivery, Prefetcher
from loaders.batch.feed import FedBatch, Feed, Plans
from loaders.batch.graph import eval_pipeline, first_line, operator_count, train_pipeline
from loaders.batch.params import ParamLayout, augment_rng
from loaders.batch.sampler import EpochPlan, part_rows, plan_epoch
from loaders.batch.table import LoaderStats, SampleTable
from loaders.recipe.augment import CIFAR_MEAN, CIFAR_STD, AugConfig
from loaders.recipe.mixture import Mixture
from shards.base.errors import ConfigError, ShardError
from shards.base.host import LOADER_THREADS, cuda_index, resolve_device, resolve_loader_device
from shards.format.manifest import Manifest

log = logging.getLogger("loaders")
#: The loader state's format: 1 (no ``version`` key) kept a rank's own batch size and drew views per rank; 2 keeps
#: the global batch size and positions of the global order (any world size dividing it resumes them)
LOADER_STATE_VERSION = 2
#: samples per piece of the colour stage on a CPU (a piece stays in cache between its phases)
CPU_CHUNK = 64


@dataclass
class TrainBatch:
    views: list[torch.Tensor]  # each (B, 3, H, W) on the device
    labels: torch.Tensor  # int64 (B,), -1 for generated / unlabelled
    source: torch.Tensor  # int64 (B,), index into mixture.sources
    index: torch.Tensor  # int64 (B,), sample index within its source
    epoch: int = 0  # the epoch of the plan this batch comes from
    step: int = 0  # its position within that epoch (0 … steps_per_epoch − 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class TrainLoader:
    """Augmented multi-view batches of a weighted mixture, planned exactly per epoch.

    ``batch_size`` is the global batch ``G`` (a multiple of ``world_size``); each rank's batches hold
    ``local_batch_size = G / world_size`` samples, its part of the global batch of each step.
    ``for batch in loader.batches()`` yields batches endlessly, across epochs, from the loader's
    position (``load_state_dict``; default epoch 0, step 0), with one DALI pipeline for its whole life;
    each :class:`TrainBatch` carries its ``epoch`` and ``step``. ``state_dict()`` is the position of the next
    batch *delivered* (not prefetched): after batch ``(e, k)`` it is ``(e, k + 1)``, or ``(e + 1, 0)``
    after an epoch's last batch. ``for batch in loader.epoch(e, start_step=k)`` yields the batches of
    epoch ``e`` from step ``k`` (with no arguments: from the loaded position to the end of its epoch).

    ``device`` is the model's device (where batches are delivered and the colour stage runs);
    ``loader_device`` where the DALI graph runs: "auto" (the GPU when ``device`` is CUDA), "cpu" or "gpu".
    ``prefetch_batches``: how many batches a background thread keeps ready (the feed, ``pipe.run()``, the
    copies and the colour stage run there, off the training thread); 0 runs them on the calling thread.
    ``compile``: compile the colour stage (None: on a CUDA device, not on the CPU, where compiling costs
    tens of seconds). ``colour_threads``: CPU threads of the colour stage on a CPU device (the DALI graph
    has ``num_threads`` of its own).
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
        num_threads: int = LOADER_THREADS,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        drop_last: bool = True,
        on_corrupt: str = "error",
        loader_device: str = "auto",
        prefetch_batches: int = 2,
        compile: bool | None = None,
        colour_threads: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
        if batch_size % world_size:
            raise ConfigError(
                f"global batch size {batch_size} does not split over {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        self.mixture, self.aug, self.batch_size = mixture, aug, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.local_batch_size = self.batch_size // self.world_size
        self.device = torch.device(resolve_device(device))
        self.loader_device = resolve_loader_device(loader_device, str(self.device))
        self.num_threads, self.drop_last = num_threads, drop_last
        self.prefetch_batches, self.colour_threads = int(prefetch_batches), int(colour_threads)
        self.table = SampleTable([(s.name, s.path, s.manifest) for s in mixture.sources], on_corrupt)
        self.layout = ParamLayout.of(aug)
        cuda = self.device.type == "cuda"
        self.colour = ColourStage(
            aug,
            self.layout,
            dtype=dtype,
            channels_last=channels_last,
            compile=cuda if compile is None else compile,
            chunk=self.local_batch_size if cuda else CPU_CHUNK,
        )
        # crop boxes in pixels of each image's own size; relative units where a size is unknown
        self._relative = bool((self.table.hw == 0).any())
        self._position = (0, 0)
        self.dali_operators: int | None = None  # known once a pipeline is built
        plan = self.plan(0)
        self.samples_per_epoch = len(plan)
        self.steps_per_epoch = plan.num_batches(self.batch_size, drop_last)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"an epoch has {len(plan)} samples, fewer than the global batch size {batch_size}; "
                "lower --batch-size or add data"
            )

    @property
    def stats(self) -> LoaderStats:
        return self.table.stats

    def plan(self, epoch: int) -> EpochPlan:
        """Epoch ``epoch``'s plan, the global order every rank serves its parts of (:meth:`rank_batch`)."""
        return plan_epoch(self.mixture.counts, self.mixture.weights, self.seed, epoch)

    def rank_batch(self, plan: EpochPlan, step: int) -> EpochPlan:
        """This rank's part of the global batch ``step`` of ``plan``."""
        return plan.batch(step, self.batch_size).part(self.rank, self.world_size)

    def keys_for(self, batch: TrainBatch) -> list[str]:
        """``SOURCE_NAME/KEY`` of every sample of the batch."""
        return self.table.keys(batch.source.cpu().numpy(), batch.index.cpu().numpy())

    def state_dict(self) -> dict:
        """The position of the next global batch: the same on every rank, valid for any world size dividing
        ``batch_size`` (``world_size`` is recorded for information only)."""
        return {
            "version": LOADER_STATE_VERSION,
            "epoch": self._position[0],
            "step": self._position[1],
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict`), saved on any number of processes. A state of another
        seed or global batch size, or of a version this release cannot continue exactly, is a one-line
        ConfigError. Version 1 (no ``version`` key) is read when one process wrote it: its batches and views
        were this version's; written by several processes they were not (each rank its own slice of the epoch
        and its own draws), and it is refused."""
        version = int(state.get("version", 1))
        if version == 1 and int(state.get("world_size", 1)) != 1:
            raise ConfigError(
                f"loader state version 1 written by {state['world_size']} processes: its batches and views depended "
                f"on the number of processes and this release (loader state version {LOADER_STATE_VERSION}) cannot "
                "continue them; finish the run with the release that wrote it, or start a new run"
            )
        if version > LOADER_STATE_VERSION:
            raise ConfigError(
                f"loader state version {version} is newer than this release's ({LOADER_STATE_VERSION}); "
                "resume with the release that wrote it"
            )
        if "seed" in state and state["seed"] != self.seed:
            raise ConfigError(
                f"loader state has seed={state['seed']} but this loader has {self.seed}; resume with the same seed"
            )
        if "batch_size" in state and state["batch_size"] != self.batch_size:
            raise ConfigError(
                f"loader state has batch_size={state['batch_size']} (the global batch) but this loader has "
                f"{self.batch_size}; resume with --batch-size {state['batch_size']} (on any number of processes "
                "dividing it)"
            )
        self._position = (int(state["epoch"]), int(state["step"]))

    # -- the augmentation parameters of a planned batch ---------------------------------------------
    def aug_params(self, epoch: int, step: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(crop boxes (G, 4·V), colour parameters (G, P))`` of the global batch ``step`` of ``epoch``
        whose sample ids are ``ids`` (:meth:`SampleTable.ids`, all ``G`` of them, every rank's): every view's
        draws from ``augment_rng(seed, epoch, step)``, view after view (:meth:`ParamLayout.draw`)."""
        hw = self.table.hw[ids]
        rng = augment_rng(self.seed, epoch, step)
        return self.layout.draw(rng, hw[:, 0], hw[:, 1], self._relative)

    def rank_params(self, plans: Plans, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's rows of :meth:`aug_params` of the global batch ``step`` of ``epoch``."""
        window = plans.get(epoch).batch(step, self.batch_size)
        crops, colour = self.aug_params(epoch, step, self.table.ids(window.source, window.index))
        rows = part_rows(len(window), self.rank, self.world_size)  # the rows of rank_batch's samples
        return crops[rows], colour[rows]

    # -- iteration ---------------------------------------------------------------------------------
    def batches(self) -> Iterator[TrainBatch]:
        """Batches without end from the current position, across epochs, through one DALI pipeline."""
        plans = Plans(self.plan)

        def positions_from(epoch: int, step: int) -> Iterator[tuple[int, int]]:
            e, first = self._start(plans, epoch, step)
            while True:
                steps = self._steps(plans.get(e, ahead=True))
                for k in range(first, steps):
                    yield e, k
                e, first = e + 1, 0

        try:
            yield from self._stream(plans, positions_from, self._position)
        finally:
            plans.close()

    def epoch(self, epoch: int | None = None, start_step: int | None = None) -> Iterator[TrainBatch]:
        """Yield the :class:`TrainBatch` items of ``epoch`` from ``start_step`` (default: the loaded / current
        position)."""
        if epoch is None:
            epoch, start_step = self._position if start_step is None else (self._position[0], start_step)
        plans = Plans(self.plan)
        epoch, start = self._start(plans, int(epoch), 0 if start_step is None else int(start_step))
        steps = self._steps(plans.get(epoch))

        def positions_from(e: int, k: int) -> Iterator[tuple[int, int]]:
            return ((epoch, j) for j in range(k, steps)) if e == epoch else iter(())

        yield from self._stream(plans, positions_from, (epoch, start))

    def feed(self, positions: Iterator[tuple[int, int]], plans: Plans | None = None) -> Feed:
        """The feed of this loader over ``positions``: what the DALI graph reads, one planned batch a call
        (for benchmarks of the host side: ``python -m bench feed``)."""
        plans = plans or Plans(self.plan)

        def batch_of(e: int, k: int):
            plan = plans.get(e, ahead=True)
            b = self.rank_batch(plan, k)
            return b.source, b.index, self._steps(plan)

        return Feed(self.table, positions, batch_of, params=lambda e, k: self.rank_params(plans, e, k))

    def _steps(self, plan: EpochPlan) -> int:
        return plan.num_batches(self.batch_size, self.drop_last)

    def _start(self, plans: Plans, epoch: int, step: int) -> tuple[int, int]:
        """A position saved after an epoch's last step is the next epoch's start."""
        if step >= self._steps(plans.get(epoch)):
            return epoch + 1, 0
        return epoch, step

    def _stream(self, plans: Plans, positions_from, start: tuple[int, int]) -> Iterator[TrainBatch]:
        """Deliver the batches of ``positions_from(*start)`` through one pipeline. Should DALI's decoder reject a
        batch with ``on_corrupt="skip"``, its culprits are marked (never fed again) and a new pipeline goes on
        from that batch, which it delivers without them (counted as skipped; the others keep their draws)."""
        position = start
        while True:
            try:
                yield from self._stream_once(plans, positions_from(*position))
                return
            except Rejected as r:
                log.warning("%s; skipped, the loader goes on with a new pipeline", r)
                if r.fed.carried:  # damage skipped at earlier positions, which are not fed again
                    self.table.count_skipped(tuple(a[: r.fed.carried] for a in r.fed.skipped))
                position = self._position = (r.fed.epoch, r.fed.step)  # fed again without the culprits

    def _stream_once(self, plans: Plans, positions: Iterator[tuple[int, int]]) -> Iterator[TrainBatch]:
        """Build one pipeline, feed it ``positions`` and deliver its batches (made ready by a background
        thread when ``prefetch_batches`` > 0); the position advances as each batch is delivered."""
        first = next(positions, None)
        if first is None:
            return
        self._position = first
        feed = self.feed(itertools.chain([first], positions), plans)
        pipe = train_pipeline(
            feed,
            self.table.mode,
            [v.size for v in self.aug.views],
            relative=self._relative,
            batch_size=self.local_batch_size,
            device=self.loader_device,
            device_id=cuda_index(self.device),
            num_threads=self.num_threads,
        )
        self.dali_operators = operator_count(pipe)
        delivery = Delivery(self.device, self.loader_device, self.colour)

        # torch.set_num_threads sets the calling thread's OpenMP count *and* the process default that any thread
        # takes when it first runs a parallel op: the producer's own count must not leak into the training thread
        # (the model would run on one core). So this thread's count is fixed here, before the producer starts, and
        # the default is put back once the producer has set its count (by its first batch).
        threads, own_threads = torch.get_num_threads(), self.device.type == "cpu" and self.prefetch_batches > 0

        def produce():
            if own_threads:
                torch.set_num_threads(self.colour_threads)  # the prefetch thread's colour stage
            for outs, fed in pipeline_outputs(pipe, self.table, feed):
                host = [fed.labels, fed.source.astype(np.int64), fed.index.astype(np.int64)]
                yield (*delivery.make(list(outs), host, fed.colour), fed)

        made = Prefetcher(produce(), self.prefetch_batches) if self.prefetch_batches > 0 else produce()
        restore = own_threads
        try:
            for views, (labels, source, index), event, fed in made:
                if restore:
                    torch.set_num_threads(threads)  # the process default back (this thread's count is unchanged)
                    restore = False
                delivery.take(views, [labels, source, index], event)
                self._position = (fed.epoch, fed.step + 1) if fed.step + 1 < fed.steps else (fed.epoch + 1, 0)
                if fed.skipped is not None:
                    self.table.count_skipped(fed.skipped)
                self.stats.batches += 1
                self.stats.samples += len(fed.index)
                yield TrainBatch(views, labels, source, index, fed.epoch, fed.step)
        finally:
            made.close()  # the producer is done with the pipeline; drop our reference to it
            pipe = None  # noqa: F841

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
        num_threads: int = LOADER_THREADS,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        on_corrupt: str = "error",
        limit: int = 0,
        seed: int = 0,
        loader_device: str = "auto",
    ):
        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        if not dirs:
            raise ShardError("no evaluation shards given; pass the test shard directory")
        manifests = [Manifest.load(d) for d in dirs]
        names = [m.name for m in manifests]
        self.table = SampleTable(
            [
                (f"{m.name}{i}" if names.count(m.name) > 1 else m.name, d, m)
                for i, (d, m) in enumerate(zip(dirs, manifests))
            ],
            on_corrupt,
        )
        self.batch_size, self.size = int(batch_size), int(size)
        self.device = torch.device(resolve_device(device))
        self.loader_device = resolve_loader_device(loader_device, str(self.device))
        self.num_threads, self.mean, self.std = num_threads, tuple(mean), tuple(std)
        counts = [m.count for m in manifests]
        self._plan = EpochPlan(
            np.repeat(np.arange(len(counts), dtype=np.int32), counts),
            np.concatenate([np.arange(c, dtype=np.int64) for c in counts]),
        )
        if 0 < limit < len(self._plan):
            keep = np.sort(np.random.default_rng(seed).permutation(len(self._plan))[:limit])
            self._plan = EpochPlan(self._plan.source[keep], self._plan.index[keep])
        self._resize = bool((self.table.hw != self.size).any())
        self.num_samples = len(self._plan)

    @property
    def stats(self) -> LoaderStats:
        return self.table.stats

    def __len__(self) -> int:
        return self._plan.num_batches(self.batch_size, drop_last=False)

    def _finish(self, tensors: list[torch.Tensor], _params) -> list[torch.Tensor]:
        return [normalise(t.permute(0, 3, 1, 2).float(), self.mean, self.std).contiguous() for t in tensors]

    def __iter__(self):
        steps = len(self)

        def batch_of(e: int, k: int):
            b = self._plan.batch(k, self.batch_size)
            return b.source, b.index, steps

        feed = Feed(self.table, ((0, k) for k in range(steps)), batch_of)
        pipe = eval_pipeline(
            feed,
            self.table.mode,
            self.size,
            resize=self._resize,
            batch_size=self.batch_size,
            device=self.loader_device,
            device_id=cuda_index(self.device),
            num_threads=self.num_threads,
        )
        delivery = Delivery(self.device, self.loader_device, self._finish)
        try:
            for outs, fed in pipeline_outputs(pipe, self.table, feed):
                (images,), (labels,), event = delivery.make(list(outs), [fed.labels])
                delivery.take([images], [labels], event)
                if fed.skipped is not None:
                    self.table.count_skipped(fed.skipped)
                yield images, labels
        finally:
            del pipe


class Rejected(ShardError):
    """DALI's decoder failed on the batch fed for ``fed`` (``on_corrupt="skip"``): its culprits are marked, the
    pipeline is rebuilt and the run goes on from that batch, without them."""

    def __init__(self, line: str, fed: FedBatch, bad: np.ndarray):
        super().__init__(line)
        self.fed, self.bad = fed, bad


def pipeline_outputs(pipe, table: SampleTable, feed: Feed) -> Iterator[tuple[list, FedBatch]]:
    """Yield (the pipeline's outputs, what was fed for them) until the feed's StopIteration. When DALI fails on
    a batch, its samples are checked again (:meth:`SampleTable.rejected`): a one-line :class:`ShardError`
    naming the culprit, or with ``on_corrupt="skip"`` a :class:`Rejected` the loader recovers from."""
    while True:
        try:
            outs = pipe.run()
        except StopIteration:
            return
        except ShardError:
            raise
        except RuntimeError as e:
            if not feed.in_flight:
                raise ShardError(f"the DALI pipeline failed before any batch was fed [DALI: {first_line(e)}]") from None
            fed = feed.in_flight[0]  # outputs come back in feeding order: the failure is the oldest batch's
            bad, line = table.rejected(fed.source, fed.index)
            if table.on_corrupt == "skip":
                raise Rejected(line, fed, bad) from None
            raise ShardError(line) from None
        fed = feed.in_flight.popleft()
        if fed.error:
            raise ShardError(fed.error)
        yield outs, fed
