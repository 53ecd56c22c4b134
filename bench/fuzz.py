"""``python -m bench fuzz``: random damage on tiny packed sets, every command run on each, every outcome judged.

    python -m bench fuzz --work /tmp/fuzz                # 26 cases per damage kind, each command a real process
    python -m bench fuzz --in-process --work /tmp/fuzz   # the same in one interpreter, fds captured (4× faster)
    python -m bench fuzz --cases 20 --seed 19 --in-process ...   # tests/test_faults.py: one case per kind

What a case does: copy one of three small sets packed by ``shards pack`` (JPEG real 10 classes, PNG generated,
raw real), damage it one way (:data:`KINDS`: bit flips in image bytes and in tar headers, truncation, appended
garbage, deleted files, edited or truncated ``.idx`` files, edited or removed ``manifest.json`` fields, members
replaced by other valid images, zero-length members, duplicate keys, edited ``.cls`` labels, and integers out of
every type's range — int64 overflow, negative, beyond 2^64, thousands of digits — in every file the project
parses: the index, the manifest, ``.cls``, ``KEY.json``, tar headers (base-256 and pax) and ``.npy`` headers;
member-level damage and half of the byte-level damage "consistent": the index re-made and the manifest's sha256,
bytes, counts and label counts updated — and bad command lines), then run ``python -m shards verify``,
``python -m loaders audit --json`` with ``--on-corrupt error`` and ``skip``, and a 2-step ``train.py
--backbone convnet`` (16-pixel crops: the sets' own size).

The judge (:func:`judge`) holds each outcome to the contract:

* never a signal, a hang (``--timeout``) or a traceback;
* a failure is one line (``Error: …``; click's usage preamble allowed; train.py's log of the run before it),
  ``verify``'s report one line per problem, each naming a path;
* what the audit delivered equals the oracle computed from the undamaged set: every delivered index position
  exactly ``weight`` times, the rest skipped and counted (none with ``--on-corrupt error``), each delivered
  sample's key, label and stored bytes those of the undamaged set, the label histogram theirs; a shard that
  no longer matches its manifest is named on stderr;
* a set that verifies trains: ``verify`` passing means the audit with ``--on-corrupt error`` passes, and every
  sample equals the oracle's;
* a version-2 set whose manifest lost its ``version`` (or says 1) is refused by every command: read as version 1
  its per-sample sha256 records would go unchecked.

The JSON report (``--json``) lists every case, its commands' exit codes and the failures; exit status 1 when
any case failed. The public helpers :func:`read_members` and :func:`write_tar` read and write a shard's tar
member by member (what the tests use to forge sets).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import runpy
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from shards.format.manifest import MANIFEST_NAME, Manifest
from shards.packing.writer import ustar_header
from shards.read.index import format_index, read_index

REPO = Path(__file__).resolve().parents[1]
WEIGHT = 2  # the audit's weight: every delivered sample exactly twice
KINDS = (
    "flip-image",
    "flip-header",
    "truncate",
    "append",
    "delete",
    "index-edit",
    "manifest-edit",
    "replace-image",
    "zero-length",
    "duplicate-key",
    "edit-label",
    "rot-after-cache",
    "cmdline",
    "manifest-remove",
    "int-index",
    "int-manifest",
    "int-cls",
    "int-json",
    "int-tar-header",
    "int-npy-header",
)
BASE_OF = {"int-npy-header": "raw"}  # kinds that need one base set (only raw sets hold .npy members)
INT_MEMBERS = ("int-cls", "int-json", "int-npy-header")  # member-level: the tar re-written, consistent half the time
MEMBER_LEVEL = ("replace-image", "zero-length", "duplicate-key", "edit-label", *INT_MEMBERS)  # rewrite the tar
BYTE_LEVEL = ("flip-image", "flip-header", "truncate", "append", "int-tar-header")  # consistent half of the time


# ---------------------------------------------------------------------------------------------------
# The sets, and what they hold
# ---------------------------------------------------------------------------------------------------
def build_bases(work: Path) -> dict[str, Path]:
    """Three small sets packed with ``shards pack`` (deterministic): ``jpg`` real, 10 classes, 24 images in 3
    shards; ``png`` generated, 20 in 2; ``raw`` real, 20 in 2 (``.npy`` members); 16×16 images of 4×4 blocks."""
    from shards.packing.pack import PackConfig, pack
    from shards.packing.sources import ArraySource

    bases = {}
    for fmt, kind, n, shard in (("jpg", "real", 24, 8), ("png", "generated", 20, 10), ("raw", "real", 20, 10)):
        out = work / "bases" / fmt
        if not (out / MANIFEST_NAME).is_file():
            rng = np.random.default_rng({"jpg": 1, "png": 2, "raw": 3}[fmt])
            blocks = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
            images = np.ascontiguousarray(np.kron(blocks, np.ones((1, 4, 4, 1), np.uint8)))
            labels = np.arange(n) % 10
            classes = tuple(f"c{k}" for k in range(10))
            src = ArraySource(f"fuzz {fmt}", labels, classes, images=images, origin_prefix=fmt)
            cfg = PackConfig(
                out=out, name=f"f{fmt}", kind=kind, format=fmt, shard_size=shard, workers=1, progress=False
            )
            pack(src, cfg)
        bases[fmt] = out
    return bases


@dataclass
class Oracle:
    """What the undamaged set holds: key -> (label, stored image member bytes)."""

    ext: str
    samples: dict[str, tuple[int, bytes]]


def oracle(directory: Path) -> Oracle:
    m = Manifest.load(directory)
    samples: dict[str, tuple[int, bytes]] = {}
    for s in m.shards:
        with tarfile.open(directory / s.file) as tf:
            parts: dict[str, dict[str, bytes]] = {}
            for info in tf:
                key, ext = _split(info.name)
                parts.setdefault(key, {})[ext] = tf.extractfile(info).read()
        for key, p in parts.items():
            samples[key] = (int(p["cls"]), p[m.ext])
    return Oracle(m.ext, samples)


def _split(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


# ---------------------------------------------------------------------------------------------------
# Damage
# ---------------------------------------------------------------------------------------------------
@dataclass
class Damage:
    kind: str
    detail: str
    consistent: bool = False
    args: dict = field(default_factory=dict)  # command-line changes (kind "cmdline")


def read_members(tar: str | os.PathLike) -> list[tuple[str, bytes]]:
    """(name, bytes) of every member of a tar, in order, read with ``tarfile`` (the test of a forged set reads
    it with another reader than the code under test)."""
    with tarfile.open(tar) as tf:
        return [(i.name, tf.extractfile(i).read()) for i in tf]


def write_tar(
    tar: str | os.PathLike, members: list[tuple[str, bytes]], headers: dict[int, bytes] | None = None
) -> None:
    """Write ``members`` ((name, bytes) pairs, in order) as ``ShardSetWriter`` writes a shard: one USTAR header
    and the data padded to 512 bytes each, then the end-of-archive blocks, the whole a multiple of tarfile's
    record size. ``headers``: raw header blocks (a pax extended header, say) to put before member ``i``. The
    caller re-makes the index (``wds2idx`` or :func:`reindex`) and the manifest when they must agree."""
    out = bytearray()
    for i, (name, data) in enumerate(members):
        out += (headers or {}).get(i, b"")
        out += ustar_header(name, len(data)) + data + bytes(-len(data) % 512)
    out += bytes(1024)
    out += bytes(-len(out) % tarfile.RECORDSIZE)
    Path(tar).write_bytes(bytes(out))


def reindex(directory: Path, s: int) -> None:
    """Make shard ``s``'s index from what ``tarfile`` can read of its tar, and the manifest agree with it."""
    d = json.loads((directory / MANIFEST_NAME).read_text())
    info = d["shards"][s]
    tar = directory / info["file"]
    samples: dict[str, list] = {}
    try:
        with tarfile.open(tar) as tf:
            for i in tf:
                key, ext = _split(i.name)
                samples.setdefault(key, []).append((ext, i.offset_data, i.size, i.name))
    except (tarfile.TarError, OSError, EOFError, ValueError, OverflowError):  # OverflowError: a size >= 2^63
        pass
    (directory / info["index"]).write_text(format_index(list(samples.values())))
    data = tar.read_bytes()
    labels: Counter = Counter()
    for members in samples.values():
        for ext, off, size, _ in members:
            if ext == "cls":
                try:
                    labels[str(int(data[off : off + size]))] += 1
                except ValueError:
                    pass
    info.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), count=len(samples))
    d["count"] = sum(x["count"] for x in d["shards"])
    counts = _all_labels(directory, d) if d.get("label_counts") else None
    if counts is not None:
        d["label_counts"] = counts
    (directory / MANIFEST_NAME).write_text(json.dumps(d, indent=2))


