"""Rotten images never crash the process: they are caught once per set, on the host, before DALI sees them.

The realistic bit rot is a JPEG whose body is flipped (bytes 4 … end−40) while its SOI/EOI markers survive:
it passes a signature check and can take DALI's decoder down with SIGSEGV. The loader runs in a
subprocess here, so a segfault fails the test instead of killing pytest.
"""

import collections
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loaders.batch.loader import TrainLoader
from loaders.recipe.augment import AugConfig, ViewAug
from loaders.recipe.mixture import parse_shards_args
from shards.base.errors import ShardError
from shards.format.manifest import Manifest
from shards.packing.writer import ShardSetWriter
from shards.read.check import BAD_STRUCTURE, OK, check_bytes
from shards.read.reader import SourceReader


def key_counts(loader, epoch=0, **kw):
    c = collections.Counter()
    for b in loader.epoch(epoch, **kw):
        c.update(loader.keys_for(b))
    return c


ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="module")
def cifar_jpegs(sample_image, encode_image) -> list[bytes]:
    """The first 64 real CIFAR-10 JPEGs of the shared archive, or JPEGs made here when it is absent."""
    out = []
    if CIFAR.is_file():
        with tarfile.open(CIFAR) as t:
            for m in t:
                if m.name.endswith(".jpg"):
                    out.append(t.extractfile(m).read())
                    if len(out) == 64:
                        return out
    return [encode_image(sample_image(i), "jpg") for i in range(64)]


def rot(jpeg: bytes) -> bytes:
    """Bytes 4 … end−40 flipped: the markers at both ends intact, the body rotten."""
    b = bytearray(jpeg)
    for i in range(4, len(b) - 40):
        b[i] ^= 0xFF
    return bytes(b)


def with_gap(jpeg: bytes) -> bytes:
    """Four zero bytes between the first two header segments: libjpeg (PIL) skips them, nvImageCodec's parser
    (DALI) rejects them."""
    seg = 4 + ((jpeg[4] << 8) | jpeg[5])  # end of the segment after SOI
    return jpeg[:seg] + b"\0\0\0\0" + jpeg[seg:]


def write_set(out: Path, blobs: list[bytes]) -> Path:
    with ShardSetWriter(out, out.name, kind="real", format="jpg", shard_size=16, classes=tuple("abcdefghij")) as w:
        for i, blob in enumerate(blobs):
            w.add(f"{i:06d}", blob, i % 10, origin=str(i), size=(32, 32))
    return out


ROTTEN = (3, 17, 18, 40, 61)


@pytest.fixture(scope="module")
def rotten_set(tmp_path_factory, cifar_jpegs):
    blobs = list(cifar_jpegs)
    for i in ROTTEN:
        blobs[i] = rot(blobs[i])
    blobs[50] = with_gap(blobs[50])
    return write_set(tmp_path_factory.mktemp("rotten") / "rotten", blobs)


def test_the_checks_catch_what_dali_rejects(cifar_jpegs, sample_image, encode_image):
    good = cifar_jpegs[0]
    assert check_bytes(good, "jpg") == OK
    assert check_bytes(rot(good), "jpg") != OK
    gap = with_gap(good)
    with Image.open(io.BytesIO(gap)) as im:  # PIL alone accepts it ...
        im.load()
    assert check_bytes(gap, "jpg") == BAD_STRUCTURE  # ... the marker walk does not
    png = bytearray(encode_image(sample_image(1), "png"))
    assert check_bytes(bytes(png), "png") == OK
    png[60] ^= 0x01  # one bit of the compressed data: the chunk CRC no longer matches
    assert check_bytes(bytes(png), "png") == BAD_STRUCTURE


def test_verdicts_are_decided_at_open(rotten_set):
    r = SourceReader(rotten_set, Manifest.load(rotten_set))
    assert sorted(np.flatnonzero(r.verdict != OK).tolist()) == sorted([*ROTTEN, 50])


RUN = """
import json, sys
from loaders.recipe.augment import preset
from loaders.recipe.mixture import parse_shards_args
from loaders.batch.loader import TrainLoader
from shards.base.errors import ShardError
src, mode = sys.argv[1], sys.argv[2]
loader = TrainLoader(parse_shards_args([src + ":3"]), preset("simclr"), 16, on_corrupt=mode, num_threads=2,
                     drop_last=False)
seen = []
try:
    for epoch in range(2):
        for b in loader.epoch(epoch):
            seen += loader.keys_for(b)
    print(json.dumps({"ok": True, "seen": seen, "stats": loader.stats.to_dict()}))
except ShardError as e:
    print(json.dumps({"ok": False, "error": str(e), "seen": seen}))
"""


