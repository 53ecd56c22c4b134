"""The two shared archives pack, verify and describe correctly (a slice of each, via --limit)."""

from __future__ import annotations

import tarfile

import pytest
from click.testing import CliRunner
from shareddata import DATA, require

from shards.cli import main
from shards.format.manifest import Manifest

CIFAR = DATA / "cifar10-jpg.tar.gz"
EDM = DATA / "edm-cifar10-50k-png.tar.gz"


@pytest.fixture(autouse=True)
def _shared_data():
    require(CIFAR), require(EDM)


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def test_cifar10_both_splits_from_one_archive(tmp_path):
    for split, extra in (("train", ["--shuffle-seed", "0", "--per-class", "20"]), ("test", ["--limit", "200"])):
        code, out = run(
            "pack",
            CIFAR,
            "--out",
            tmp_path / split,
            "--subdir",
            f"cifar10/{split}",
            "--split",
            split,
            "--name",
            f"cifar10-{split}",
            "--shard-size",
            "64",
            "-q",
            *extra,
        )
        assert code == 0, out
        assert "ImageFolder tree" in out and "200 passthrough" in out
        m = Manifest.load(tmp_path / split)
        assert m.count == 200 and m.classes == CIFAR_CLASSES and m.image_size == (32, 32) and m.format == "jpg"
        assert m.encoding["source_formats"] == {"jpeg": 200} and m.lossless
        assert m.split == split and [s.count for s in m.shards] == [64, 64, 64, 8] and m.skipped == ()
    assert Manifest.load(tmp_path / "train").label_counts == {str(c): 20 for c in range(10)}
    # without --shuffle-seed and --per-class the test split is the archive's first 200: all airplanes
    assert Manifest.load(tmp_path / "test").label_counts == {"0": 200}
    code, out = run("verify", tmp_path / "train", tmp_path / "test")
    assert code == 0 and out.count("OK") == 2
    code, out = run("info", tmp_path / "train", tmp_path / "test")
    assert code == 0 and "cifar10-train" in out and "cifar10-test" in out


def test_edm_generated_slice_stops_early(tmp_path):
    # no --format: the README's command must keep the generated PNGs PNG (pass-through, nothing lossy)
    code, out = run(
        "pack",
        EDM,
        "--out",
        tmp_path / "edm",
        "--kind",
        "generated",
        "--limit",
        "200",
        "--fid",
        "1.97",
        "--shard-size",
        "100",
        "-q",
    )
    assert code == 0, out
    assert "flat folder of unlabelled images" in out and "listing stopped after the first 200" in out
    m = Manifest.load(tmp_path / "edm")
    assert m.count == 200 and m.kind == "generated" and m.label_counts == {"-1": 200} and m.fid == 1.97
    assert m.format == "png" and m.encoding["passthrough"] == 200 and m.encoding["lossy_reencoded"] == 0
    # PNG to png passes the bytes through: the first sample is the archive's first image, unchanged
    with tarfile.open(EDM, "r|gz") as tf:
        first = next(t for t in tf if t.isfile())
        original = tf.extractfile(first).read()
    with tarfile.open(tmp_path / "edm" / m.shards[0].file) as tf:
        assert tf.extractfile("edm/000000.png").read() == original  # keys: NAME/POSITION
    code, out = run("verify", tmp_path / "edm")
    assert code == 0, out
    code, out = run("info", tmp_path / "edm")
    assert "generated" in out and "1.97" in out
