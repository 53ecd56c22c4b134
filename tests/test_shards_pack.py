"""shards/packing (pack, sources, writer): packing every kind of source, serial and parallel, bad input in one line,
refusing then atomically overwriting an existing set. The encoding choices: test_shards_encode.py."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from shards.cli import main
from shards.format.manifest import Manifest
from shards.packing.pack import PackConfig, pack
from shards.packing.writer import ustar_header
from shards.verify import verify_dir

REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------


def run(*args):
    """Run the CLI in-process; returns (exit code, output)."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def img(seed, size=(8, 10)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def save(path: Path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


@pytest.fixture
def imagefolder(tmp_path):
    """3 classes, nested folders, 4 formats, plus a zero-byte jpg, a corrupt png and a text file."""
    root = tmp_path / "src"
    save(root / "cat" / "a.jpg", img(0))
    save(root / "cat" / "deep" / "er" / "b.png", img(1))
    save(root / "ant" / "c.bmp", img(2))
    save(root / "ant" / "d.webp", img(3))
    save(root / "bee" / "e.jpeg", img(4), "JPEG")
    save(root / "bee" / "f.png", img(5))
    (root / "bee" / "zero.jpg").write_bytes(b"")
    (root / "cat" / "junk.png").write_bytes(b"\x89PNG not really a png")
    (root / "cat" / "notes.txt").write_text("hello")
    return root


# -- tar layout, DALI index ------------------------------------------------------------------------


def test_ustar_header_is_tarfiles():
    for name, size in (("a.cls", 1), ("000001.json", 77), ("x" * 99, 123456789)):
        t = tarfile.TarInfo(name)
        t.size, t.mode, t.mtime, t.uname, t.gname = size, 0o444, 0, "", ""
        assert ustar_header(name, size) == t.tobuf(
            format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="surrogateescape"
        )


# -- sources ---------------------------------------------------------------------------------------


def test_imagefolder_labels_skips_and_passthrough(imagefolder, tmp_path, read_samples):
    code, out = run("pack", imagefolder, "--out", tmp_path / "o", "--format", "jpg", "--workers", "1", "-q")
    assert code == 0, out
    assert "ImageFolder tree" in out and "skipped: 3" in out
    m = Manifest.load(tmp_path / "o")
    assert m.classes == ("ant", "bee", "cat") and m.count == 6 and m.format == "jpg" and m.image_size == (8, 10)
    assert m.label_counts == {"0": 2, "1": 2, "2": 2}
    reasons = {Path(s["path"]).name: s["reason"] for s in m.skipped}
    assert set(reasons) == {"zero.jpg", "junk.png", "notes.txt"}
    assert (
        "empty" in reasons["zero.jpg"] and "decodable" in reasons["junk.png"] and "not an image" in reasons["notes.txt"]
    )
    got = {s["meta"]["origin"]: s for s in read_samples(tmp_path / "o")}
    assert {k: v["label"] for k, v in got.items()} == {
        "ant/c.bmp": 0,
        "ant/d.webp": 0,
        "bee/e.jpeg": 1,
        "bee/f.png": 1,
        "cat/a.jpg": 2,
        "cat/deep/er/b.png": 2,
    }
    # JPEG inputs pass through byte for byte, the rest are encoded (lossily: --format jpg was asked for)
    assert got["cat/a.jpg"]["image"] == (imagefolder / "cat" / "a.jpg").read_bytes()
    assert "2 passthrough" in out and "4 lossy JPEG q95" in out
    assert all(
        {k: s["meta"][k] for k in ("source", "kind", "label")} == {"source": "o", "kind": "real", "label": s["label"]}
        for s in got.values()
    )
    assert all(s["key"].startswith("o/") for s in got.values())  # keys unique per set: NAME/POSITION
    assert verify_dir(tmp_path / "o") == []


