"""Issue 27, items 7–9: what ``shards verify``, ``loaders audit`` and ``train.py`` say about a damaged set.

* item 7: a version-2 set whose manifest lost its ``version`` (or says 1) is refused in one line, never read
  as version 1 with its per-sample sha256 records unchecked;
* item 8: samples damaged alike are one line (their count and a few keys), a set-level cause is stated once,
  every line names a fix, and the report ends with the set and the command that re-packs it;
* item 9: the reason says which: the dtype or shape of an ``.npy``, the colour mode of a PNG or JPEG, a missing
  index file; the skip line of ``train.py`` prints each key once.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from forge import (
    audit,
    audit_report,
    blocks,
    error_lines,
    manifest,
    read_members,
    replace_member,
    tiny_set,
    train,
    verify,
    write_manifest,
)
from PIL import Image

from loaders.batch.table import SampleTable


# ---------------------------------------------------------------------------------------------------
# Item 7: a version-2 set read as version 1
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["png", "raw"])
@pytest.mark.parametrize("version", [None, 1])
def test_a_version_2_set_whose_manifest_lost_its_version_is_refused(tmp_path, fmt, version):
    d = tiny_set(tmp_path / "v", fmt=fmt)
    doc = manifest(d)
    if version is None:
        del doc["version"]
    else:
        doc["version"] = version
    write_manifest(d, doc)
    want = f"{d / 'manifest.json'}: reads as manifest version 1 (its version field is missing or 1), but "
    code, out = verify(d)
    assert code == 1 and sum(line.startswith(want) for line in out) == 1, out
    assert any('set "version": 2 in the manifest' in line for line in out)
    for mode in ("error", "skip"):
        code, text = audit(d, mode)
        (line,) = error_lines(text)
        assert code == 1 and want in line and ".tar holds version-2 samples" in line


def test_a_rotten_image_of_a_version_2_set_is_found_even_after_the_version_is_dropped(tmp_path):
    """What the silent downgrade hid: an image whose bytes changed but still decode, found only by its sha256."""
    d = tiny_set(tmp_path / "rot")
    other = dict(read_members(d / "rot-00001.tar"))["rot/000007.png"]
    replace_member(d, "rot/000006.png", other, record=False)  # another valid image, the record unchanged
    assert any("rot/000006" in line and "sha256" in line for line in verify(d)[1])
    doc = manifest(d)
    del doc["version"]
    write_manifest(d, doc)
    code, out = verify(d)
    assert code == 1 and any("reads as manifest version 1" in line for line in out)
    assert audit(d, "skip")[0] == 1


# ---------------------------------------------------------------------------------------------------
# Item 8: grouped reasons, a set-level cause once, the fix and the command that re-packs the set
# ---------------------------------------------------------------------------------------------------
def test_a_renamed_manifest_is_one_line_not_one_per_sample(tmp_path):
    src = tmp_path / "images.npz"
    np.savez(src, image=blocks(40), label=np.arange(40) % 10)
    from shards.packing.pack import PackConfig, pack

    command = f"python -m shards pack {src} --out {tmp_path / 'set'} --name c10s3 --format png --shard-size 16"
    pack(
        src,
        PackConfig(out=tmp_path / "set", name="c10s3", format="png", shard_size=16, progress=False, command=command),
    )
    d = tmp_path / "set"
    doc = manifest(d)
    doc["name"] = "cifar"
    write_manifest(d, doc)
    code, out = verify(d, "--workers", 2)
    assert code == 1 and len(out) == 3, out  # the grouped line, the closing line, the summary
    grouped, closing, summary = out
    assert grouped.startswith(f"{d}: 40 samples in 3 shards (e.g. c10s3/000000, c10s3/000001, c10s3/000002), each ")
    assert "belongs to set 'c10s3', but the manifest's name is 'cifar'" in grouped
    assert f'set "name" in {d / "manifest.json"} back to the set its samples name' in grouped
    assert closing == (
        f"{d}: has problems (above); re-pack it with `{command} --overwrite`, then run `python -m shards verify` again"
    )
    assert summary == f"1 of 1 shard set(s) have problems: {d}"
    # the loaders do not mind a renamed set: it trains
    code, text = audit(d, "error")
    assert code == 0 and audit_report(text)["epochs"][0]["corrupt_skipped"] == 0


def test_one_damaged_sample_is_one_line_naming_its_fix(tmp_path):
    d = tiny_set(tmp_path / "one", fmt="jpg")
    replace_member(d, "one/000005.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF broken")
    code, out = verify(d)
    (line,) = [line for line in out if "one/000005" in line]
    assert line.startswith(f"{d / 'one-00000.tar'}: sample one/000005.jpg ")
    assert line.endswith("; re-pack the set from its source, or pass --on-corrupt skip to train without such samples")
    assert out[-2].startswith(
        f"{d}: has problems (above); re-pack it with `python -m shards pack SRC --out {d} --overwrite`"
    )


def test_samples_damaged_alike_in_many_shards_are_counted_with_examples(tmp_path):
    d = tiny_set(tmp_path / "lab", n=24, shard=6)
    for i in (1, 7, 13, 19):
        replace_member(d, f"lab/{i:06d}.cls", b"x")
    code, out = verify(d)
    lines = [line for line in out if "not an integer label" in line]
    assert code == 1 and len(lines) == 1, out
    assert lines[0].startswith(f"{d}: 4 samples in 4 shards (e.g. lab/000001 (b'x'), lab/000007 (b'x'), lab/000013")


# ---------------------------------------------------------------------------------------------------
# Item 9: reasons that say which
# ---------------------------------------------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize(
    "array,reason",
    [
        (
            np.zeros((16, 16, 3), np.float32),
            "holds a float32 array of shape (16, 16, 3); want uint8 of shape (H, W, 3)",
        ),
        (np.zeros((16, 16), np.uint8), "holds a uint8 array of shape (16, 16); want uint8 of shape (H, W, 3)"),
        (np.zeros((16, 16, 4), np.uint8), "holds a uint8 array of shape (16, 16, 4); want uint8 of shape (H, W, 3)"),
    ],
)
def test_an_npy_of_another_dtype_or_shape_says_which(tmp_path, array, reason):
    d = tiny_set(tmp_path / "px", fmt="raw")
    replace_member(d, "px/000002.npy", _npy(array))
    code, out = verify(d)
    (line,) = [line for line in out if "px/000002" in line]
    assert code == 1 and f"sample px/000002.npy {reason}" in line
    code, text = audit(d, "error")
    (err,) = error_lines(text)
    assert code == 1 and reason in err and "px/000002" in err


def _image(mode: str, fmt: str) -> bytes:
    img = Image.fromarray(blocks(1)[0]).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt,mode,reason",
    [
        ("png", "P", "is a 8-bit palette PNG; want 8-bit grey or RGB"),
        ("png", "RGBA", "is a 8-bit RGBA PNG; want 8-bit grey or RGB"),
        ("jpg", "CMYK", "is a JPEG with 4 colour components (CMYK or YCCK); want 1 (grey) or 3 (RGB)"),
    ],
)
def test_an_image_of_another_colour_mode_says_which(tmp_path, fmt, mode, reason):
    d = tiny_set(tmp_path / "cm", fmt=fmt)
    replace_member(d, f"cm/000004.{fmt}", _image(mode, {"png": "PNG", "jpg": "JPEG"}[fmt]))
    code, out = verify(d)
    (line,) = [line for line in out if "cm/000004" in line]
    assert code == 1 and f"sample cm/000004.{fmt} {reason}" in line
    code, text = audit(d, "error")
    (err,) = error_lines(text)
    assert code == 1 and reason in err
    code, text = audit(d, "skip")
    assert code == 0 and audit_report(text)["epochs"][0]["corrupt_skipped"] == 1


def test_an_image_of_another_format_says_which(tmp_path):
    d = tiny_set(tmp_path / "fm", fmt="jpg")
    replace_member(d, "fm/000001.jpg", _image("RGB", "PNG"))
    (line,) = [line for line in verify(d)[1] if "fm/000001" in line]
    assert "sample fm/000001.jpg is a PNG, not the set's format (jpg)" in line


def test_a_manifest_entry_naming_a_missing_index_says_missing(tmp_path):
    d = tiny_set(tmp_path / "mi")
    doc = manifest(d)
    doc["shards"][1]["index"] = "elsewhere.idx"
    write_manifest(d, doc)
    code, out = verify(d)
    (line,) = [line for line in out if "elsewhere.idx" in line]
    assert code == 1 and line.startswith(f"{d / 'elsewhere.idx'}: missing (the manifest's shards[1].index names it)")
    assert "stale" not in line and "wds2idx" not in line
    (d / "mi-00000.idx").unlink()  # the file deleted, the manifest right
    (line,) = [line for line in verify(d)[1] if "mi-00000.idx" in line]
    assert "missing (the manifest's shards[0].index names it)" in line and "stale" not in line


def test_the_skip_line_prints_each_key_once(tmp_path):
    d = tiny_set(tmp_path / "genraw", fmt="raw", n=16, shard=8)
    replace_member(d, "genraw/000005.npy", _npy(np.zeros((16, 16), np.uint8)))
    code, text = train(d, tmp_path / "run", "--on-corrupt", "skip", "--steps", 6)  # more than an epoch
    assert code == 0, text
    assert "first: genraw/000005" in text and "genraw/genraw/" not in text
    assert SampleTable.shown_key("genraw/genraw/000005") == "genraw/000005"
    assert SampleTable.shown_key("real/000005") == "real/000005"  # a version-1 key: the source name kept
