"""Elastic determinism of the loader (issue 28): the same global batches with bitwise the same views on 1, 2 or 4
processes, and a position saved on W processes continued on W' processes, exactly.

The W loaders of a "run on W processes" are built in this one process (``rank=r, world_size=W``, on the CPU):
what rank r delivers does not depend on the other ranks, so step k of the run is the concatenation of the
ranks' step-k batches in rank order. Mixture: jpg real (30, weight 2), png generated (45) and raw generated
(20): 125 samples an epoch, global batch 24 = 5 steps an epoch (drop_last), the last 5 samples a partial one.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from loaders.batch.loader import LOADER_STATE_VERSION, TrainBatch, TrainLoader
from loaders.batch.params import augment_rng
from loaders.recipe.augment import preset
from loaders.recipe.mixture import parse_shards_args
from shards.base.errors import ConfigError

GLOBAL_BATCH = 24
SEED = 3


@pytest.fixture(scope="module")
def mixture(small_shards):
    return parse_shards_args([f"{small_shards['real']}:2", f"{small_shards['gen']}:1", f"{small_shards['raw']}:1"])


def loaders(mixture, recipe: str, world: int, **kw) -> list[TrainLoader]:
    return [
        TrainLoader(mixture, preset(recipe), GLOBAL_BATCH, seed=SEED, rank=r, world_size=world, num_threads=1, **kw)
        for r in range(world)
    ]


def joined(parts: list[TrainBatch]) -> TrainBatch:
    """The global batch of one step: the ranks' batches of that step in rank order."""
    assert len({(b.epoch, b.step) for b in parts}) == 1, "the ranks delivered different steps"
    return TrainBatch(
        [torch.cat([b.views[v] for b in parts]) for v in range(len(parts[0].views))],
        torch.cat([b.labels for b in parts]),
        torch.cat([b.source for b in parts]),
        torch.cat([b.index for b in parts]),
        parts[0].epoch,
        parts[0].step,
    )


def steps(ranks: list[TrainLoader], n: int) -> list[TrainBatch]:
    """``n`` global batches of a run on ``len(ranks)`` processes from the loaders' positions (across epochs)."""
    streams = [r.batches() for r in ranks]
    try:
        return [joined(list(parts)) for parts in itertools.islice(zip(*streams), n)]
    finally:
        for s in streams:
            s.close()


@pytest.mark.parametrize("recipe", ["simclr", "byol"])
def test_one_two_and_four_processes_give_bitwise_the_same_global_batches(mixture, recipe, same_batches):
    one = steps(loaders(mixture, recipe, 1), 7)  # epoch 0's 5 steps and 2 of epoch 1
    assert [(b.epoch, b.step) for b in one] == [(0, k) for k in range(5)] + [(1, 0), (1, 1)]
    assert all(len(b) == GLOBAL_BATCH for b in one)
    for world in (2, 4):
        ranks = loaders(mixture, recipe, world)
        assert all(r.local_batch_size == GLOBAL_BATCH // world and r.steps_per_epoch == 5 for r in ranks)
        same_batches(one, steps(ranks, 7))


def test_a_partial_last_batch_is_split_over_the_ranks_too(mixture, same_batches):
    """Without drop_last the epoch's last 5 samples are a global batch of 5: ranks get 2 + 3, or 1 + 1 + 1 + 2."""
    one = [joined([b]) for b in loaders(mixture, "simclr", 1, drop_last=False)[0].epoch(0)]
    assert [len(b) for b in one] == [24] * 5 + [5]
    for world in (2, 4):
        per_rank = [list(r.epoch(0)) for r in loaders(mixture, "simclr", world, drop_last=False)]
        same_batches(one, [joined(list(parts)) for parts in zip(*per_rank)])


@pytest.mark.parametrize("resumed_on", [2, 1])
def test_a_position_saved_on_four_processes_continues_exactly_on_fewer(mixture, resumed_on, same_batches):
    uninterrupted = steps(loaders(mixture, "simclr", 1), 8)
    four = loaders(mixture, "simclr", 4)
    head = steps(four, 3)
    same_batches(uninterrupted[:3], head)
    states = [json.loads(json.dumps(r.state_dict())) for r in four]
    assert all(s == states[0] for s in states)  # the position of the global order: the same on every rank
    assert (states[0]["epoch"], states[0]["step"], states[0]["batch_size"]) == (0, 3, GLOBAL_BATCH)
    assert states[0]["version"] == LOADER_STATE_VERSION and states[0]["world_size"] == 4
    fewer = loaders(mixture, "simclr", resumed_on)
    for r in fewer:
        r.load_state_dict(states[0])
    same_batches(uninterrupted[3:], steps(fewer, 5))  # steps 3, 4 of epoch 0 and 0-2 of epoch 1


def test_a_position_saved_on_one_process_continues_on_four(mixture, same_batches):
    uninterrupted = steps(loaders(mixture, "byol", 1), 6)
    one = loaders(mixture, "byol", 1)
    steps(one, 4)
    four = loaders(mixture, "byol", 4)
    for r in four:
        r.load_state_dict(one[0].state_dict())
    same_batches(uninterrupted[4:], steps(four, 2))


def test_version_one_states_are_read_from_one_process_and_refused_from_several(mixture, same_batches):
    """Version 1 (no ``version`` key) kept each rank's own batch size and drew views per rank: one process's
    state is this version's position (rank 0 drew the whole batch), several processes' cannot be continued."""
    uninterrupted = steps(loaders(mixture, "simclr", 1), 5)
    v1 = {"epoch": 0, "step": 2, "seed": SEED, "batch_size": GLOBAL_BATCH, "world_size": 1}
    two = loaders(mixture, "simclr", 2)
    for r in two:
        r.load_state_dict(v1)
    same_batches(uninterrupted[2:], steps(two, 3))
    with pytest.raises(ConfigError) as e:  # a two-process version 1 run: 12 a rank, its own slices and draws
        loaders(mixture, "simclr", 2)[0].load_state_dict({**v1, "batch_size": 12, "world_size": 2})
    assert "version 1" in str(e.value) and "2 processes" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="version 3 is newer"):
        loaders(mixture, "simclr", 1)[0].load_state_dict({**v1, "version": 3})


def test_a_resume_that_changes_the_global_batch_is_refused_in_one_line(mixture):
    state = loaders(mixture, "simclr", 2)[0].state_dict()
    other = TrainLoader(mixture, preset("simclr"), 2 * GLOBAL_BATCH, seed=SEED, rank=0, world_size=4)
    with pytest.raises(ConfigError) as e:
        other.load_state_dict(state)
    assert f"--batch-size {GLOBAL_BATCH}" in str(e.value) and "\n" not in str(e.value)


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(mixture):
    with pytest.raises(ConfigError, match="does not split over 5 processes"):
        TrainLoader(mixture, preset("simclr"), GLOBAL_BATCH, rank=0, world_size=5)


def test_the_draws_of_a_step_are_version_one_rank_zero_draws():
    """Why a one-process version 1 state is continued exactly: its rank 0 drew the whole batch from the key
    ``(seed, epoch, 0, step)``, which is this version's key of the global batch."""
    for seed, epoch, step in [(0, 0, 0), (3, 5, 17), (2**40, 1, 99)]:
        # version 1's key: its stream constant, seed, epoch, rank, step
        v1 = np.random.Generator(np.random.Philox(np.random.SeedSequence([0x41756741, seed, epoch, 0, step])))
        assert np.array_equal(augment_rng(seed, epoch, step).random(64), v1.random(64))
