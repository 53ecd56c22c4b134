"""loaders/batch/loader.py: TrainLoader (exact multiplicities, views, labels, determinism and resume, ranks, mixed
sources, where the pipeline runs, its threads) and EvalLoader, on the CPU backend and tiny shards. Its feed across
epochs: test_loaders_feed.py; corrupt samples: test_loaders_corrupt_samples.py; on a GPU: test_loaders_gpu.py."""

import collections
import json

import pytest
import torch

from loaders.batch.graph import train_pipeline
from loaders.batch.loader import EvalLoader, TrainLoader
from loaders.recipe.augment import CIFAR_MEAN, CIFAR_STD, AugConfig, ViewAug, preset
from loaders.recipe.mixture import parse_shards_args
from shards.base.errors import ConfigError


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


def normalised(img) -> torch.Tensor:
    """An HWC uint8 image as the loaders deliver it: CHW float, CIFAR-normalised."""
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    return (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - mean) / std


def key_counts(loader, epoch=0, **kw):
    c = collections.Counter()
    for b in loader.epoch(epoch, **kw):
        c.update(loader.keys_for(b))
    return c


# -- training loader ----------------------------------------------------------------------------
def test_exact_multiplicities_through_dali(data):
    m = parse_shards_args([f"{data['real']}:3", f"{data['gen']}:1"])
    loader = TrainLoader(m, preset("simclr"), 16, drop_last=False)
    assert loader.samples_per_epoch == 135 and loader.steps_per_epoch == 9
    c = key_counts(loader)
    assert sum(c.values()) == 135
    assert all(c[f"real/{i:06d}"] == 3 for i in range(30)) and all(c[f"gen/{i:06d}"] == 1 for i in range(45))
    assert loader.stats.samples == 135


def test_fractional_multiplicities_through_dali(data, plain_view):
    m = parse_shards_args([f"{data['real']}:1.5", f"{data['gen']}:0.4"])
    loader = TrainLoader(m, AugConfig((plain_view,)), 10, drop_last=False)
    c = key_counts(loader, epoch=1)
    real = [c[f"real/{i:06d}"] for i in range(30)]
    gen = [c[f"gen/{i:06d}"] for i in range(45)]
    assert set(real) <= {1, 2} and set(gen) <= {0, 1}
    assert abs(sum(real) - 45) < 1 and abs(sum(gen) - 18) < 1
    assert sum(c.values()) == loader.samples_per_epoch


def test_views_shapes_dtypes_ranges_and_mixing(data):
    m = parse_shards_args([f"{data['real']}:2", f"{data['gen']}:1"])
    loader = TrainLoader(m, preset("byol"), 15, seed=1)
    assert loader.steps_per_epoch == 105 // 15
    lo = min((0 - mu) / sd for mu, sd in zip(CIFAR_MEAN, CIFAR_STD))
    hi = max((1 - mu) / sd for mu, sd in zip(CIFAR_MEAN, CIFAR_STD))
    n = 0
    for b in loader.epoch(0):
        assert len(b.views) == 2
        for v in b.views:
            assert v.shape == (15, 3, 32, 32) and v.dtype == torch.float32
            assert v.min() >= lo - 1e-3 and v.max() <= hi + 1e-3
        assert b.labels.dtype == torch.int64 and b.source.dtype == torch.int64
        assert ((b.labels == -1) == (b.source == 1)).all() and (b.labels[b.source == 0] >= 0).all()
        # 60 real of 105: each batch of 15 holds 15*60/105 = 8.57 ± 2 real samples
        assert abs(int((b.source == 0).sum()) - 15 * 60 / 105) < 2
        n += 1
    assert n == loader.steps_per_epoch


def test_labels_match_the_shards(data, plain_view):
    m = parse_shards_args([f"{data['real']}:1"])
    loader = TrainLoader(m, AugConfig((plain_view,)), 10)
    for b in loader.epoch(0):
        assert (b.labels == b.index % 10).all()  # helper labels sample i with i % 10


