"""shards/packing/encode.py, faithful by default: `shards pack --format auto` never re-encodes lossily, says what
it did, and records it in the manifest; webdataset labels, --per-class shortfalls and skip reasons."""

from __future__ import annotations

import io
import json
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
from shards.verify import verify_dir


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def by_origin(samples: list[dict]) -> dict[str, dict]:
    """origin -> sample (``read_samples``' dicts: key, label, meta, ext, image bytes)."""
    return {s["meta"]["origin"]: s for s in samples}


def img(seed, size=(8, 10)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def save(path: Path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# -- auto: pass-through for files, lossless for arrays --------------------------------------------


def test_png_inputs_stay_png_byte_for_byte_by_default(tmp_path, read_samples):
    for i in range(5):
        save(tmp_path / "gen" / f"{i // 2:06d}" / f"{i:06d}.png", img(i))
    code, out, err = run("pack", tmp_path / "gen", "--out", tmp_path / "o", "--kind", "generated", "-q")
    assert code == 0, out + err
    m = Manifest.load(tmp_path / "o")
    assert m.format == "png" and m.lossless is True
    assert m.encoding == {
        "format": "png",
        "requested": "auto",
        "source_formats": {"png": 5},
        "passthrough": 5,
        "reencoded": 0,
        "lossy_reencoded": 0,
        "quality": None,
    }
    for origin, s in by_origin(read_samples(tmp_path / "o")).items():
        assert s["image"] == (tmp_path / "gen" / origin).read_bytes()
    assert "5 passthrough" in out and "PNG inputs kept as they are" in out and "warning" not in err


def test_jpeg_inputs_stay_jpeg_byte_for_byte_by_default(tmp_path, read_samples):
    for c in ("a", "b"):
        for i in range(3):
            save(tmp_path / "src" / c / f"{i}.jpg", img(i), quality=75)
    r = pack(tmp_path / "src", PackConfig(out=tmp_path / "o", progress=False))
    assert r.manifest.format == "jpg" and r.how == {"passthrough": 6} and r.warnings == []
    for origin, s in by_origin(read_samples(tmp_path / "o")).items():
        assert s["image"] == (tmp_path / "src" / origin).read_bytes()


def test_mixed_jpeg_png_source_is_stored_as_png_without_loss(tmp_path, read_samples):
    """One set, one format: a JPEG/PNG (and BMP/WebP) mix becomes PNG; PNG inputs keep their bytes,
    the others keep exactly the pixels they decode to."""
    src = tmp_path / "src"
    save(src / "cat" / "a.jpg", img(0))
    save(src / "cat" / "b.png", img(1))
    save(src / "ant" / "c.bmp", img(2))
    save(src / "ant" / "d.webp", img(3), lossless=False, quality=60)
    save(src / "bee" / "e.jpeg", img(4), format="JPEG")
    save(src / "bee" / "f.png", img(5))
    code, out, err = run("pack", src, "--out", tmp_path / "o", "-q")
    assert code == 0, out + err
    m = Manifest.load(tmp_path / "o")
    assert m.format == "png" and m.encoding["lossy_reencoded"] == 0 and m.encoding["reencoded"] == 4
    assert m.encoding["source_formats"] == {"jpeg": 2, "png": 2, "bmp": 1, "webp": 1}
    assert "the inputs mix formats" in out and "warning" not in err
    for origin, s in by_origin(read_samples(tmp_path / "o")).items():
        original = (src / origin).read_bytes()
        assert s["ext"] == "png"
        if origin.endswith(".png"):
            assert s["image"] == original
        assert np.array_equal(pixels(s["image"]), pixels(original))
    code, out, _ = run("info", tmp_path / "o")
    assert out.splitlines()[1].split()[5:7] == ["png", "lossless"]


@pytest.mark.parametrize("side,fmt", [(8, "raw"), (64, "raw"), (65, "png")])
def test_arrays_default_to_raw_when_small_png_otherwise(tmp_path, side, fmt, read_samples):
    arr = np.stack([img(i, (side, side)) for i in range(3)])
    np.savez(tmp_path / "a.npz", image=arr, label=np.arange(3))
    r = pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "o", progress=False))
    m = r.manifest
    assert m.format == fmt and m.encoding["source_formats"] == {"array": 3} and m.encoding["lossy_reencoded"] == 0
    for origin, s in by_origin(read_samples(tmp_path / "o")).items():
        k = int(origin.split("[")[1].rstrip("]"))
        got = np.frombuffer(s["image"], np.uint8).reshape(side, side, 3) if fmt == "raw" else pixels(s["image"])
        assert np.array_equal(got, arr[k])


def test_cifar_pickles_default_to_raw(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (6, 3072), dtype=np.uint8)
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 0, 1, 2]}))
    m = pack(root, PackConfig(out=tmp_path / "o", progress=False)).manifest
    assert m.format == "raw" and m.image_size == (32, 32) and m.lossless


