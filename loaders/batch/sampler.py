"""The epoch plan: which sample of which source fills each position of an epoch.

An epoch is planned exactly, not drawn at random: with weight ``w`` every sample of a source
appears ``w`` times (the paper's recipe replicates the real set 10 times and appends the
generated set once, then shuffles globally).

Multiplicities
    A source of ``n`` samples and weight ``w`` contributes ``m = floor(w·n)`` or ``floor(w·n) + 1``
    occurrences (the latter with probability ``frac(w·n)``, drawn from ``(seed, epoch)``), so the
    expected number is exactly ``w·n``. Every sample appears ``floor(w)`` times, and
    ``m - floor(w)·n`` distinct samples, chosen uniformly without replacement, once more. Integer
    weights are therefore exact (each sample exactly ``w`` times); fractional weights are exact in
    expectation (each sample ``w`` times on average over epochs) and within one sample of ``w·n``
    per source per epoch. Weight 0 excludes a source.

Mixing (a low-discrepancy interleave)
    The ``j``-th of the ``m_s`` occurrences of source ``s`` gets the sort key ``(j + U_j) / m_s``
    with ``U_j ~ U[0, 1)``; the epoch order is the argsort of all keys, and which sample of ``s``
    fills each of its occurrences is an independent uniform shuffle of its multiset.

    Bound. Let ``N = Σ m_t`` and ``p_s = m_s / N``. For every window of ``L`` consecutive
    positions the number ``c_s`` of occurrences of source ``s`` satisfies

        |c_s − L·p_s| < 2·(1 + (S − 2)·p_s)        (S = number of sources with m_s > 0),

    i.e. ``|c_s − L·p_s| < 2`` for the usual two-source mixture. Every global batch is such a window
    (``L = G``), and so is every rank's part of it (``L = G / W``, see Ranks).

    Proof. Let ``C_s(x) = #{j : (j + U_j)/m_s < x}``. Every ``j < ⌊m_s x⌋`` counts, no
    ``j > ⌊m_s x⌋`` does, and ``j = ⌊m_s x⌋`` counts iff ``U_j < frac(m_s x)``; hence
    ``C_s(x) − m_s x ∈ (−1, 1)``. A window spans the keys in ``[x₁, x₂]``, so
    ``c_s = m_s d + e_s`` with ``d = x₂ − x₁`` and ``|e_s| < 2``. Summing, ``L = N d + Σ e_t``, so
    ``c_s − L p_s = e_s (1 − p_s) − p_s Σ_{t≠s} e_t`` and
    ``|c_s − L p_s| < 2(1 − p_s) + 2 p_s (S − 1) = 2(1 + (S − 2) p_s)``. ∎

    (Ties between keys have probability zero; ``tests/test_loaders_sampler.py`` checks every window,
    ``tests/test_elastic_plan.py`` every rank's part of every batch.)

Ranks (elastic: the same global batches whatever the number of processes)
    The global batch of step ``k`` is the window ``[k·G, (k+1)·G)`` of the epoch order
    (:meth:`EpochPlan.batch` with the global batch size ``G``), whatever the world size ``W``;
    rank ``r`` takes the ``r``-th of its ``W`` consecutive parts (:meth:`EpochPlan.part`,
    ``[r·G/W, (r+1)·G/W)`` of the window). The ranks' parts of a step, concatenated in rank
    order, are the global batch of a one-process run, so a run's batches do not depend on ``W``
    and a position saved on ``W`` ranks is a position for any ``W'`` dividing ``G``. Each part
    is a run of consecutive positions: the mixing bound holds for it with ``L = G / W``. The last
    ``N mod G`` positions (a partial global batch) are not served with ``drop_last``.

Everything is numpy arrays (no Python object per sample): planning a 1.5M-sample epoch takes
a fraction of a second and ~70 MB transient memory (see ``bench/loader.py --plan-only``).

Memory bound
    Planning costs about 44-48 bytes per planned sample at its peak (keys, ids, the multiset, two
    permutations and the argsort; measured with tracemalloc) and keeps 12. A weight typed wrong
    (``DIR:1e6``) would ask for tens of GB; ``loaders.recipe.mixture.check_epoch_size`` refuses, in one line naming the
    source, any epoch larger than half the memory available now can plan, and any weight whose epoch
    overflows. ``loaders.recipe.mixture`` checks this when the mixture is read; ``plan_epoch`` itself
    checks against half the machine's *total* memory only (what could never fit), so a run whose
    mixture passed at the start never fails at a later epoch because memory became tighter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loaders.recipe.mixture import check_epoch_size, memory_bytes
from shards.base.errors import ConfigError, ShardError


@dataclass(frozen=True)
class EpochPlan:
    """Per position of the epoch: ``source`` (int32 source id) and ``index`` (int64 sample index)."""

    source: np.ndarray
    index: np.ndarray
    seed: int = 0
    epoch: int = 0

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def batch(self, step: int, batch_size: int) -> EpochPlan:
        """Positions ``[step·B, (step+1)·B)`` (shorter at the end)."""
        sl = slice(step * batch_size, (step + 1) * batch_size)
        return EpochPlan(self.source[sl], self.index[sl], self.seed, self.epoch)

    def part(self, rank: int, world_size: int) -> EpochPlan:
        """Rank ``rank``'s part of this window (a global batch): its :func:`part_rows`, ``L / W`` positions
        when ``W`` divides the window's length ``L`` (every full batch of a run: the global batch size is a
        multiple of the world size)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
        sl = part_rows(len(self), rank, world_size)
        return EpochPlan(self.source[sl], self.index[sl], self.seed, self.epoch)

    def num_batches(self, batch_size: int, drop_last: bool = True) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def counts(self, num_sources: int) -> np.ndarray:
        """Occurrences per source."""
        return np.bincount(self.source, minlength=num_sources)


