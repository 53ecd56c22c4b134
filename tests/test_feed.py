"""The feed: one pipeline across epochs (batches()), resume at any position, the prefetch thread, the index
cache, the batch gathering and the start-up of a GPU pipeline that cannot run."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import loaders.batch.loader as loader_module
from loaders.batch.graph import train_pipeline
from loaders.batch.loader import TrainLoader
from loaders.batch.table import SampleTable
from loaders.recipe.augment import AugConfig, preset
from loaders.recipe.mixture import parse_shards_args
from shards.base.errors import ConfigError, ShardError
from shards.format.manifest import Manifest
from shards.read.index import cache_paths, read_index
from shards.read.reader import SourceReader


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


# -- batch gathering ----------------------------------------------------------------------------------
def test_one_take_and_the_per_sample_copy_gather_the_same_bytes(data):
    sources = [(n, data[k], Manifest.load(data[k])) for n, k in (("r", "real"), ("g", "gen"), ("w", "raw"))]
    fast, slow = SampleTable(sources, "error"), SampleTable(sources, "error", contiguous=False)
    assert fast.region is not None and slow.region is None and fast.mode == "mixed"
    rng = np.random.default_rng(0)
    source = rng.integers(0, 3, 40)
    index = np.array([rng.integers(0, [30, 45, 20][s]) for s in source])
    sel = fast.select(source, index)
    assert sel.keep is None and sel.error is None
    (a, spans), (b, spans_b) = fast.gather(sel.ids, source), slow.gather(sel.ids, source)
    assert np.array_equal(spans, spans_b)
    ppm = b"P6\n32 32\n255\n"  # a raw sample of a mixed batch: a PPM header in front of its pixels
    for j, (s, i) in enumerate(zip(source, index)):
        start, n = spans[j]
        want = fast.readers[s].bytes_of(i).tobytes()
        want = ppm + want if s == 2 else want
        assert a[j, start : start + n].tobytes() == want and b[j, start : start + n].tobytes() == want


def test_raw_batches_arrive_as_one_hwc_array(data, sample_image):
    r = SampleTable([("w", data["raw"], Manifest.load(data["raw"]))], "error")
    assert r.mode == "raw"
    [images] = r.gather(np.array([3, 0, 19]), np.zeros(3, np.int64))
    assert images.shape == (3, 32, 32, 3) and images.flags.c_contiguous
    assert all(np.array_equal(images[j], sample_image(i, seed=2)) for j, i in enumerate([3, 0, 19]))


def test_labels_are_parsed_once_per_set(data):
    r = SourceReader(data["real"], Manifest.load(data["real"]))
    assert r.labels.tolist() == [i % 10 for i in range(30)]
    g = SourceReader(data["gen"], Manifest.load(data["gen"]))
    assert (g.labels == -1).all() and (g.verdict == 0).all()


def test_raw_sets_of_different_sizes_mix(tmp_path, plain_view, shard_factory):
    a = shard_factory(tmp_path, "a", 12, fmt="raw", size=32)
    b = shard_factory(tmp_path, "b", 12, fmt="raw", size=48, kind="generated", seed=1)
    loader = TrainLoader(parse_shards_args([str(a), str(b)]), AugConfig((plain_view,)), 8, drop_last=False)
    assert loader.table.mode == "mixed"
    batches = list(loader.epoch(0))
    assert sum(len(x) for x in batches) == 24 and all(x.views[0].shape[1:] == (3, 32, 32) for x in batches)


# -- the index cache ------------------------------------------------------------------------------------
@pytest.fixture
def fresh_set(tmp_path, shard_factory):
    """A new jpg set of 30 samples (shards of 10, seed 7) in this test's tmp_path: no index cache yet."""
    return shard_factory(tmp_path, "c", 30, fmt="jpg", shard_size=10, seed=7)


def test_a_second_open_reads_the_cache(tmp_path, monkeypatch, fresh_set):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    src = fresh_set
    m = Manifest.load(src)
    first = SourceReader(src, m)
    assert all(cache_paths(src / s.index)[0].is_file() for s in m.shards)
    import shards.read.reader as reader

    monkeypatch.setattr(reader, "read_index", lambda p: pytest.fail(f"parsed {p} again"))
    monkeypatch.setattr(reader, "check_members", lambda *a, **k: pytest.fail("checked again"))
    second = SourceReader(src, m)
    for k in ("keys", "offsets", "sizes", "labels", "verdict", "shard_of"):
        assert np.array_equal(getattr(first, k), getattr(second, k)), k


def test_a_changed_tar_or_index_is_parsed_again(tmp_path, monkeypatch, fresh_set):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    src = fresh_set
    m = Manifest.load(src)
    SourceReader(src, m)
    tar = src / m.shards[1].file
    st = os.stat(tar)
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "re-written"
    import shards.read.reader as reader

    parsed = []
    real = reader.read_index
    monkeypatch.setattr(reader, "read_index", lambda p: parsed.append(p.name) or real(p))
    SourceReader(src, m)
    assert parsed == [m.shards[1].index]