def test_explicit_jpg_on_lossless_source_warns_in_one_line(tmp_path):
    np.save(tmp_path / "a.npy", np.stack([img(i) for i in range(4)]))
    # unlabelled, so --kind generated (as --kind real it would also be warned about: tests/test_shards_cli.py)
    code, out, err = run(
        "pack", tmp_path / "a.npy", "--out", tmp_path / "o", "--format", "jpg", "--kind", "generated", "-q"
    )
    assert code == 0, out + err
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "4 of 4 images were re-encoded lossily as JPEG q95" in warnings[0]
    assert "drop --format jpg" in warnings[0]
    m = Manifest.load(tmp_path / "o")
    assert m.lossless is False and m.encoding["lossy_reencoded"] == 4 and m.encoding["quality"] == 95
    code, out, _ = run("info", tmp_path / "o")
    assert "lossy:4" in out
    # JPEG inputs asked to stay JPEG pass through: nothing to warn about
    save(tmp_path / "j" / "x" / "0.jpg", img(0))
    save(tmp_path / "j" / "y" / "0.jpg", img(1))
    code, out, err = run("pack", tmp_path / "j", "--out", tmp_path / "oj", "--format", "jpg", "-q")
    assert code == 0 and "warning" not in err and "2 passthrough" in out


def test_manifest_without_encoding_still_loads_verifies_and_shows(tmp_path):
    np.save(tmp_path / "a.npy", np.stack([img(i) for i in range(3)]))
    pack(tmp_path / "a.npy", PackConfig(out=tmp_path / "o", progress=False))
    d = json.loads((tmp_path / "o" / "manifest.json").read_text())
    del d["encoding"]
    (tmp_path / "o" / "manifest.json").write_text(json.dumps(d))
    m = Manifest.load(tmp_path / "o")
    assert m.encoding is None and m.lossless is None
    assert verify_dir(tmp_path / "o") == []
    code, out, _ = run("info", tmp_path / "o")
    header, row = out.strip().splitlines()
    assert code == 0 and header.split()[6] == "encoding" and row.split()[6] == "-"


# -- webdataset labels, --per-class, skip reasons --------------------------------------------------


def _wds_tar(path: Path, n: int, labels) -> None:
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(img(i, (6, 6))).save(buf, "PNG")
            for ext, data in (("cls", str(labels[i]).encode()), ("png", buf.getvalue()), ("json", b'{"a": 1}')):
                info = tarfile.TarInfo(f"shard/{i:06d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_webdataset_tar_keeps_its_cls_labels(tmp_path, read_samples):
    labels = [3, 0, 1, 3, 2, 0, 1]
    _wds_tar(tmp_path / "w.tar", 7, labels)
    code, out, err = run("pack", tmp_path / "w.tar", "--out", tmp_path / "o", "--kind", "real", "-q")
    assert code == 0, out + err
    assert "webdataset-style samples" in out and "skipped: 0" in out
    m = Manifest.load(tmp_path / "o")
    assert m.classes == ("0", "1", "2", "3") and m.label_counts == {"0": 2, "1": 2, "2": 1, "3": 2}
    got = by_origin(read_samples(tmp_path / "o"))
    assert {o: s["label"] for o, s in got.items()} == {f"shard/{i:06d}.png": labels[i] for i in range(7)}
    assert verify_dir(tmp_path / "o") == []
    # a shard written by this package is such a tar: re-packing it keeps the labels too
    code, out, err = run("pack", tmp_path / "o" / m.shards[0].file, "--out", tmp_path / "again", "-q")
    assert code == 0, out + err
    again = Manifest.load(tmp_path / "again")
    assert again.label_counts == m.label_counts and again.format == "png" and again.encoding["passthrough"] == 7


def test_webdataset_bad_labels_are_skipped_with_reasons(tmp_path):
    _wds_tar(tmp_path / "w.tar", 3, ["1", "cat", "-7"])
    r = pack(tmp_path / "w.tar", PackConfig(out=tmp_path / "o", progress=False))
    assert r.manifest.count == 1 and r.manifest.label_counts == {"1": 1}
    reasons = {s["path"]: s["reason"] for s in r.skipped}
    assert "not an integer" in reasons["shard/000001.png"] and "not an integer" in reasons["shard/000002.png"]


def test_per_class_shortfall_says_how_many_per_class(tmp_path):
    lab = np.array([0] * 10 + [1] * 3 + [2] * 6)
    np.savez(tmp_path / "a.npz", image=np.stack([img(i, (4, 4)) for i in range(len(lab))]), label=lab)
    code, out, err = run("pack", tmp_path / "a.npz", "--out", tmp_path / "o", "--per-class", "5", "-q")
    assert code == 0, out + err
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: --per-class 5 not met for 1 of 3 classes (got 1 3; the others 5); the set is unbalanced"
    ]
    assert Manifest.load(tmp_path / "o").label_counts == {"0": 5, "1": 3, "2": 5}
    r = pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "o2", per_class=3, progress=False))
    assert r.warnings == []
    # counted on the source's labels, also when a generated set drops them
    r = pack(tmp_path / "a.npz", PackConfig(out=tmp_path / "o3", per_class=5, kind="generated", progress=False))
    assert r.manifest.label_counts == {"-1": 13} and r.warnings == [
        "warning: --per-class 5 not met for 1 of 3 classes (got 1 3; the others 5); the set is unbalanced"
    ]


def test_skip_reason_names_the_file_not_a_buffer(tmp_path):
    (tmp_path / "t").mkdir()
    save(tmp_path / "t" / "imgs" / "good.png", img(0))
    (tmp_path / "t" / "imgs" / "junk.png").write_bytes(b"\x89PNG not really")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:  # a compressed archive: payloads are bytes
        tf.add(tmp_path / "t" / "imgs", arcname="imgs")
    code, out, err = run("pack", tmp_path / "a.tar.gz", "--out", tmp_path / "o", "-q")
    assert code == 0, out + err
    assert "BytesIO" not in out and "0x" not in out
    assert "  imgs/junk.png: not a decodable image" in out