def _all_labels(directory: Path, d: dict) -> dict[str, int]:
    labels: Counter = Counter()
    for info in d["shards"]:
        try:
            with tarfile.open(directory / info["file"]) as tf:
                for i in tf:
                    if i.name.endswith(".cls"):
                        try:
                            labels[str(int(tf.extractfile(i).read()))] += 1
                        except ValueError:
                            pass
        except (tarfile.TarError, OSError, EOFError, ValueError, OverflowError):
            continue
    return dict(labels)


def _flip(data: bytearray, rng, lo: int, hi: int, bits: int) -> list[int]:
    where = sorted(rng.integers(lo, max(hi, lo + 1), bits).tolist())
    for p in where:
        data[p] ^= 1 << int(rng.integers(8))
    return where


def _image_of(rng, ext: str, shape: tuple[int, int]) -> bytes:
    from PIL import Image

    from shards.read.check import npy_header

    arr = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    if ext == "npy":
        return npy_header(*shape) + arr.tobytes()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, {"jpg": "JPEG", "png": "PNG"}[ext])
    return buf.getvalue()


MANIFEST_EDITS = [
    ("label_counts", "a string"),
    ("label_counts", [1, 2]),
    ("shards.count", None),
    ("shards.count", "8"),
    ("shards.count", 300.5),
    ("shards.file", 7),
    ("shards.file", None),
    ("shards.file", "../elsewhere.tar"),
    ("shards.index", 5),
    ("shards.sha256", 123),
    ("shards.bytes", -5),
    ("count", float("inf")),
    ("count", 1e400),
    ("count", 300.5),
    ("count", -1),
    ("image_size", [16]),
    ("image_size", [64, 64]),
    ("image_size", [0, 16]),
    ("version", 99),
    ("version", 1),
    ("version", "2"),
    ("kind", "fake"),
    ("format", "gif"),
    ("classes", "abc"),
    ("fid", "x"),
    ("name", 3),
    ("shards", "all"),
    ("shards.twice", None),
    ("split", None),
    ("image_ext", "tif"),
]
CMDLINE = [
    ("audit", ["--batch-size", "0"]),
    ("audit", ["--epochs", "0"]),
    ("audit", ["--on-corrupt", "maybe"]),
    ("audit", ["--crop-min-scale", "2"]),
    ("audit", ["--jitter-p", "-1"]),
    ("audit", ["--family", "nope"]),
    ("shards", ":-1"),
    ("shards", ":abc"),
    ("shards", ":1e400"),
    ("shards", "/nonexistent/set"),
    ("train", ["--steps", "-5"]),
    ("train", ["--batch-size", "0"]),
    ("train", ["--backbone", "nope"]),
    ("train", ["--num-threads", "0"]),
    ("train", ["--precision", "fp8"]),
    ("train", ["--lr", "nan"]),
]


