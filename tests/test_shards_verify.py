"""`python -m shards verify` and `info` (shards/verify.py): each problem named with its file; the index advice only
where the index is the stale part."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from shards.cli import main
from shards.packing.pack import PackConfig, pack
from shards.packing.writer import ShardSetWriter
from shards.read.index import read_index


def run(*args):
    """Run the CLI in-process; returns (exit code, output)."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def verify_stdout(*args):
    """``shards verify`` in-process; returns (exit code, what it wrote to stdout)."""
    r = CliRunner().invoke(main, ["verify", *map(str, args)])
    return r.exit_code, r.stdout


def img(seed, size=(8, 10)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def small_set(tmp_path):
    np.savez(tmp_path / "a.npz", image=np.stack([img(i, (6, 6)) for i in range(12)]), label=np.arange(12) % 2)
    pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "s", format="png", shard_size=5, progress=False))
    return tmp_path / "s"


@pytest.mark.parametrize(
    "damage,expect",
    [
        ("truncate", "bytes, manifest says"),
        ("empty", "empty file"),
        ("not-tar", "broken tar"),
        ("index", "re-create it with `wds2idx`"),
        ("flip", "sha256"),
        ("missing", "missing"),
        ("extra", "not listed"),
    ],
)
def test_verify_names_file_and_problem(small_set, damage, expect):
    tar = small_set / "s-00001.tar"
    data = tar.read_bytes()
    if damage == "truncate":
        tar.write_bytes(data[:1500])
    elif damage == "empty":
        tar.write_bytes(b"")
    elif damage == "not-tar":
        tar.write_bytes(b"hello world " * 200)
    elif damage == "index":
        idx = small_set / "s-00001.idx"
        lines = idx.read_text().splitlines()
        lines[1], lines[2] = lines[2], lines[1]
        idx.write_text("\n".join(lines) + "\n")
    elif damage == "flip":
        off = read_index(small_set / "s-00001.idx").offsets["png"][0] + 40
        tar.write_bytes(data[:off] + bytes([data[off] ^ 0xFF]) + data[off + 1 :])
    elif damage == "missing":
        tar.unlink()
    elif damage == "extra":
        (small_set / "s-00009.tar").write_bytes(data)
    code, out = run("verify", small_set, "--workers", "1")
    assert code == 1 and expect in out and "Traceback" not in out
    assert "s-0000" in out


def test_verify_detects_undecodable_image_with_valid_checksums(tmp_path):
    with ShardSetWriter(tmp_path / "s", "s", kind="real", format="png") as w:
        w.add("000000", b"\x89PNG garbage", 0, "x", (4, 4))
    code, out = run("verify", tmp_path / "s")
    assert code == 1 and "sample 000000.png is damaged (broken JPEG markers, PNG chunks" in out


def test_info_table_and_verify_ok(small_set, tmp_path):
    np.save(tmp_path / "g.npy", np.stack([img(i, (6, 6)) for i in range(3)]))
    run("pack", tmp_path / "g.npy", "--out", tmp_path / "g", "--kind", "generated", "--fid", "3.1", "-q")
    code, out = run("info", small_set, tmp_path / "g")
    assert code == 0
    header, row1, row2 = out.strip().splitlines()
    for col in ("name", "kind", "count", "shards", "format", "classes", "bytes", "fid"):
        assert col in header
    assert row1.split()[:6] == ["s", "real", "train", "12", "3", "png"]
    assert row2.split()[:6] == ["g", "generated", "train", "3", "1", "raw"] and "3.1" in row2  # auto: 6×6 arrays
    code, out = run("verify", small_set, tmp_path / "g")
    assert code == 0 and out.count("OK") == 2
    code, out = run("info", tmp_path / "nope")
    assert code == 1 and "no such directory" in out


def test_verify_suggests_wds2idx_only_when_the_index_is_the_stale_part(tmp_path):
    np.savez(tmp_path / "a.npz", image=np.stack([img(i, (6, 6)) for i in range(12)]), label=np.arange(12) % 2)
    pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "s", format="png", shard_size=5, progress=False))
    s = tmp_path / "s"
    # a tar replaced by another valid tar: the index disagrees, but rebuilding it would bless a wrong tar
    shutil.copy(s / "s-00000.tar", s / "s-00001.tar")
    code, out = verify_stdout(s)
    assert code == 1 and "sha256 differs" in out and "`wds2idx`" not in out and "re-pack the set" in out
    # the tar intact, the index edited: now the index is the stale part
    pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "s2", name="s", format="png", shard_size=5, progress=False))
    idx = tmp_path / "s2" / "s-00001.idx"
    lines = idx.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    idx.write_text("\n".join(lines) + "\n")
    code, out = verify_stdout(tmp_path / "s2")
    assert code == 1 and "index is stale; re-create it with `wds2idx`" in out and "sha256 differs" not in out
