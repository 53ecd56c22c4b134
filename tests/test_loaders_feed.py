"""loaders/batch/feed.py, the feed behind TrainLoader.batches(): one pipeline across epochs, the state of what was
delivered, resume at any position, the prefetch thread, errors in order. The index cache: test_shards_read.py;
the batch gathering: test_loaders_table.py."""

import json

import numpy as np
import pytest

import loaders.batch.loader as loader_module
from loaders.batch.loader import TrainLoader
from loaders.recipe.augment import AugConfig, preset
from loaders.recipe.mixture import parse_shards_args
from shards.base.errors import ShardError


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


def take(it, n):
    return [next(it) for _ in range(n)]


def mixture(data):
    return parse_shards_args([f"{data['real']}:2", f"{data['gen']}:1", f"{data['raw']}:1"])  # jpg + png + raw


# -- one pipeline, across epochs -------------------------------------------------------------------
def test_batches_run_across_epochs_through_one_pipeline(data, monkeypatch, same_batches):
    m, aug = mixture(data), preset("simclr")
    per_epoch = [list(TrainLoader(m, aug, 12, seed=3).epoch(e)) for e in range(3)]
    steps = TrainLoader(m, aug, 12, seed=3).steps_per_epoch
    assert steps == 10 and all(len(p) == steps for p in per_epoch)  # 125 samples, drop_last
    builds = []
    real_build = loader_module.train_pipeline
    monkeypatch.setattr(loader_module, "train_pipeline", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    loader = TrainLoader(m, aug, 12, seed=3)
    it = loader.batches()
    got = take(it, 3 * steps)
    same_batches(got, sum(per_epoch, []))
    assert [(b.epoch, b.step) for b in got[steps - 1 : steps + 1]] == [(0, steps - 1), (1, 0)]
    assert len(builds) == 1  # no rebuild at the epoch boundaries
    assert loader.stats.batches == 3 * steps and loader.stats.samples == 3 * steps * 12
    it.close()


def test_state_is_what_was_delivered_not_prefetched(data):
    m = mixture(data)
    loader = TrainLoader(m, preset("simclr"), 12, seed=3, prefetch_batches=3)
    it = loader.batches()
    assert loader.state_dict()["epoch"] == 0 and loader.state_dict()["step"] == 0
    for e, k in [(0, k) for k in range(10)] + [(1, 0), (1, 1)]:
        b = next(it)
        assert (b.epoch, b.step) == (e, k)
        want = (e, k + 1) if k + 1 < loader.steps_per_epoch else (e + 1, 0)
        assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == want
    it.close()


@pytest.mark.parametrize("state", [(0, 3), (0, 9), (1, 0), (0, 10), (1, 9)])
def test_resume_from_any_position_is_bitwise_the_uninterrupted_run(data, state, same_batches):
    """(0, 9) is an epoch's last batch, (1, 0) the next one's first, (0, 10) an old-style end-of-epoch state."""
    m, aug = mixture(data), preset("byol")
    it = TrainLoader(m, aug, 12, seed=5).batches()
    full = take(it, 25)
    it.close()
    loader = TrainLoader(m, aug, 12, seed=5)
    loader.load_state_dict(json.loads(json.dumps({"epoch": state[0], "step": state[1], "seed": 5, "batch_size": 12})))
    start = state[0] * 10 + state[1]
    it = loader.batches()
    same_batches(take(it, 25 - start), full[start:])
    it.close()


def test_interrupted_at_the_boundary_then_resumed(data, same_batches):
    """Stop right after an epoch's last batch (state (1, 0)), save, resume in a fresh loader."""
    m, aug = mixture(data), preset("simclr-adainf")
    it = TrainLoader(m, aug, 12, seed=1).batches()
    full = take(it, 14)
    it.close()
    a = TrainLoader(m, aug, 12, seed=1)
    it = a.batches()
    take(it, 10)
    state = a.state_dict()
    it.close()
    assert (state["epoch"], state["step"]) == (1, 0)
    b = TrainLoader(m, aug, 12, seed=1)
    b.load_state_dict(state)
    it = b.batches()
    same_batches(take(it, 4), full[10:])
    it.close()


def test_prefetch_thread_and_calling_thread_give_the_same_batches(data, same_batches):
    m, aug = mixture(data), preset("simclr")
    a = list(TrainLoader(m, aug, 12, seed=2, prefetch_batches=0, drop_last=False).epoch(1))
    b = list(TrainLoader(m, aug, 12, seed=2, prefetch_batches=4, drop_last=False).epoch(1))
    same_batches(a, b)
    assert len(a) == 11 and len(a[-1]) == 125 - 120  # the partial last batch


def test_an_error_in_the_feed_reaches_the_consumer_in_order(tmp_path, plain_view, shard_factory, corrupt_sample):
    src = shard_factory(tmp_path, "bad", 40, fmt="png", shard_size=10, seed=4)
    corrupt_sample(src, 2, 3)
    loader = TrainLoader(parse_shards_args([str(src)]), AugConfig((plain_view,)), 8, prefetch_batches=2)
    bad = int(np.flatnonzero(loader.plan(0).index == 23)[0]) // 8  # the batch holding sample 23 (shard 2, #3)
    it = loader.batches()
    for k in range(bad):
        assert next(it).step == k
    with pytest.raises(ShardError, match="bad-00002.tar"):
        next(it)