def damage(rng: np.random.Generator, kind: str, d: Path) -> Damage:
    """Damage the set in ``d`` (a private copy) one way of ``kind``."""
    m = Manifest.load(d)
    s = int(rng.integers(len(m.shards)))
    tar, idx = d / m.shards[s].file, d / m.shards[s].index
    index = read_index(idx)
    i = int(rng.integers(len(index)))
    key, ext = str(index.keys[i]), m.ext
    consistent = bool(rng.random() < 0.5) if kind in BYTE_LEVEL else kind in MEMBER_LEVEL and bool(rng.random() < 0.5)
    data = bytearray(tar.read_bytes())
    if kind == "flip-image":
        off, size = int(index.offsets[ext][i]), int(index.sizes[ext][i])
        where = _flip(data, rng, off, off + size, int(rng.integers(1, 9)))
        tar.write_bytes(bytes(data))
        detail = f"{tar.name}: bits flipped in {key}.{ext} at {where}"
    elif kind == "flip-header":
        e = str(rng.choice(list(index.offsets)))
        off = int(index.offsets[e][i]) - 512
        where = _flip(data, rng, off, off + 512, int(rng.integers(1, 3)))
        tar.write_bytes(bytes(data))
        detail = f"{tar.name}: bits flipped in the header of {key}.{e} at {where}"
    elif kind == "truncate":
        cut = int(rng.integers(1, len(data)))
        tar.write_bytes(bytes(data[:cut]))
        detail = f"{tar.name}: cut to {cut} of {len(data)} bytes"
    elif kind == "append":
        extra = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        tar.write_bytes(bytes(data) + extra)
        detail = f"{tar.name}: {len(extra)} garbage bytes appended"
    elif kind == "delete":
        victim = [tar, idx, d / MANIFEST_NAME][int(rng.integers(3))]
        victim.unlink()
        detail = f"{victim.name} deleted"
    elif kind == "index-edit":
        detail = _edit_index(rng, idx, index, ext, i)
    elif kind == "manifest-edit":
        detail = _edit_manifest(rng, d, s)
        if detail.endswith("version = 1") and m.version >= 2:  # its tars say version 2: must be refused
            return Damage(kind, detail, args={"refuse": True})
    elif kind == "rot-after-cache":
        rot = {"rot": (str(tar), int(index.offsets[ext][i]))}
        return Damage(kind, f"{tar.name}: first byte of {key}.{ext} flipped after the loader cached it", args=rot)
    elif kind == "cmdline":
        which, change = CMDLINE[int(rng.integers(len(CMDLINE)))]
        return Damage(kind, f"{which} {change}", args={which: change})
    elif kind == "manifest-remove":
        detail, refuse = _remove_manifest_field(rng, d, s, m)
        return Damage(kind, detail, args={"refuse": refuse} if refuse else {})
    elif kind == "int-index":
        detail = _int_index(rng, idx, index)
    elif kind == "int-manifest":
        detail = _int_manifest(rng, d, s)
    elif kind == "int-tar-header":
        detail = _int_tar_header(rng, tar, data, index, key, i)
    else:
        members = read_members(tar)
        names = [n for n, _ in members]
        at = names.index(f"{key}.{ext}")
        if kind == "replace-image":
            shape = [(1, 1), (8, 200), (32, 32), (16, 16)][int(rng.integers(4))]
            other = [x for x in ("jpg", "png", "npy") if x != ext][int(rng.integers(2))] if shape == (16, 16) else ext
            members[at] = (members[at][0], _image_of(rng, other, shape))
            detail = f"{key}.{ext} replaced by a {shape[0]}x{shape[1]} {other} image"
        elif kind == "zero-length":
            members[at] = (members[at][0], b"")
            detail = f"{key}.{ext} emptied"
        elif kind == "duplicate-key":
            other = str(index.keys[(i + 1) % len(index)])
            members = [
                (n.replace(f"{other}.", f"{key}.", 1) if n.startswith(f"{other}.") else n, b) for n, b in members
            ]
            detail = f"{other} renamed {key}"
        elif kind == "edit-label":
            value = [b"99", b"-2", b"x", b"10", b"", str(int(rng.integers(0, 11))).encode()][int(rng.integers(6))]
            at = names.index(f"{key}.cls")
            members[at] = (members[at][0], value)
            detail = f"{key}.cls set to {value!r}"
        elif kind == "int-cls":
            text = _int_text(rng)
            at = names.index(f"{key}.cls")
            members[at] = (members[at][0], text.encode())
            detail = f"{key}.cls set to {_brief(text)}"
        elif kind == "int-json":
            detail = _int_json(rng, members, names, key)
        else:  # int-npy-header
            detail = _int_npy_header(rng, members, at, key)
        write_tar(tar, members)
        detail = f"{tar.name}: {detail}"
    if consistent and tar.exists():
        reindex(d, s)
        detail += " (consistent: index re-made, manifest updated)"
    return Damage(kind, detail, consistent)


