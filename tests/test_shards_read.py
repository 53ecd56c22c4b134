"""Reading one set (shards/read): the index (DALI's format, both parsers, the stale-index advice), the loader's index
cache (hits, misses, atomic writes, read-only folders) and the labels SourceReader parses once."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.base.errors import ShardError
from shards.format.manifest import Manifest
from shards.packing.pack import PackConfig, pack
from shards.read.index import cache_paths, read_index
from shards.read.reader import SourceReader


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


def img(seed, size=(8, 10)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_index_equals_dalis_wds2idx(tmp_path):
    arr = np.stack([img(i, (5, 7)) for i in range(7)])
    np.savez(tmp_path / "a.npz", image=arr, label=np.arange(7) % 3)
    pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "s", format="png", shard_size=4, progress=False))
    m = Manifest.load(tmp_path / "s")
    assert [s.count for s in m.shards] == [4, 3]
    for s in m.shards:
        dali_idx = tmp_path / (s.file + ".dali.idx")
        subprocess.run(
            [sys.executable, "-m", "wds2idx", str(tmp_path / "s" / s.file), str(dali_idx)],
            check=True,
            capture_output=True,
        )
        assert dali_idx.read_text() == (tmp_path / "s" / s.index).read_text()
        ours = read_index(tmp_path / "s" / s.index)
        data = (tmp_path / "s" / s.file).read_bytes()
        first = data[ours.offsets["png"][0] : ours.offsets["png"][0] + ours.sizes["png"][0]]
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(first))), arr[int(ours.keys[0].rsplit("/", 1)[-1])]
        )  # keys are NAME/POSITION


def test_labels_are_parsed_once_per_set(data):
    r = SourceReader(data["real"], Manifest.load(data["real"]))
    assert r.labels.tolist() == [i % 10 for i in range(30)]
    g = SourceReader(data["gen"], Manifest.load(data["gen"]))
    assert (g.labels == -1).all() and (g.verdict == 0).all()


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
    from shards.read.index import parse_index_lines, parse_uniform_index

    src = fresh_set
    idx = src / Manifest.load(src).shards[0].index
    text = idx.read_text()
    body = text.partition("\n")[2]
    fast, slow = parse_uniform_index(body, 10), parse_index_lines(idx, body.splitlines())
    assert fast is not None and fast.keys.tolist() == slow.keys.tolist() and set(fast.offsets) == set(slow.offsets)
    assert all(
        np.array_equal(fast.offsets[e], slow.offsets[e]) and np.array_equal(fast.sizes[e], slow.sizes[e])
        for e in slow.offsets
    )
    lines = body.splitlines()
    lines[4] = " ".join(lines[4].split()[4:] + lines[4].split()[:4])  # another member order on one line
    assert parse_uniform_index("\n".join(lines) + "\n", 10) is None
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
