"""The feed: what DALI's batch-mode ``external_source`` calls for each batch, and the epoch plans behind it.

Why an ``external_source`` and not ``fn.readers.webdataset``: DALI's webdataset reader reads tars in order
and shuffles only inside a buffer of ``initial_fill`` samples, and has no weights, so it cannot replicate
the real set 10× inside one global shuffle or keep every batch mixed. Here the plan (``loaders.batch.sampler``)
decides every position of an epoch, and :class:`Feed` hands DALI each planned batch: the encoded bytes
gathered in one copy (``loaders.batch.table``) and the crop boxes drawn for it (``loaders.batch.params``). The feed
runs where ``pipe.run()`` runs — the loader's prefetch thread — and is vectorised end to end (a benchmark:
``python -m bench feed``).

Labels, source ids, sample indices and the colour parameters never go through DALI: the feed keeps them,
with the position it fed, in :attr:`Feed.in_flight`, and the loader pairs them with DALI's outputs, which come
back in feeding order.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from loaders.batch.sampler import EpochPlan
from loaders.batch.table import SampleTable
from shards.base.errors import ShardError


@dataclass
class FedBatch:
    """What the feed handed DALI for one position; DALI's outputs come back in the same order."""

    epoch: int
    step: int
    steps: int  # steps of its epoch
    source: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    colour: np.ndarray | None = None  # (B, P) float32 colour parameters of the samples fed (None: eval)
    error: str | None = None  # a damaged sample at or before this batch (on_corrupt="error")
    skipped: tuple[np.ndarray, np.ndarray] | None = None  # damaged (source, index) skipped up to this batch
    carried: int = 0  # how many of ``skipped`` come from earlier positions (batches with nothing usable)


#: ``batch_of(epoch, step) -> (source, index, steps of that epoch)``
BatchOf = Callable[[int, int], tuple[np.ndarray, np.ndarray, int]]
#: ``params(epoch, step) -> (crops (B, 4·V), colour (B, P))``, one row per sample of ``batch_of(epoch, step)``
Params = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


class Feed:
    """Batch-mode external source over a sequence of positions ``(epoch, step)``; StopIteration at its end.

    ``batch_of`` gives the planned batch of a position; ``params``, when given, its augmentation parameters,
    drawn for the whole planned batch and then reduced to the samples kept, so a skipped sample never shifts
    the draws of the others. A position whose samples are all skipped is passed over; an error of such a
    batch is reported with the next batch fed (or at the end)."""

    def __init__(
        self, table: SampleTable, positions: Iterator[tuple[int, int]], batch_of: BatchOf, params: Params | None = None
    ):
        self.table, self.positions, self.batch_of, self.params = table, positions, batch_of, params
        self.in_flight: collections.deque[FedBatch] = collections.deque()  # handed to DALI, not yet delivered

    def __call__(self) -> list[np.ndarray]:
        pending = None
        skipped = []  # damaged samples skipped since the last batch fed: counted when that one is delivered
        for epoch, step in self.positions:
            source, index, steps = self.batch_of(epoch, step)
            sel = self.table.select(source, index)
            pending = pending or sel.error
            if len(sel.bad[0]):
                skipped.append(sel.bad)
            if not len(sel.ids):
                continue  # every sample of this batch was skipped (or damaged)
            crops = colour = None
            if self.params is not None:
                crops, colour = self.params(epoch, step)
            if sel.keep is not None:
                source, index = source[sel.keep], index[sel.keep]
                if crops is not None:
                    crops, colour = crops[sel.keep], colour[sel.keep]
            outs = self.table.gather(sel.ids, source)
            if crops is not None:
                outs.append(crops)
            done = (
                (np.concatenate([a for a, _ in skipped]), np.concatenate([b for _, b in skipped])) if skipped else None
            )
            carried = (len(done[0]) - len(sel.bad[0])) if done is not None else 0
            labels = self.table.labels[sel.ids]
            self.in_flight.append(FedBatch(epoch, step, steps, source, index, labels, colour, pending, done, carried))
            return outs
        if pending:
            raise ShardError(pending)
        raise StopIteration


class Plans:
    """Epoch plans of a loader, the next one computed in a background thread while the current one runs
    (planning a 1.5M-sample epoch takes tens of milliseconds: more than a GPU step)."""

    def __init__(self, make: Callable[[int], EpochPlan]):
        self.make = make
        self._plans: dict[int, EpochPlan | concurrent.futures.Future] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def get(self, epoch: int, ahead: bool = False) -> EpochPlan:
        """The plan of ``epoch``; with ``ahead``, also start planning the next one."""
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