# integers out of every type's range: int64 overflow, negative, 2^64 and beyond, more digits than Python reads
INT_VALUES = (2**63, 2**64, 2**64 + 1, -1, -(2**63) - 1, 10**40, 10**400)  # 10^400: past float's range too
LONG_DIGITS = 5000  # past Python's 4,300-digit limit on converting text to int


def _int_text(rng) -> str:
    """One out-of-range integer as text: a value of :data:`INT_VALUES`, or :data:`LONG_DIGITS` digits."""
    k = int(rng.integers(len(INT_VALUES) + 1))
    return "9" * LONG_DIGITS if k == len(INT_VALUES) else str(INT_VALUES[k])


def _brief(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:12]}… ({len(text)} digits)"


def _int_index(rng, idx: Path, index) -> str:
    """An offset or size of one index line (or the header's sample count) made an out-of-range integer."""
    lines = idx.read_text().splitlines()
    text = _int_text(rng)
    if rng.random() < 0.2:
        lines[0] = f"v1.2 {text.lstrip('-')}"
        what = "header count"
    else:
        line = 1 + int(rng.integers(len(lines) - 1))
        parts = lines[line].split()
        g = 4 * int(rng.integers(len(parts) // 4))
        field = 1 + int(rng.integers(2))
        parts[g + field] = text
        lines[line] = " ".join(parts)
        what = f"line {line + 1}: the {parts[g]} {'offset' if field == 1 else 'size'}"
    idx.write_text("\n".join(lines) + "\n")
    return f"{idx.name}: {what} set to {_brief(text)}"


def _int_manifest(rng, d: Path, s: int) -> str:
    """An integer field of the manifest made out of range; half the time its sums kept consistent (the shard's
    count and the set's count raised together), so only the range check can refuse it."""
    path = d / MANIFEST_NAME
    doc = json.loads(path.read_text())
    text = _int_text(rng)
    fields = ["count", "shards.count", "shards.bytes", "label_counts", "image_size", "version", "fid", "consistent"]
    field = fields[int(rng.integers(len(fields)))]
    marker = "__OUT_OF_RANGE__"  # json.dumps cannot write 5,000 digits: the number goes in as text
    if field == "consistent":
        value = int(text) if len(text) < LONG_DIGITS else 2**64
        doc["shards"][s]["count"] += value
        doc["count"] += value
        if doc.get("label_counts"):
            label = next(iter(doc["label_counts"]))
            doc["label_counts"][label] += value
        path.write_text(json.dumps(doc, indent=2))
        return f"{MANIFEST_NAME}: shards[{s}].count, count and a label count raised by {_brief(str(value))} together"
    if field.startswith("shards."):
        doc["shards"][s][field.split(".", 1)[1]] = marker
    elif field == "label_counts" and doc.get("label_counts"):
        doc["label_counts"][next(iter(doc["label_counts"]))] = marker
    elif field == "image_size":
        doc["image_size"] = [marker, 16]
    else:
        doc[field] = marker
    path.write_text(json.dumps(doc, indent=2).replace(f'"{marker}"', text))
    return f"{MANIFEST_NAME}: {field} set to {_brief(text)}"


def _remove_manifest_field(rng, d: Path, s: int, m: Manifest) -> tuple[str, bool]:
    """One field of the manifest (top-level or of one shard) removed; whether every command must refuse the
    set (a version-2 set that loses its version would be read as version 1, unchecked)."""
    path = d / MANIFEST_NAME
    doc = json.loads(path.read_text())
    fields = [*doc, *(f"shards.{k}" for k in doc["shards"][s])]
    field = fields[int(rng.integers(len(fields)))]
    if field.startswith("shards."):
        del doc["shards"][s][field.split(".", 1)[1]]
    else:
        del doc[field]
    path.write_text(json.dumps(doc, indent=2))
    return f"{MANIFEST_NAME}: field {field} removed", field == "version" and m.version >= 2


def _int_json(rng, members: list, names: list[str], key: str) -> str:
    """A field of one ``KEY.json`` record made an out-of-range integer (the label also in ``.cls``, half the
    time: label and record then agree, only the range is wrong)."""
    at = names.index(f"{key}.json")
    text = _int_text(rng)
    field = ["label", "sha256", "origin"][int(rng.integers(3))]
    if field == "label" and text == "-1":  # -1 is a legal label (unlabelled): in both members, a forgery no check sees
        text = str(-(2**63) - 1)
    record = json.loads(members[at][1])
    record[field] = "__OUT_OF_RANGE__"
    members[at] = (members[at][0], json.dumps(record).replace('"__OUT_OF_RANGE__"', text).encode())
    also = ""
    if field == "label" and rng.random() < 0.5:
        c = names.index(f"{key}.cls")
        members[c] = (members[c][0], text.encode())
        also = " and in its .cls"
    return f"{key}.json: {field} set to {_brief(text)}{also}"


def _int_npy_header(rng, members: list, at: int, key: str) -> str:
    """The ``.npy`` header of one image given an out-of-range shape or header length (the member's length kept)."""
    name, blob = members[at]
    how = int(rng.integers(3))
    if how == 0:  # a side of the shape
        value = INT_VALUES[int(rng.integers(len(INT_VALUES)))]
        shape = [16, 16, 3]
        shape[int(rng.integers(3))] = value
        d = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({shape[0]}, {shape[1]}, {shape[2]}), }}"
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", 502) + d.encode().ljust(501) + b"\n"
        what = f"shape ({shape[0]}, {shape[1]}, {shape[2]})"
    elif how == 1:  # format 2.0 with a 4-byte header length at its maximum
        head = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + blob[12:512]
        what = "header length 2^32 - 1 (format 2.0)"
    else:  # a shape of thousands of digits
        d = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({'9' * 400}, 16, 3), }}"
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", 502) + d.encode().ljust(501) + b"\n"
        what = "shape of a 400-digit side"
    members[at] = (name, head[:512] + blob[512:])
    return f"{key}.npy: .npy header with {what}"