def test_a_broken_cache_is_a_miss(tmp_path, monkeypatch, fresh_set):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    src = fresh_set
    m = Manifest.load(src)
    want = SourceReader(src, m).labels
    cache_paths(src / m.shards[0].index)[0].write_bytes(b"not a zip")
    assert np.array_equal(SourceReader(src, m).labels, want)


def test_a_read_only_shard_folder_uses_the_user_cache_or_none(tmp_path, monkeypatch, fresh_set):
    """Read-only places are simulated (the tests may run as root, which ignores permissions)."""
    import errno
    import tempfile

    import shards.read.index as index

    src = fresh_set
    m = Manifest.load(src)
    user = tmp_path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user))
    read_only = {src}
    real_mkstemp = tempfile.mkstemp

    def mkstemp(dir=None, **kw):
        if any(Path(dir) == p or p in Path(dir).parents for p in read_only):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(dir=dir, **kw)

    monkeypatch.setattr(index.tempfile, "mkstemp", mkstemp)
    want = SourceReader(src, m, cache=False).labels
    r = SourceReader(src, m)
    assert np.array_equal(r.labels, want) and not cache_paths(src / m.shards[0].index)[0].exists()
    assert all(cache_paths(src / s.index)[1].is_file() for s in m.shards)  # the user's cache folder
    assert np.array_equal(SourceReader(src, m).labels, want)  # and read back from there
    for s in m.shards:
        cache_paths(src / s.index)[1].unlink()
    read_only.add(user)
    assert np.array_equal(SourceReader(src, m).labels, want)  # nowhere writable: no cache, no error
    assert not any(cache_paths(src / s.index)[1].exists() for s in m.shards)


def test_cache_writes_are_atomic_under_unique_names(tmp_path, monkeypatch, fresh_set):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    src = fresh_set
    m = Manifest.load(src)
    SourceReader(src, m)
    SourceReader(src, m, cache=True)
    leftovers = [p.name for p in src.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    from shards.verify import verify_dir

    assert verify_dir(src, workers=1) == []  # the cache files do not upset `shards verify`


# -- index parsing and its messages -----------------------------------------------------------------------
def test_fast_and_line_by_line_parsers_agree(fresh_set):
    from shards.read.index import _parse_lines, _parse_uniform

    src = fresh_set
    idx = src / Manifest.load(src).shards[0].index
    text = idx.read_text()
    body = text.partition("\n")[2]
    fast, slow = _parse_uniform(body, 10), _parse_lines(idx, body.splitlines())
    assert fast is not None and fast.keys.tolist() == slow.keys.tolist() and set(fast.offsets) == set(slow.offsets)
    assert all(
        np.array_equal(fast.offsets[e], slow.offsets[e]) and np.array_equal(fast.sizes[e], slow.sizes[e])
        for e in slow.offsets
    )
    lines = body.splitlines()
    lines[4] = " ".join(lines[4].split()[4:] + lines[4].split()[:4])  # another member order on one line
    assert _parse_uniform("\n".join(lines) + "\n", 10) is None
    idx.write_text(text.partition("\n")[0] + "\n" + "\n".join(lines) + "\n")
    again = read_index(idx)
    assert again.keys.tolist() == slow.keys.tolist() and np.array_equal(again.offsets["jpg"], slow.offsets["jpg"])


def test_index_advice_only_when_the_index_is_stale(tmp_path, monkeypatch, fresh_set):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    src = fresh_set
    m = Manifest.load(src)
    idx = src / m.shards[0].index
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(["v1.2 9", *lines[1:10]]) + "\n")  # the index lost a sample, the tar did not
    with pytest.raises(ShardError, match="index is stale.*wds2idx") as e:
        SourceReader(src, m, cache=False)
    assert "\n" not in str(e.value)
    other = src / m.shards[1].index
    idx.write_text(other.read_text())  # another tar's index: same count, wrong members
    with pytest.raises(ShardError, match="does not match.*wds2idx"):
        SourceReader(src, m, cache=False)
    idx.write_text("\n".join(lines) + "\n")
    tar = src / m.shards[0].file
    tar.write_bytes(tar.read_bytes()[: -12 * 1024])
    r = SourceReader(src, m, cache=False)  # a truncated tar: its tail samples are damaged, no index advice
    assert (r.verdict[:10] != 0).any() and "`wds2idx" not in r.describe(int(np.flatnonzero(r.verdict)[0]))
    m2 = Manifest.load(src)
    short = src / m2.shards[2].file
    import tarfile

    with tarfile.open(short) as t:  # a tar re-written with fewer samples than the manifest says
        members = [(mm, t.extractfile(mm).read()) for mm in t.getmembers()][:-6]
    with tarfile.open(short, "w", format=tarfile.USTAR_FORMAT) as t:
        import io

        for mm, blob in members:
            t.addfile(mm, io.BytesIO(blob))
    from shards.packing.writer import ShardSetWriter  # noqa: F401 - (the writer's index format is what read_index reads)

    idx2 = src / m2.shards[2].index
    head, *rest = idx2.read_text().splitlines()
    idx2.write_text("\n".join(["v1.2 8", *rest[:8]]) + "\n")
    with pytest.raises(ShardError) as e:
        SourceReader(src, m2, cache=False)
    assert "re-pack" in str(e.value) and "`wds2idx" not in str(e.value)


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