def test_strict_refuses_bad_files_and_writes_nothing(imagefolder, tmp_path):
    code, out = run("pack", imagefolder, "--out", tmp_path / "o", "--strict", "-q")
    assert code == 1 and "--strict" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_png_to_png_lossless_and_flat_numbered(tmp_path, read_samples):
    src = tmp_path / "gen"
    arrs = {}
    for i in range(5):
        arrs[f"{i // 2:06d}/{i:06d}.png"] = img(10 + i, (6, 6))
        save(src / f"{i // 2:06d}" / f"{i:06d}.png", arrs[f"{i // 2:06d}/{i:06d}.png"])
    code, out = run(
        "pack", src, "--out", tmp_path / "o", "--kind", "generated", "--format", "png", "--fid", "2.5", "-q"
    )
    assert code == 0, out
    assert "flat folder" in out and "5 passthrough" in out
    m = Manifest.load(tmp_path / "o")
    assert m.kind == "generated" and m.classes == () and m.label_counts == {"-1": 5} and m.fid == 2.5
    for s in read_samples(tmp_path / "o"):
        assert s["label"] == -1
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["image"]))), arrs[s["meta"]["origin"]])


def test_npz_raw_shuffle_limit_per_class(tmp_path, read_samples):
    arr = np.stack([img(i, (4, 4)) for i in range(60)])
    lab = np.arange(60) % 3
    np.savez(tmp_path / "a.npz", image=arr, label=lab)
    cfg = PackConfig(
        out=tmp_path / "o", name="x", format="raw", shard_size=7, shuffle_seed=3, per_class=5, progress=False
    )
    r = pack(tmp_path / "a.npz", cfg)
    assert "memory-mapped" in r.detected  # np.savez is uncompressed: no copy of the array
    got = read_samples(tmp_path / "o")
    assert len(got) == 15 and r.manifest.label_counts == {"0": 5, "1": 5, "2": 5}
    keys = [int(s["key"].removeprefix("x/")) for s in got]
    assert keys != sorted(keys) and len(set(keys)) == 15  # shuffled, unique
    for s in got:
        k = int(s["key"].removeprefix("x/"))
        assert s["label"] == lab[k] and s["meta"]["origin"] == f"a.npz[{k}]"
        assert np.array_equal(np.frombuffer(s["image"], np.uint8).reshape(4, 4, 3), arr[k])
    # same seed, same shards; no seed: first N in order
    r2 = pack(
        tmp_path / "a.npz",
        PackConfig(
            out=tmp_path / "o2", name="x", format="raw", shard_size=7, shuffle_seed=3, per_class=5, progress=False
        ),
    )
    assert [s.sha256 for s in r2.manifest.shards] == [s.sha256 for s in r.manifest.shards]
    pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "o3", format="raw", limit=10, kind="generated", progress=False))
    got3 = read_samples(tmp_path / "o3")
    assert [s["key"] for s in got3] == [f"o3/{i:06d}" for i in range(10)] and {s["label"] for s in got3} == {-1}
    pack(
        tmp_path / "a.npz",
        PackConfig(out=tmp_path / "o4", format="raw", limit=10, kind="generated", keep_labels=True, progress=False),
    )
    assert [s["label"] for s in read_samples(tmp_path / "o4")] == list(lab[:10])


def test_parallel_equals_serial(tmp_path):
    arr = np.stack([img(i, (8, 8)) for i in range(700)])
    np.save(tmp_path / "a.npy", arr)
    shas = []
    for w in (1, 2):
        m = pack(
            tmp_path / "a.npy",
            PackConfig(
                out=tmp_path / f"o{w}",
                name="x",
                format="jpg",
                shard_size=300,
                workers=w,
                batch_size=64,
                shuffle_seed=0,
                progress=False,
            ),
        ).manifest
        shas.append([s.sha256 for s in m.shards])
        assert m.count == 700 and [s.count for s in m.shards] == [300, 300, 100]
    assert shas[0] == shas[1]


def _cifar_files(root: Path, n_classes=10):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 20), ("data_batch_2", 20), ("test_batch", 10)):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % n_classes)}
        (root / name).write_bytes(pickle.dumps(d))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(n_classes)]}))


def test_cifar_pickles_folder_and_tar(tmp_path, read_samples):
    _cifar_files(tmp_path / "cifar-10-batches-py")
    r = pack(tmp_path / "cifar-10-batches-py", PackConfig(out=tmp_path / "tr", format="png", progress=False))
    assert "CIFAR-10" in r.detected and r.manifest.count == 40 and r.manifest.classes[:2] == ("c0", "c1")
    d = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    s = [x for x in read_samples(tmp_path / "tr") if x["key"] == "tr/000025"][0]
    want = d[b"data"][5].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["image"]))), want) and s["label"] == 5
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    r = pack(tmp_path / "c.tar.gz", PackConfig(out=tmp_path / "te", split="test", format="raw", progress=False))
    assert r.manifest.count == 10 and r.manifest.split == "test" and r.manifest.image_size == (32, 32)