def test_bf16_channels_last_and_tensor_ownership(data):
    m = parse_shards_args([f"{data['gen']}:1"])
    loader = TrainLoader(m, preset("simclr"), 9, dtype=torch.bfloat16, channels_last=True)
    batches = list(loader.epoch(0))
    assert len(batches) == 5
    v = batches[0].views[0]
    assert v.shape == (9, 3, 32, 32) and v.dtype == torch.bfloat16
    assert v.is_contiguous(memory_format=torch.channels_last)
    kept = [b.views[0].clone() for b in batches]
    assert all(torch.equal(a, b.views[0]) for a, b in zip(kept, batches))  # not overwritten later
    assert not torch.equal(batches[0].views[0], batches[1].views[0])


def test_full_area_crop_gives_the_full_image(data, plain_view, sample_image):
    m = parse_shards_args([f"{data['gen']}:1"])
    loader = TrainLoader(m, AugConfig((plain_view,)), 5)
    b = next(iter(loader.epoch(0)))
    for k, i in enumerate(b.index.tolist()):
        assert torch.allclose(b.views[0][k], normalised(sample_image(i, seed=1)), atol=2e-2)


def test_augmentation_strength_changes_outputs(data, plain_view):
    m = parse_shards_args([f"{data['gen']}:1"])

    def distance(aug):
        loader = TrainLoader(m, aug, 45, seed=0)
        b = next(iter(loader.epoch(0)))
        clean = next(iter(TrainLoader(m, AugConfig((plain_view,)), 45, seed=0).epoch(0))).views[0]
        return (b.views[0] - clean).abs().mean().item()

    plain, weak, strong = (
        distance(AugConfig((plain_view,))),
        distance(preset("symmetric_adainf", num_views=1)),
        distance(preset("symmetric", num_views=1)),
    )
    assert plain == 0.0
    assert strong > weak > 0.05
    # each op alone visibly changes images
    jitters = [
        {"jitter_p": 1.0, k: v} for k, v in (("brightness", 0.8), ("contrast", 0.8), ("saturation", 0.8), ("hue", 0.2))
    ]
    for kw in ({"gray_p": 1.0}, {"solarize_p": 1.0}, {"blur_p": 1.0}, {"flip_p": 1.0}, *jitters):
        assert distance(AugConfig((ViewAug(**{**plain_view.__dict__, **kw}),))) > 0.01, kw


def test_determinism_and_resume_in_a_fresh_loader(data, same_batches):
    """One seed, one epoch: two loaders agree; a state_dict taken mid-epoch (through JSON) resumes in a fresh
    loader with bitwise the uninterrupted batches; a state at an epoch's end resumes at the next epoch's start."""
    m = parse_shards_args([f"{data['real']}:2", f"{data['gen']}:1"])
    aug = preset("simclr")
    a = TrainLoader(m, aug, 10, seed=7)
    full = list(a.epoch(1))
    run1 = [(a.keys_for(b), b.views[0]) for b in full]
    b_ = TrainLoader(m, aug, 10, seed=7)
    run2 = [(b_.keys_for(b), b.views[0]) for b in b_.epoch(1)]
    assert [k for k, _ in run1] == [k for k, _ in run2]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(run1, run2))
    # stop after 4 steps, save, resume in a fresh loader: the same next batches, bitwise
    c = TrainLoader(m, aug, 10, seed=7)
    it = c.epoch(1)
    head = [next(it) for _ in range(4)]
    same_batches(head, full[:4])
    state = c.state_dict()
    assert (state["epoch"], state["step"]) == (1, 4)
    d = TrainLoader(m, aug, 10, seed=7)
    d.load_state_dict(json.loads(json.dumps(state)))
    rest = list(d.epoch())
    assert [d.keys_for(b) for b in rest] == [k for k, _ in run1][4:]
    same_batches(rest, full[4:])
    assert (d.state_dict()["epoch"], d.state_dict()["step"]) == (2, 0)  # after an epoch's last batch: the next one
    # a state saved at the end of an epoch resumes at the next epoch's start
    e = TrainLoader(m, aug, 10, seed=7)
    e.load_state_dict(d.state_dict())
    assert [e.keys_for(b) for b in e.epoch()][0] == next(iter([a.keys_for(b) for b in a.epoch(2)]))
    with pytest.raises(ConfigError, match="batch_size"):
        TrainLoader(m, aug, 5, seed=7).load_state_dict(state)


