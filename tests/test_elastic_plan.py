"""The elastic split of the epoch plan (issue 28): step k's global batch is the k-th window of G positions, rank r
its r-th of W consecutive parts, and the mixing bound of ``loaders.batch.sampler`` holds for every rank's part."""

from __future__ import annotations

import numpy as np
import pytest

from loaders.batch.loader import TrainLoader
from loaders.batch.sampler import mixing_bound, part_rows, plan_epoch
from loaders.recipe.augment import AugConfig
from loaders.recipe.mixture import parse_shards_args


@pytest.mark.parametrize(("counts", "weights"), [([400, 3000], [10, 1]), ([400, 3000, 700], [10, 1, 2.5])])
def test_the_mixing_bound_holds_for_every_rank_part_of_every_global_batch(counts, weights):
    G = 256
    for epoch in range(2):
        plan = plan_epoch(counts, weights, seed=1, epoch=epoch)
        p = plan.counts(len(counts)) / len(plan)
        bound = mixing_bound(p)
        for world in (1, 2, 4, 8):
            L = G // world
            worst = np.zeros(len(counts))
            for k in range(plan.num_batches(G)):
                window = plan.batch(k, G)
                for r in range(world):
                    c = window.part(r, world).counts(len(counts))
                    assert c.sum() == L
                    worst = np.maximum(worst, np.abs(c - L * p))
            assert (worst < bound).all(), (world, worst, bound)


def test_parts_are_consecutive_disjoint_and_cover_the_window():
    for length in (24, 25, 5, 3):
        for world in (1, 2, 3, 4):
            rows = [part_rows(length, r, world) for r in range(world)]
            assert rows[0].start == 0 and rows[-1].stop == length
            assert all(a.stop == b.start for a, b in zip(rows, rows[1:]))
            if length % world == 0:
                assert {s.stop - s.start for s in rows} == {length // world}


def test_each_rank_delivers_its_part_and_every_rank_batch_is_within_the_bound(small_shards, plain_view):
    m = parse_shards_args([f"{small_shards['real']}:2", f"{small_shards['gen']}:1"])  # 105 samples
    aug = AugConfig((plain_view,))
    G, world = 20, 4
    plan = TrainLoader(m, aug, G).plan(0)
    p = plan.counts(2) / len(plan)
    for r in range(world):
        loader = TrainLoader(m, aug, G, rank=r, world_size=world, num_threads=1)
        got = list(loader.epoch(0))
        assert len(got) == len(plan) // G == loader.steps_per_epoch
        for b in got:
            want = plan.batch(b.step, G).part(r, world)
            assert b.source.tolist() == want.source.tolist() and b.index.tolist() == want.index.tolist()
            c = np.bincount(b.source.numpy(), minlength=2)
            assert (np.abs(c - (G // world) * p) < mixing_bound(p)).all()