def test_tar_of_imagefolder_with_splits(tmp_path, read_samples):
    for split in ("train", "test"):
        for c in ("dog", "cat"):
            for i in range(3):
                save(tmp_path / "t" / "ds" / split / c / f"{i}.jpg", img(i, (6, 6)))
    for mode, name in (("w:gz", "d.tar.gz"), ("w", "d.tar")):
        with tarfile.open(tmp_path / name, mode) as tf:
            tf.add(tmp_path / "t" / "ds", arcname="ds")
    code, out = run("pack", tmp_path / "d.tar.gz", "--out", tmp_path / "o", "-q")
    assert code == 1 and "--subdir ds/train" in out and "Traceback" not in out
    for name in ("d.tar.gz", "d.tar"):  # streamed / read in place, shuffled
        out_dir = tmp_path / f"o-{name}"
        code, out = run(
            "pack",
            tmp_path / name,
            "--out",
            out_dir,
            "--subdir",
            "ds/test",
            "--split",
            "test",
            "--shuffle-seed",
            "1",
            "-q",
        )
        assert code == 0, out
        m = Manifest.load(out_dir)
        assert m.classes == ("cat", "dog") and m.count == 6 and m.split == "test"
        assert sorted(s["meta"]["origin"] for s in read_samples(out_dir)) == sorted(
            f"ds/test/{c}/{i}.jpg" for c in ("cat", "dog") for i in range(3)
        )
        assert verify_dir(out_dir) == []


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no-image-key", "wrong-shape", "wrong-dtype", "missing", "empty-dir", "empty-file"])
def test_bad_sources_one_line(tmp_path, case):
    src = tmp_path / "src.npz"
    if case == "no-image-key":
        np.savez(src, images=np.zeros((2, 4, 4, 3), np.uint8))
    elif case == "wrong-shape":
        np.savez(src, image=np.zeros((2, 4, 4), np.uint8))
    elif case == "wrong-dtype":
        np.savez(src, image=np.zeros((2, 4, 4, 3), np.float32))
    elif case == "empty-dir":
        src = tmp_path / "emptydir"
        src.mkdir()
    elif case == "empty-file":
        src = tmp_path / "x.tar.gz"
        src.write_bytes(b"")
    code, out = run("pack", src, "--out", tmp_path / "o", "-q")
    assert code == 1 and "Traceback" not in out
    line = out.strip()
    assert len(line.splitlines()) == 1 and str(src) in line
    assert {
        "no-image-key": "'image'",
        "wrong-shape": "N×H×W×3",
        "wrong-dtype": "uint8",
        "missing": "no such",
        "empty-dir": "empty",
        "empty-file": "tar",
    }[case] in line
    assert not (tmp_path / "o").exists()


def test_refuses_existing_then_overwrites_atomically(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.stack([img(i, (4, 4)) for i in range(600)]))
    code, out = run("pack", tmp_path / "a.npy", "--out", tmp_path / "o", "--format", "raw", "--shard-size", "100", "-q")
    assert code == 0, out
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}
    code, out = run("pack", tmp_path / "a.npy", "--out", tmp_path / "o", "-q")
    assert code == 1 and "--overwrite" in out
    # an interrupted pack leaves the old set exactly as it was, and no temporary files
    import shards.packing.pack as packmod

    real = packmod.encode_batch
    calls = []

    def dying(*a):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(packmod, "encode_batch", dying)
    code, out = run(
        "pack", tmp_path / "a.npy", "--out", tmp_path / "o", "--overwrite", "--workers", "1", "--shard-size", "10", "-q"
    )
    assert code == 130 and len(calls) == 2  # died in the middle: 256 samples = 25 shards were written
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == before
    monkeypatch.setattr(packmod, "encode_batch", real)
    code, out = run(
        "pack", tmp_path / "a.npy", "--out", tmp_path / "o", "--overwrite", "--limit", "5", "--format", "png", "-q"
    )
    assert code == 0, out
    # the new set's files never clash with the old set's: NAME-… and NAME-g1-… alternate
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["manifest.json", "o-g1-00000.idx", "o-g1-00000.tar"]
    assert Manifest.load(tmp_path / "o").count == 5 and verify_dir(tmp_path / "o") == []
