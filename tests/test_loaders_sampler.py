"""The epoch plan: exact multiplicities, the mixing bound, determinism, rank split."""

import numpy as np
import pytest

from loaders.batch.sampler import mixing_bound, plan_epoch
from shards.base.errors import ConfigError, ShardError


def multiplicities(plan, num_sources, counts):
    return [np.bincount(plan.index[plan.source == s], minlength=counts[s]) for s in range(num_sources)]


def test_integer_weights_exact():
    counts, weights = [50, 700], [10, 1]
    plan = plan_epoch(counts, weights, seed=3, epoch=0)
    assert len(plan) == 50 * 10 + 700
    real, gen = multiplicities(plan, 2, counts)
    assert (real == 10).all() and (gen == 1).all()
    assert plan.source.dtype == np.int32 and plan.index.dtype == np.int64


def test_fractional_weights_exact_within_one_and_in_expectation():
    counts, weights = [101, 77, 40], [0.5, 2.5, 0.0]
    totals, per_sample = [], np.zeros(101 + 77)
    epochs = 400
    for e in range(epochs):
        plan = plan_epoch(counts, weights, seed=1, epoch=e)
        a, b, c = multiplicities(plan, 3, counts)
        assert set(np.unique(a)) <= {0, 1} and set(np.unique(b)) <= {2, 3}
        assert c.sum() == 0  # weight 0 excludes the source
        assert abs(a.sum() - 50.5) < 1 and abs(b.sum() - 192.5) < 1
        totals.append((a.sum(), b.sum()))
        per_sample += np.concatenate([a, b])
    mean_totals = np.mean(totals, axis=0)
    assert abs(mean_totals[0] - 50.5) < 0.1 and abs(mean_totals[1] - 192.5) < 0.1
    mean = per_sample / epochs
    assert abs(mean[:101].mean() - 0.5) < 0.01 and abs(mean[101:].mean() - 2.5) < 0.01
    assert (abs(mean[:101] - 0.5) < 0.15).all()  # every sample, not just the average, gets its share


def window_deviation(plan, num_sources, L):
    n = len(plan)
    p = np.bincount(plan.source, minlength=num_sources) / n
    worst = np.zeros(num_sources)
    for s in range(num_sources):
        cs = np.concatenate([[0], np.cumsum(plan.source == s)])
        counts = cs[L:] - cs[:-L]  # every window of L consecutive positions
        worst[s] = np.abs(counts - L * p[s]).max()
    return worst, p


@pytest.mark.parametrize("counts,weights", [([500, 10000], [10, 1]), ([300, 2000, 57], [2, 1, 3.5])])
def test_every_window_obeys_the_mixing_bound(counts, weights):
    for epoch in range(3):
        plan = plan_epoch(counts, weights, seed=epoch, epoch=epoch)
        for L in (1, 7, 64, 256, 1000):
            worst, p = window_deviation(plan, len(counts), L)
            assert (worst < mixing_bound(p)).all(), (L, worst, mixing_bound(p))
    assert np.allclose(mixing_bound([1 / 3, 2 / 3]), 2.0)


def test_bound_holds_for_each_rank_batches():
    plan = plan_epoch([400, 3000], [10, 1], seed=0, epoch=0)
    p = np.bincount(plan.source) / len(plan)
    for k in range(plan.num_batches(256)):
        for r in range(4):  # rank r's part of the global batch of 256: 64 consecutive positions
            c = np.bincount(plan.batch(k, 256).part(r, 4).source, minlength=2)
            assert (np.abs(c - 64 * p) < 2).all()


def test_deterministic_and_epoch_dependent():
    a = plan_epoch([100, 300], [3, 1], seed=5, epoch=2)
    b = plan_epoch([100, 300], [3, 1], seed=5, epoch=2)
    c = plan_epoch([100, 300], [3, 1], seed=5, epoch=3)
    d = plan_epoch([100, 300], [3, 1], seed=6, epoch=2)
    assert np.array_equal(a.source, b.source) and np.array_equal(a.index, b.index)
    assert not np.array_equal(a.index, c.index) and not np.array_equal(a.index, d.index)


def test_rank_split_disjoint_equal_complete():
    plan = plan_epoch([103, 250], [2, 1], seed=0, epoch=0)  # 456 samples
    world, batch = 5, 20
    steps = plan.num_batches(batch)
    parts = [[plan.batch(k, batch).part(r, world) for r in range(world)] for k in range(steps)]
    assert all(len(p) == batch // world for step in parts for p in step)
    joined_s = np.concatenate([p.source for step in parts for p in step])
    joined_i = np.concatenate([p.index for step in parts for p in step])
    # the ranks' parts, step after step, cover the global order exactly, minus the last len % batch positions
    q = steps * batch
    assert np.array_equal(joined_s, plan.source[:q]) and np.array_equal(joined_i, plan.index[:q])
    with pytest.raises(ConfigError):
        plan.batch(0, batch).part(5, 5)


def test_large_epoch_is_arrays_only():
    plan = plan_epoch([50_000, 1_000_000], [10, 1], seed=0, epoch=0)
    assert len(plan) == 1_500_000
    assert np.bincount(plan.source).tolist() == [500_000, 1_000_000]
    assert plan.source.nbytes + plan.index.nbytes == 1_500_000 * 12


def test_bad_weights():
    with pytest.raises(ShardError):
        plan_epoch([10], [-1], 0, 0)
    with pytest.raises(ShardError):
        plan_epoch([10, 5], [0, 0], 0, 0)


def test_overflowing_weight_is_one_line_not_a_crash():
    with pytest.raises(ShardError, match=r"source 1: weight 1e\+308 × 700 samples overflows") as e:
        plan_epoch([50, 700], [10, 1e308], 0, 0)
    assert "\n" not in str(e.value)


def test_epoch_beyond_memory_is_refused_before_allocating(monkeypatch):
    """plan_epoch refuses what could never fit (half the machine's total memory at ~48 B per planned
    sample), naming the source when names are given."""
    import loaders.batch.sampler as sampler

    monkeypatch.setattr(sampler, "memory_bytes", lambda which: 2**30)  # a 1 GiB machine: 11,184,810 samples
    with pytest.raises(ShardError) as e:
        plan_epoch([50_000, 1000], [1e6, 1], 0, 0, names=["cifar10", "edm"])
    msg = str(e.value)
    assert msg.startswith("cifar10: weight 1e+06 × 50,000 samples makes an epoch of 50,000,001,000 samples")
    assert "at most 11,184,810 can be planned" in msg
    assert len(plan_epoch([50_000, 1000], [200, 1], 0, 0)) == 10_001_000  # just under the limit: planned


def test_plan_memory_per_sample_is_what_the_bound_assumes():
    """The bound's 48 B per planned sample is plan_epoch's real peak (tracemalloc sees numpy's buffers)."""
    import tracemalloc

    from loaders.recipe.mixture import PLAN_BYTES_PER_SAMPLE

    tracemalloc.start()
    try:
        plan = plan_epoch([20_000, 300_000], [10, 1], 0, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.8 * PLAN_BYTES_PER_SAMPLE <= peak / len(plan) <= PLAN_BYTES_PER_SAMPLE