@pytest.mark.parametrize("recipe", ["simclr", "byol"])
def test_resumed_epoch_is_bitwise_the_uninterrupted_one(data, recipe, same_batches):
    m = parse_shards_args([f"{data['real']}:2", f"{data['gen']}:1", f"{data['raw']}:1"])  # jpg + png + raw
    aug = preset(recipe)
    full = list(TrainLoader(m, aug, 12, seed=3, drop_last=False).epoch(0))
    assert len(full) == 11  # 125 samples: 10 full batches and a partial one
    for k in (1, 6, 10):
        same_batches(full[k:], list(TrainLoader(m, aug, 12, seed=3, drop_last=False).epoch(0, start_step=k)))


def test_ranks_disjoint_and_complete(data, plain_view):
    m = parse_shards_args([f"{data['real']}:2", f"{data['gen']}:1"])  # 105 samples
    per_rank = []
    for r in range(3):  # the global batch of 21: 7 samples a rank, a window of the global order a step
        loader = TrainLoader(m, AugConfig((plain_view,)), 21, rank=r, world_size=3, drop_last=False)
        per_rank.append([[(s, i) for s, i in zip(b.source.tolist(), b.index.tolist())] for b in loader.epoch(0)])
    assert [sum(map(len, p)) for p in per_rank] == [35, 35, 35]
    plan = TrainLoader(m, AugConfig((plain_view,)), 21).plan(0)
    steps = [sum((per_rank[r][k] for r in range(3)), []) for k in range(5)]  # step k: rank 0's, 1's, 2's parts
    assert sum(steps, []) == list(zip(plan.source.tolist(), plan.index.tolist()))


def test_raw_and_encoded_sources_mix(data, plain_view, sample_image):
    m = parse_shards_args([f"{data['raw']}:1", f"{data['gen']}:1"])
    loader = TrainLoader(m, AugConfig((plain_view,)), 13, drop_last=False)
    seen = 0
    for b in loader.epoch(0):
        for k, (s, i) in enumerate(zip(b.source.tolist(), b.index.tolist())):
            want = normalised(sample_image(i, seed=2 if s == 0 else 1))
            assert torch.allclose(b.views[0][k], want, atol=2e-2)
            seen += 1
    assert seen == 65


@pytest.mark.parametrize("prefetch", [2, 0])
def test_the_colour_stage_threads_never_reach_the_training_thread(data, prefetch):
    """torch.set_num_threads in the prefetch thread also sets the default a thread takes at its first parallel op:
    it once left train.py's step on one core of two. The consuming thread (a fresh one, as a fresh process's main
    thread) and threads started later keep the process's count; with no prefetch thread nothing is changed."""
    import threading

    seen = {}

    def consume():
        loader = TrainLoader(parse_shards_args([f"{data['real']}:1"]), preset("simclr"), 10, prefetch_batches=prefetch)
        batches = loader.batches()
        next(batches), next(batches)
        seen["consumer"] = torch.get_num_threads()
        later = threading.Thread(target=lambda: seen.update(later=torch.get_num_threads()))
        later.start(), later.join()
        batches.close()

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not the stage's 1, so a leak shows
    try:
        thread = threading.Thread(target=consume)
        thread.start(), thread.join()
    finally:
        torch.set_num_threads(before)
    assert seen == {"consumer": 3, "later": 3}


def test_raw_sets_of_different_sizes_mix(tmp_path, plain_view, shard_factory):
    a = shard_factory(tmp_path, "a", 12, fmt="raw", size=32)
    b = shard_factory(tmp_path, "b", 12, fmt="raw", size=48, kind="generated", seed=1)
    loader = TrainLoader(parse_shards_args([str(a), str(b)]), AugConfig((plain_view,)), 8, drop_last=False)
    assert loader.table.mode == "mixed"
    batches = list(loader.epoch(0))
    assert sum(len(x) for x in batches) == 24 and all(x.views[0].shape[1:] == (3, 32, 32) for x in batches)