def _base256(value: int, width: int) -> bytes | None:
    """``value`` in a tar numeric field of ``width`` bytes as GNU base-256 (0x80 first for positive values, two's
    complement for negative ones); None when it does not fit."""
    if value >= 0:
        return bytes([0x80]) + value.to_bytes(width - 1, "big") if value < 256 ** (width - 1) else None
    return (256**width + value).to_bytes(width, "big") if value >= -(256 ** (width - 1)) else None


def _pax(name: str, records: dict[str, str]) -> bytes:
    """A pax extended header (type ``x``) with ``records``, padded to whole blocks."""
    body = b""
    for k, v in records.items():
        line = f" {k}={v}\n".encode()
        n = len(line) + 1
        while len(str(n)) + len(line) != n:
            n = len(str(n)) + len(line)
        body += str(n).encode() + line
    h = bytearray(ustar_header(f"PaxHeader/{name}"[:100], len(body)))
    h[156] = ord("x")
    h[148:156] = b"        "
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h) + body + bytes(-len(body) % 512)


def _int_tar_header(rng, tar: Path, data: bytearray, index, key: str, i: int) -> str:
    """A numeric field of one member's tar header made out of range: the size, mtime, uid or gid in base-256
    (the checksum re-made, so only the value is wrong), or a pax record before the member."""
    e = str(rng.choice(list(index.offsets)))
    if rng.random() < 0.3:  # a pax header: any integer, as decimal text
        field = ["size", "mtime", "uid", "gid"][int(rng.integers(4))]
        text = _int_text(rng)
        members = read_members(tar)
        at = [n for n, _ in members].index(f"{key}.{e}")
        write_tar(tar, members, headers={at: _pax(f"{key}.{e}", {field: text})})
        return f"{tar.name}: a pax header before {key}.{e} with {field}={_brief(text)}"
    field, start, width = [("size", 124, 12), ("mtime", 136, 12), ("uid", 108, 8), ("gid", 116, 8)][
        int(rng.integers(4))
    ]
    values = [v for v in (*INT_VALUES, 2**87, 2**55) if _base256(v, width) is not None]
    value = values[int(rng.integers(len(values)))]
    h = int(index.offsets[e][i]) - 512
    data[h + start : h + start + width] = _base256(value, width)
    data[h + 148 : h + 156] = b"        "
    data[h + 148 : h + 156] = b"%06o\x00 " % sum(data[h : h + 512])
    tar.write_bytes(bytes(data))
    return f"{tar.name}: the {field} of {key}.{e}'s tar header set to {value} (base-256)"


def _edit_index(rng, idx: Path, index, ext: str, i: int) -> str:
    lines = idx.read_text().splitlines()
    n = len(lines) - 1
    j = 1 + (i + 1) % n
    how = int(rng.integers(6))
    if how == 0 and n > 1:
        lines[1 + i], lines[j] = lines[j], lines[1 + i]
        what = f"lines {1 + i} and {j} swapped"
    elif how == 1 and n > 1:
        lines[j] = lines[1 + i]
        what = f"line {1 + i} duplicated over line {j}"
    elif how == 2 and n > 1:
        a, b = lines[1 + i].split(), lines[j].split()
        g = a.index(ext)
        a[g + 1] = b[g + 1]
        lines[1 + i] = " ".join(a)
        what = f"the {ext} offset of line {1 + i} copied from line {j}"
    elif how == 3:
        a = lines[1 + i].split()
        g = a.index(ext)
        a[g + 2] = str(int(a[g + 2]) + int(rng.integers(-20, 20)))
        lines[1 + i] = " ".join(a)
        what = f"the {ext} size of line {1 + i} changed"
    elif how == 4:
        text = "\n".join(lines) + "\n"
        cut = int(rng.integers(0, len(text)))
        idx.write_text(text[:cut])
        return f"{idx.name}: cut to {cut} characters"
    else:
        lines[0] = f"v1.2 {n + int(rng.integers(1, 3))}"
        what = "header count raised"
    idx.write_text("\n".join(lines) + "\n")
    return f"{idx.name}: {what}"


