"""Issue 27, item 6: every integer read from a file is range-checked where it is parsed — the DALI index, the
manifest, ``.cls`` labels, ``KEY.json`` records, tar headers, ``.npy`` headers and PNG headers — so a number that
does not fit (int64 overflow, negative, beyond 2^64, thousands of digits) is one line naming the file, the line
and the field in every command (``shards verify`` and its worker pool, ``loaders audit`` in both modes,
``train.py``), never an ``OverflowError``."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from forge import (
    audit,
    audit_report,
    error_lines,
    manifest,
    read_members,
    refresh,
    replace_member,
    tiny_set,
    train,
    verify,
    write_manifest,
)
from PIL import Image

from shards.read.index import INT64_MAX, read_index

OUT_OF_RANGE = [2**63, 2**64, -1, -(2**63) - 1, 10**40]


def one_error(output: str) -> str:
    lines = error_lines(output)
    assert len(lines) == 1 and "Traceback" not in output and "OverflowError" not in output, output
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# The DALI index
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_an_index_offset_or_size_out_of_range_is_one_line_in_every_command(tmp_path, value):
    d = tiny_set(tmp_path / "ix")
    idx = d / "ix-00001.idx"
    lines = idx.read_text().splitlines()
    parts = lines[2].split()  # line 3 of the file: the second sample
    parts[parts.index("png") + 2] = str(value)  # its png size
    lines[2] = " ".join(parts)
    idx.write_text("\n".join(lines) + "\n")
    where = f"{idx}: line 3: the png size is {str(value)[:40]}, out of range (want 0 … {INT64_MAX})"
    code, out = verify(d, "--workers", 2)  # two shards: verify's worker pool
    assert code == 1 and sum(where in line for line in out) == 1, out
    for mode in ("error", "skip"):
        code, text = audit(d, mode)
        assert code == 1 and where in one_error(text)
    if value == 2**64:  # the case, also through train.py
        code, text = train(d, tmp_path / "run")
        assert code == 1 and where in one_error(text)


def test_an_index_sample_count_beyond_int64_is_one_line(tmp_path):
    d = tiny_set(tmp_path / "hc")
    idx = d / "hc-00000.idx"
    text = idx.read_text().split("\n", 1)
    idx.write_text(f"v1.2 {2**64}\n{text[1]}")
    code, out = verify(d)
    assert code == 1 and any(f"{idx}: line 1: the sample count is {2**64}, out of range" in line for line in out)
    for mode in ("error", "skip"):
        assert f"{idx}: line 1: the sample count is {2**64}" in one_error(audit(d, mode)[1])


# ---------------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["count", "shards.count", "shards.bytes", "label_counts"])
@pytest.mark.parametrize("value", [2**63, 2**64 + 6])
def test_manifest_integers_beyond_int64_are_refused_even_when_the_sums_agree(tmp_path, field, value):
    d = tiny_set(tmp_path / "mf")
    doc = manifest(d)
    if field == "count":  # a shard's count, the set's and a label count raised together: the sums still agree
        doc["shards"][0]["count"] += value
        doc["count"] += value
        doc["label_counts"]["0"] += value
        name = f"field count is {doc['count']}"
    elif field == "shards.count":
        doc["shards"][0]["count"] = value
        name = f"field shards[0].count is {value}"
    elif field == "shards.bytes":
        doc["shards"][1]["bytes"] = value
        name = f"field shards[1].bytes is {value}"
    else:
        doc["label_counts"]["3"] = value
        name = f"field label_counts['3'] is {value}"
    write_manifest(d, doc)
    want = f"want an integer from 0 to {INT64_MAX}"
    code, out = verify(d)
    assert code == 1 and any(name in line and want in line and str(d / "manifest.json") in line for line in out), out
    for mode in ("error", "skip"):
        line = one_error(audit(d, mode)[1])
        assert name in line and want in line


@pytest.mark.parametrize("field", ["fid", "count"])
def test_a_manifest_number_past_floats_range_is_one_line(tmp_path, field):
    """10^400 is a valid JSON integer that no float holds: ``fid`` used to raise OverflowError in math.isfinite."""
    d = tiny_set(tmp_path / "big")
    doc = manifest(d)
    doc[field] = 10**400
    write_manifest(d, doc)
    code, out = verify(d)
    assert code == 1 and any(f"{d / 'manifest.json'}: field {field} is 1000000000000" in line for line in out), out
    for mode in ("error", "skip"):
        assert f"field {field} is 1000000000000" in one_error(audit(d, mode)[1])


def test_a_manifest_number_of_thousands_of_digits_is_one_line(tmp_path):
    d = tiny_set(tmp_path / "long")
    doc = manifest(d)
    doc["count"] = "LONG"
    write_manifest(d, doc, raw={"LONG": "9" * 5000})
    code, out = verify(d)
    assert code == 1 and any(f"{d / 'manifest.json'}: unreadable manifest" in line for line in out)
    assert "unreadable manifest" in one_error(audit(d, "skip")[1])


# ---------------------------------------------------------------------------------------------------
# .cls labels and KEY.json records
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [str(2**63), str(2**64 + 1), str(-(2**63) - 1), "9" * 5000])
def test_a_label_out_of_range_is_a_damaged_sample_named_once(tmp_path, value):
    d = tiny_set(tmp_path / "cls")
    replace_member(d, "cls/000004.cls", value.encode())
    code, out = verify(d, "--workers", 2)
    (line,) = [line for line in out if "cls/000004" in line]
    assert code == 1 and "has a .cls member that is not an integer label" in line and "re-pack" in line
    code, text = audit(d, "error")
    assert code == 1 and "cls/000004" in one_error(text) and "not an integer" in one_error(text)
    code, text = audit(d, "skip")
    assert code == 0 and audit_report(text)["epochs"][0]["corrupt_skipped"] == 1


@pytest.mark.parametrize("value", [str(2**64), str(-(2**63) - 1), "9" * 5000])
def test_a_json_label_out_of_range_is_a_damaged_sample(tmp_path, value):
    d = tiny_set(tmp_path / "js")
    members = dict(read_members(d / "js-00000.tar"))
    record = members["js/000002.json"].decode().replace('"label": 2', f'"label": {value}')
    replace_member(d, "js/000002.json", record.encode())
    code, out = verify(d)
    (line,) = [line for line in out if "js/000002" in line]
    assert code == 1 and ("another label in its .json" in line or "not JSON" in line), line
    code, text = audit(d, "error")
    assert code == 1 and "js/000002" in one_error(text)
    code, text = audit(d, "skip")
    assert code == 0 and audit_report(text)["epochs"][0]["corrupt_skipped"] == 1


# ---------------------------------------------------------------------------------------------------
# Tar headers, .npy headers, PNG headers
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [2**63, 2**64, -1])
def test_a_tar_header_size_out_of_range_is_one_line(tmp_path, value):
    """GNU base-256 size fields hold any integer: 2^63 made ``tarfile`` (verify) raise OverflowError."""
    d = tiny_set(tmp_path / "th")
    tar = d / "th-00001.tar"
    data = bytearray(tar.read_bytes())
    h = int(read_index(d / "th-00001.idx").offsets["json"][0]) - 512  # the header of th/000006.json
    assert data[h : h + 20].startswith(b"th/000006.json")
    data[h + 124 : h + 136] = bytes([0x80]) + value.to_bytes(11, "big") if value >= 0 else b"\xff" * 12
    data[h + 148 : h + 156] = b" " * 8
    data[h + 148 : h + 156] = b"%06o\x00 " % sum(data[h : h + 512])
    tar.write_bytes(bytes(data))
    code, out = verify(d, "--workers", 2)
    assert code == 1 and any(line.startswith(f"{tar}: broken tar (") for line in out), out
    code, text = audit(d, "error")
    assert code == 1 and "th-00001.tar" in one_error(text)
    code, text = audit(d, "skip")
    assert code == 0 and audit_report(text)["epochs"][0]["corrupt_skipped"] == 1


def _npy(shape_text: str, pixels: bytes) -> bytes:
    d = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape_text}, }}".encode().ljust(501)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", 502) + d + b"\n" + pixels


@pytest.mark.parametrize("side", [2**64, 2**63, -1, 10**400])
def test_an_npy_shape_out_of_range_is_a_damaged_sample(tmp_path, side):
    d = tiny_set(tmp_path / "np", fmt="raw")
    pixels = bytes(16 * 16 * 3)
    replace_member(d, "np/000007.npy", _npy(f"({side}, 16, 3)", pixels))
    code, out = verify(d)
    (line,) = [line for line in out if "np/000007" in line]
    assert code == 1 and "np/000007.npy" in line and ("holds an array of shape" in line or "unreadable" in line)
    code, text = audit(d, "error")
    assert code == 1 and "np/000007" in one_error(text)
    code, text = audit(d, "skip")
    assert code == 0 and audit_report(text)["epochs"][0]["corrupt_skipped"] == 1


def _png_of_width(width: int) -> bytes:
    """A sound 16×16 PNG whose IHDR says ``width`` (CRC re-made): a number the PNG standard caps at 2^31 − 1."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[16:20] = struct.pack(">I", width)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


@pytest.mark.parametrize("width", [2**31, 2**32 - 1])
def test_a_png_side_beyond_int32_is_a_damaged_sample(tmp_path, width):
    """The loaders keep each image's (H, W) as int32: a PNG header of 2^31 columns used to overflow there."""
    d = tiny_set(tmp_path / "wide")
    replace_member(d, "wide/000003.png", _png_of_width(width))
    code, out = verify(d)
    (line,) = [line for line in out if "wide/000003" in line]
    assert code == 1 and f"is a PNG of 16×{width} pixels; want sides from 1 to {2**31 - 1}" in line
    code, text = audit(d, "error")
    assert code == 1 and f"16×{width}" in one_error(text)
    code, text = audit(d, "skip")
    assert code == 0 and audit_report(text)["epochs"][0]["corrupt_skipped"] == 1
    assert json.dumps(audit_report(text))  # the report is plain JSON


def test_refresh_keeps_an_intact_set_verifying(tmp_path):
    """The forging helpers themselves: an untouched set stays sound after refresh."""
    d = tiny_set(tmp_path / "ok")
    refresh(d)
    assert verify(d)[0] == 0