# -- where the pipeline runs --------------------------------------------------------------------------
def test_loader_device_choices(data, plain_view):
    m = parse_shards_args([str(data["gen"])])
    assert TrainLoader(m, AugConfig((plain_view,)), 8).loader_device == "cpu"  # auto on a CPU model
    with pytest.raises(ValueError, match="--loader-device tpu"):
        TrainLoader(m, AugConfig((plain_view,)), 8, loader_device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--loader-device cpu"):
            TrainLoader(m, AugConfig((plain_view,)), 8, loader_device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the start-up failure of a GPU pipeline without a GPU")
def test_a_gpu_pipeline_that_cannot_start_is_one_clear_line(data):
    loader = TrainLoader(parse_shards_args([str(data["gen"])]), preset("simclr"), 8)
    feed = loader.feed(iter([]))
    with pytest.raises(ConfigError) as e:
        train_pipeline(
            feed, loader.table.mode, [32, 32], relative=False, batch_size=8, device="gpu", device_id=0, num_threads=1
        )
    msg = str(e.value)
    assert "GPU loader pipeline failed to start" in msg and "--loader-device cpu" in msg
    assert "\n" not in msg


# -- evaluation loader --------------------------------------------------------------------------
def test_eval_loader_every_sample_once(data, sample_image):
    ev = EvalLoader([data["test"]], 8)
    assert len(ev) == 3
    labels, n = [], 0
    for x, y in ev:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        for k in range(len(y)):  # sample n + k, in shard order, exactly as stored (PNG: lossless)
            assert torch.allclose(x[k], normalised(sample_image(n + k, seed=3)), atol=1e-4), n + k
        labels += y.tolist()
        n += len(y)
    assert n == 23 and labels == [i % 10 for i in range(23)]


def test_eval_loader_resizes(tmp_path, shard_factory, sample_image):
    """48×48 images of 4×4 colour blocks (12 px each) resized to 32: blocks of 8 px whose centres keep the
    block's colour (a crop or a wrong scale would move them)."""
    src = shard_factory(tmp_path, "big", 5, fmt="png", size=48, split="test")
    x, y = next(iter(EvalLoader(src, 5, size=32)))
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 1, 2, 3, 4]
    for i in range(5):
        blocks = normalised(sample_image(i, size=4))  # the 4×4 block colours
        for r in (3, 4):
            for c in (3, 4):
                assert torch.allclose(x[i, :, r::8, c::8], blocks, atol=2e-2), (i, r, c)


def test_eval_loader_limit_is_a_fixed_subset_across_classes(tmp_path, shard_factory):
    """A class-ordered test set (4 samples per class, classes 0…9 in turn): the first 10 samples would hold
    classes 0-2 only; the limited loader keeps a fixed subset spread over the classes, in shard order, each
    image the one the full loader gives at that position."""
    src = shard_factory(
        tmp_path, "ordered", 40, fmt="png", split="test", shard_size=16, labels=[i // 4 for i in range(40)]
    )
    full_x, full_y = (torch.cat(t) for t in zip(*EvalLoader(src, 16)))
    sub_x, sub_y = (torch.cat(t) for t in zip(*EvalLoader(src, 4, limit=10)))
    again_x, again_y = (torch.cat(t) for t in zip(*EvalLoader(src, 4, limit=10)))
    assert len(full_y) == 40 and len(sub_y) == 10
    assert torch.equal(sub_x, again_x) and torch.equal(sub_y, again_y)  # fixed
    pos = [int(torch.flatten(((full_x - img).abs().amax(dim=(1, 2, 3)) < 1e-5).nonzero())[0]) for img in sub_x]
    assert pos == sorted(set(pos))  # distinct samples, in shard order
    assert torch.equal(sub_y, full_y[pos])
    assert len(set(sub_y.tolist())) >= 5 and pos != list(range(10))
    other = torch.cat([x for x, _ in EvalLoader(src, 4, limit=10, seed=1)])
    assert len(other) == 10 and not torch.equal(other, sub_x)  # the seed picks the subset