def _edit_manifest(rng, d: Path, s: int) -> str:
    path = d / MANIFEST_NAME
    doc = json.loads(path.read_text())
    name, value = MANIFEST_EDITS[int(rng.integers(len(MANIFEST_EDITS)))]
    if name == "shards.twice":
        doc["shards"].append(dict(doc["shards"][s]))
        doc["count"] += doc["shards"][s]["count"]
    elif name.startswith("shards."):
        doc["shards"][s][name.split(".", 1)[1]] = value
    else:
        doc[name] = value
    path.write_text(json.dumps(doc, indent=2))  # Infinity for float("inf") and 1e400, as Python's json writes
    return f"{MANIFEST_NAME}: {name} = {value!r}"


# ---------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------
@dataclass
class Result:
    rc: int | None  # None: killed by a signal or timed out (see ``died``)
    out: str
    err: str
    died: str = ""
    seconds: float = 0.0


def commands(d: Path, run_dir: Path, dmg: Damage) -> list[tuple[str, list[str]]]:
    """(name, argv without the interpreter) of each command run on a damaged set."""
    shards = f"{d}:{WEIGHT}"
    if isinstance(dmg.args.get("shards"), str):
        change = dmg.args["shards"]
        shards = change if change.startswith("/") else f"{d}{change}"
    audit = ["-m", "loaders", "audit", "--shards", shards, "--batch-size", "8", "--threads", "1", "--json"]
    audit += ["--keep-last"]  # every key WEIGHT times: the judge counts the whole epoch
    audit += ["--inflation", "vanilla"]
    bad = dmg.args.get("audit", [])  # last: a repeated option's last value wins
    train = [str(REPO / "train.py"), "--shards", shards, "--backbone", "convnet", "--steps", "2", "--image-size", "16"]
    train += ["--batch-size", "8", "--device", "cpu", "--num-threads", "1", "--on-corrupt", "skip"]
    train += ["--inflation", "vanilla", "--out", str(run_dir), *dmg.args.get("train", [])]
    return [
        ("verify", ["-m", "shards", "verify", str(d), "--workers", "1"]),
        ("audit-error", [*audit, "--on-corrupt", "error", *bad]),
        ("audit-skip", [*audit, "--on-corrupt", "skip", *bad]),
        ("train", train),
    ]


def run_subprocess(argv: list[str], env: dict, timeout: float) -> Result:
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return Result(None, out, "", f"hung (killed after {timeout:.0f} s)", time.perf_counter() - t)
    died = f"killed by signal {-p.returncode}" if p.returncode < 0 else ""
    return Result(None if died else p.returncode, p.stdout, p.stderr, died, time.perf_counter() - t)


def run_in_process(argv: list[str], env: dict) -> Result:
    """The command in this interpreter (``-m MODULE`` or a script), its fds 1 and 2 captured in files: what a
    process would print, C libraries' output included; an exception that escapes is a traceback."""
    t = time.perf_counter()
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update(env)
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        sys.stdout.flush(), sys.stderr.flush()
        keep = os.dup(1), os.dup(2)
        os.dup2(fo.fileno(), 1), os.dup2(fe.fileno(), 2)
        rc: int | None = 0
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - an escaped exception is what the judge looks for
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(keep[0], 1), os.dup2(keep[1], 2)
            os.close(keep[0]), os.close(keep[1])
            sys.argv = saved_argv
            os.environ.clear()
            os.environ.update(saved_env)
        fo.seek(0), fe.seek(0)
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
    return Result(rc, out, err, "", time.perf_counter() - t)


# ---------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------
def judge(name: str, r: Result, d: Path, base: Oracle, dmg: Damage, verified: bool) -> list[str]:
    """What is wrong with one command's outcome (empty: it kept the contract)."""
    text = r.out + r.err
    if r.died:
        return [f"{name}: {r.died}"]
    if "Traceback (most recent call last)" in text:
        return [f"{name}: printed a traceback: {_last_lines(text)}"]
    if r.rc != 0:
        return _one_line_failure(name, r, d)
    if dmg.args.get("refuse"):
        return [f"{name}: accepted a version-2 set whose manifest reads as version 1 ({dmg.detail})"]
    if dmg.kind == "cmdline" and name != "verify" and dmg.args and _targets(dmg, name):
        return [f"{name}: accepted the bad command line {dmg.detail!r}"]
    if name.startswith("audit"):
        return _audit_matches_oracle(name, r, d, base)
    if name == "verify":
        return _set_matches_oracle(d, base)
    return []


def _targets(dmg: Damage, name: str) -> bool:
    return (
        "shards" in dmg.args
        or ("audit" in dmg.args and name.startswith("audit"))
        or ("train" in dmg.args and name == "train")
    )