def run_loader(src: Path, mode: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", RUN, str(src), mode], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert r.returncode == 0, f"the loader process died (return code {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_error_mode_names_the_shard_and_sample_in_one_line(rotten_set):
    out = run_loader(rotten_set, "error")
    assert not out["ok"]
    msg = out["error"]
    assert "\n" not in msg and "rotten-0000" in msg and ".tar: sample 0000" in msg and "--on-corrupt skip" in msg
    key = msg.split("sample ")[1].split()[0]
    assert int(key) in (*ROTTEN, 50)


def test_skip_mode_runs_on_without_them_and_counts_them(rotten_set):
    out = run_loader(rotten_set, "skip")
    assert out["ok"]
    bad = {f"rotten/{i:06d}" for i in (*ROTTEN, 50)}
    assert not bad & set(out["seen"])
    assert len(out["seen"]) == 2 * 3 * (64 - len(bad))  # two epochs, weight 3, every good sample
    stats = out["stats"]
    assert stats["corrupt"] == 2 * 3 * len(bad) and set(stats["corrupt_keys"]) == bad


def test_worker_processes_give_the_same_verdicts(rotten_set):
    from shards.read.check import check_members

    m = Manifest.load(rotten_set)
    r = SourceReader(rotten_set, m, cache=False)
    jobs = [
        {
            "tar": str(rotten_set / s.file),
            "ext": "jpg",
            "off": r.offsets[r.shard_of == k],
            "size": r.sizes[r.shard_of == k],
        }
        for k, s in enumerate(m.shards)
    ]
    inline = check_members(jobs, workers=1)
    pooled = check_members(jobs, workers=2, chunk=8)
    assert all(np.array_equal(a, b) for a, b in zip(inline, pooled))
    assert np.array_equal(np.concatenate(inline)[:, 0], r.verdict)
    good = r.verdict == OK
    assert (np.concatenate(inline)[good, 1:3] == 32).all() and (r.hw[good] == 32).all()  # the real (H, W)


# -- a sample that goes bad while the loader runs (the bytes changed after they were checked) --------------
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_a_sample_rotting_during_the_run_is_reported_never_a_crash(tmp_path, mode, shard_factory, corrupt_sample):
    """The tars are mapped; damaging one image in place after the set was opened makes DALI's decoder fail on
    its batch. error: one line naming the sample. skip: the culprit is counted and skipped, a new pipeline goes
    on, and every other sample of the epoch arrives exactly once."""
    import collections

    from loaders.batch.loader import TrainLoader
    from loaders.recipe.augment import AugConfig
    from loaders.recipe.mixture import parse_shards_args

    src = shard_factory(tmp_path, "rot", 48, fmt="png", shard_size=16, seed=7)
    view = ViewAug(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    loader = TrainLoader(parse_shards_args([str(src)]), AugConfig((view,)), 8, on_corrupt=mode, drop_last=False)
    it = loader.epoch(0)
    first = next(it)  # the set is open and checked; now the bytes of a later sample rot
    seen = collections.Counter(loader.keys_for(first))
    plan = loader.plan(0)
    later = int(plan.index[40])  # in the last batch: fed after the damage
    _, key = corrupt_sample(src, later // 16, later % 16)
    if mode == "error":
        with pytest.raises(ShardError) as e:
            for _ in it:
                pass
        assert key in str(e.value) and "rejected by DALI's decoder" in str(e.value) and "\n" not in str(e.value)
        return
    for b in it:
        seen.update(loader.keys_for(b))
    assert loader.stats.corrupt == 1 and loader.stats.corrupt_keys == [f"rot/{key}"]
    assert sum(seen.values()) == 47 and all(n == 1 for n in seen.values()) and f"rot/{key}" not in seen


def test_corrupt_sample_error_or_skip(tmp_path, plain_view, shard_factory, corrupt_sample):
    src = shard_factory(tmp_path, "bad", 40, fmt="png", shard_size=10, seed=4)
    file, key = corrupt_sample(src, 2, 3)
    m = parse_shards_args([f"{src}:2"])
    loader = TrainLoader(m, AugConfig((plain_view,)), 8)
    with pytest.raises(ShardError, match=file) as e:
        key_counts(loader)
    assert key in str(e.value) and "skip" in str(e.value)
    loader = TrainLoader(m, AugConfig((plain_view,)), 8, on_corrupt="skip", drop_last=False)
    c = key_counts(loader)
    assert c[f"bad/{key}"] == 0 and sum(c.values()) == 78
    assert loader.stats.corrupt == 2 and loader.stats.corrupt_keys == [f"bad/{key}"] * 2


def test_truncated_shard_is_named(tmp_path, plain_view, shard_factory):
    src = shard_factory(tmp_path, "trunc", 30, fmt="jpg", shard_size=10, seed=5)
    tar = src / Manifest.load(src).shards[1].file
    tar.write_bytes(tar.read_bytes()[:4000])
    loader = TrainLoader(parse_shards_args([str(src)]), AugConfig((plain_view,)), 6)
    with pytest.raises(ShardError, match="trunc-00001.tar"):
        key_counts(loader)