def part_rows(length: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s rows of a global batch of ``length`` rows (its samples, or anything drawn per sample):
    ``[⌊r·L/W⌋, ⌊(r+1)·L/W⌋)``, consecutive, ``L / W`` of them when ``W`` divides ``L``."""
    return slice(rank * length // world_size, (rank + 1) * length // world_size)


def occurrences(counts, weights, rng: np.random.Generator) -> np.ndarray:
    """Number of occurrences per source: ``floor(w·n)`` plus one with probability ``frac(w·n)``."""
    counts = np.asarray(counts, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if counts.shape != weights.shape:
        raise ShardError(f"{len(counts)} source counts but {len(weights)} weights")
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ShardError(f"weights {weights.tolist()}: each must be a finite number >= 0")
    expected = weights * counts
    base = np.floor(expected).astype(np.int64)
    frac = expected - base
    return base + (rng.random(len(counts)) < frac)


def plan_epoch(counts, weights, seed: int, epoch: int, *, names: Sequence[str] | None = None) -> EpochPlan:
    """The exact, well-mixed plan of one epoch, a pure function of ``(counts, weights, seed, epoch)``.
    ``names`` (one per source) only make the error of an epoch too large to plan name the source."""
    check_epoch_size(counts, weights, names, available_bytes=memory_bytes("total"))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0xADA1])))
    m = occurrences(counts, weights, rng)
    total = int(m.sum())
    if total == 0:
        raise ShardError("the mixture plans no samples: every source has weight 0 or no samples")
    keys = np.empty(total, dtype=np.float64)
    source = np.empty(total, dtype=np.int32)
    index = np.empty(total, dtype=np.int64)
    start = 0
    for s, (n, ms) in enumerate(zip(np.asarray(counts, dtype=np.int64), m)):
        ms = int(ms)
        if ms == 0:
            continue
        sl = slice(start, start + ms)
        # low-discrepancy keys: the j-th occurrence lands uniformly in [j/m, (j+1)/m)
        keys[sl] = (np.arange(ms, dtype=np.float64) + rng.random(ms)) / ms
        source[sl] = s
        whole, extra = divmod(ms, int(n))
        # the multiset: every sample `whole` times, `extra` distinct samples once more
        samples = np.concatenate([np.tile(np.arange(n, dtype=np.int64), whole), rng.permutation(int(n))[:extra]])
        index[sl] = rng.permutation(samples)
        start += ms
    order = np.argsort(keys, kind="stable")
    return EpochPlan(source[order], index[order], int(seed), int(epoch))


def mixing_bound(proportions) -> np.ndarray:
    """The guaranteed bound on ``|c_s − L·p_s|`` for every window, per source (strict for S >= 2)."""
    p = np.asarray(proportions, dtype=np.float64)
    active = int((p > 0).sum())
    return 2.0 * (1.0 - p) + 2.0 * p * (active - 1)  # = 2(1 + (S-2)p); 0 for a single source