def _last_lines(text: str) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-3:])[:300]


def _one_line_failure(name: str, r: Result, d: Path) -> list[str]:
    if name == "verify":
        problems = [line for line in r.out.splitlines() if line.strip()]
        if not problems:
            return [f"verify: exit {r.rc} without a problem line"]
        bad = [p for p in problems if not p.startswith(("/", str(d)))]
        return [f"verify: a problem line that names no path: {bad[0][:200]!r}"] if bad else []
    lines = [line for line in r.err.splitlines() if line.strip() and not line.lower().startswith("warning")]
    lines = [line for line in lines if not _is_known_noise(line)]
    errors = [line for line in lines if line.startswith("Error:")]
    others = [line for line in lines if not line.startswith(("Error:", "Usage:", "Try '"))]
    if name == "train":  # train.py logs its recipe and progress on stderr before any failure
        others = []
    if len(errors) != 1 or others:
        return [f"{name}: exit {r.rc} without exactly one error line: {_last_lines(r.err or r.out)}"]
    return []


def _is_known_noise(line: str) -> bool:
    """Lines that are not the error: the changed-shard warnings of the loader (one line each, naming a tar)."""
    return not line.startswith("Error:") and ".tar: " in line and "since it was packed" in line


def _indexed(d: Path) -> list[tuple[str, bytes, int | None]] | None:
    """(key, stored image bytes, label) of every indexed sample of the damaged set, as the loader reads them
    (each entry's offset and size in its index); None when manifest or indexes cannot be read."""
    try:
        m = Manifest.load(d)
        out = []
        for s in m.shards:
            index = read_index(d / s.index)
            data = (d / s.file).read_bytes()
            for k in range(min(len(index), s.count)):
                o, n = int(index.offsets[m.ext][k]), int(index.sizes[m.ext][k])
                co, cn = int(index.offsets["cls"][k]), int(index.sizes["cls"][k])
                try:
                    label = int(data[co : co + cn])
                except ValueError:
                    label = None
                out.append((str(index.keys[k]), data[o : o + n], label))
        return out
    except Exception:  # noqa: BLE001 - anything unreadable: the loader cannot have read it either
        return None


def _audit_matches_oracle(name: str, r: Result, d: Path, base: Oracle) -> list[str]:
    try:
        report = json.loads(r.out.strip().splitlines()[-1])
        (epoch,) = report["epochs"]
        (mult,) = epoch["key_multiplicity"].values()
    except (ValueError, IndexError, KeyError, TypeError):
        return [f"{name}: exit 0 without its JSON report: {_last_lines(r.out)}"]
    samples = _indexed(d)
    if samples is None:
        return [f"{name}: exit 0 on a set whose manifest or index cannot be read"]
    hist = {int(k): v for k, v in mult.items()}
    if set(hist) - {0, WEIGHT} or sum(hist.values()) != len(samples):
        return [f"{name}: key multiplicities {hist} for {len(samples)} samples (want each {WEIGHT}x or skipped)"]
    delivered_n, skipped_n = hist.get(WEIGHT, 0), hist.get(0, 0)
    problems = []
    if name == "audit-error" and skipped_n:
        problems.append(f"{name}: {skipped_n} samples silently left out with --on-corrupt error")
    if epoch["corrupt_skipped"] != skipped_n * WEIGHT:
        problems.append(f"{name}: {epoch['corrupt_skipped']} reported skipped, {skipped_n * WEIGHT} left out")
    skipped_keys = {k.split("/", 1)[1] for k in epoch.get("corrupt_keys", [])}
    labels: Counter = Counter()
    for key, data, label in samples:
        if key in skipped_keys:
            continue
        want = base.samples.get(key)
        if want is None:
            problems.append(f"{name}: delivered {key}, a key the undamaged set does not have")
        elif (label, data) != want:
            what = "label" if data == want[1] else "image bytes"
            problems.append(f"{name}: delivered {key} with other {what} than the undamaged set")
        labels[str(label)] += WEIGHT
    if len(samples) - len(skipped_keys) != delivered_n:
        problems.append(f"{name}: {delivered_n} keys delivered but {len(samples) - len(skipped_keys)} not skipped")
    elif dict(labels) != {k: v for k, v in epoch["labels"].items()}:
        problems.append(f"{name}: label histogram {epoch['labels']}, the undamaged set's {dict(labels)}")
    changed = _changed_tars(d)
    missing = [t for t in changed if t not in r.err]
    if missing:
        problems.append(f"{name}: exit 0 without naming the changed shard {missing[0]}")
    return problems[:3]


def _changed_tars(d: Path) -> list[str]:
    try:
        m = Manifest.load(d)
    except Exception:  # noqa: BLE001
        return []
    out = []
    for s in m.shards:
        p = d / s.file
        if p.is_file() and (p.stat().st_size != s.bytes or hashlib.sha256(p.read_bytes()).hexdigest() != s.sha256):
            out.append(str(p))
    return out


def _set_matches_oracle(d: Path, base: Oracle) -> list[str]:
    samples = _indexed(d)
    if samples is None:
        return ["verify: passed a set whose manifest or index cannot be read"]
    for key, data, label in samples:
        if base.samples.get(key) != (label, data):
            return [f"verify: passed a set whose sample {key} differs from the undamaged set"]
    return []


# ---------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------
def run_case(
    case: int,
    seed: int,
    bases: dict[str, Path],
    oracles: dict[str, Oracle],
    work: Path,
    in_process: bool,
    timeout: float,
) -> dict:
    rng = np.random.default_rng([seed, case])
    kind = KINDS[case % len(KINDS)]
    fmt = list(bases)[int(rng.integers(len(bases)))]
    fmt = BASE_OF.get(kind, fmt)
    d = work / f"case-{case:04d}" / bases[fmt].name
    shutil.rmtree(d.parent, ignore_errors=True)
    shutil.copytree(bases[fmt], d, ignore=shutil.ignore_patterns("*.loader-cache.npz", ".lock"))
    env = {"XDG_CACHE_HOME": str(d.parent / "user-cache"), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = "1"  # tiny batches: torch's thread pool only spins (4x the CPU time on a busy machine)
    env_all = {**os.environ, **env}

    def run(argv):
        return run_in_process(argv, env) if in_process else run_subprocess(argv, env_all, timeout)

    dmg = damage(rng, kind, d)
    if kind == "rot-after-cache":  # the loader opens the intact set (caching its verdicts), then storage rots
        first = commands(d, d.parent / "run0", dmg)[1][1]
        run(first)
        tar, off = dmg.args.pop("rot")
        st = os.stat(tar)
        with open(tar, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0x01]))
        os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))  # the modification time kept
    record = {"case": case, "set": fmt, "kind": kind, "damage": dmg.detail, "commands": {}, "failures": []}
    verified = False
    for name, argv in commands(d, d.parent / "run", dmg):
        r = run(argv)
        if name == "verify":
            verified = r.rc == 0
        problems = judge(name, r, d, oracles[fmt], dmg, verified)
        if name == "audit-error" and verified and r.rc != 0 and dmg.kind != "cmdline":
            problems.append("a set that verifies does not train: audit --on-corrupt error failed")
        record["commands"][name] = {"rc": r.rc, "seconds": round(r.seconds, 2), "tail": _last_lines(r.err or r.out)}
        record["failures"] += problems
    return record


def fuzz(cases: int, seed: int, work: Path, in_process: bool = False, timeout: float = 300, log=print) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    bases = build_bases(work)
    oracles = {k: oracle(v) for k, v in bases.items()}
    records, t0 = [], time.perf_counter()
    progress = work / "progress.txt"
    for case in range(cases):
        progress.write_text(f"case {case}\n")  # what was running if this process dies
        rec = run_case(case, seed, bases, oracles, work, in_process, timeout)
        records.append(rec)
        state = "FAIL " + "; ".join(rec["failures"]) if rec["failures"] else "ok"
        codes = " ".join(f"{k}={v['rc']}" for k, v in rec["commands"].items())
        log(f"case {case:4d} {rec['kind']:>15} {rec['set']}: {codes}  {state}  ({rec['damage']})")
    failed = [r for r in records if r["failures"]]
    return {
        "cases": cases,
        "seed": seed,
        "in_process": in_process,
        "seconds": round(time.perf_counter() - t0, 1),
        "kinds": dict(Counter(r["kind"] for r in records)),
        "commands_run": sum(len(r["commands"]) for r in records),
        "failed": len(failed),
        "records": records,
    }


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------
CASES_PER_KIND = 26


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--cases",
    type=click.IntRange(min=1),
    default=CASES_PER_KIND * len(KINDS),
    show_default=True,
    help=f"Cases, the damage kinds in turn ({len(KINDS)} kinds: {CASES_PER_KIND} of each by default).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--work", type=click.Path(path_type=Path), default=None, help="Working folder (default: a temporary one)."
)
@click.option(
    "--in-process", is_flag=True, help="Run the commands in this interpreter (fast; what the test suite does)."
)
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True, help="Seconds per command.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report here.")
def main(cases, seed, work, in_process, timeout, json_path):
    """Damage tiny packed sets at random (seeded) and hold verify, the audit and train.py to the contract."""
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        report = fuzz(cases, seed, Path(work or tmp), in_process=in_process, timeout=timeout, log=click.echo)
    if json_path:
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    click.echo(
        f"{report['cases']} cases, {report['commands_run']} commands, {report['failed']} failed, {report['seconds']} s"
    )
    for kind, ends in summary(report).items():
        click.echo(f"{kind}: " + "; ".join(f"{n}× {codes}" for codes, n in ends.items()))
    if report["failed"]:
        sys.exit(1)


def summary(report: dict) -> dict[str, dict[str, int]]:
    """Per damage kind, how its cases ended: the judge's failures (``FAILED``), else which commands exited 0
    (``pass``) or refused (``exit N``), e.g. ``verify 1, audit-error 1, audit-skip 0, train 0``."""
    out: dict[str, Counter] = {}
    for r in report["records"]:
        codes = ", ".join(f"{k} {'0' if c['rc'] == 0 else c['rc']}" for k, c in r["commands"].items())
        out.setdefault(r["kind"], Counter())["FAILED" if r["failures"] else codes] += 1
    return {k: dict(v.most_common()) for k, v in out.items()}
