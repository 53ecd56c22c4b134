"""The one judgement of a stored sample, shared by ``shards verify`` and the loaders: a set that verifies is a
set that trains.

A sample gets a *verdict* (uint8; :data:`OK` = 0, the reasons in :data:`WHY`) from what its members hold:

* the image (:func:`check_image`): for JPEG a walk of the marker segments up to the start of scan, as strict
  as nvImageCodec's parser (DALI's), then a full decode; for PNG the chunks with their CRCs (libpng checks
  them, PIL skips IDAT's), 8-bit grey or RGB, then a full decode; for raw pixels the ``.npy`` header (shape
  (H, W, 3), uint8, C order) and the length; the image's real (H, W) comes back with the verdict;
* the label (:func:`parse_label`): ASCII ``-?[0-9]+``, and in range (:func:`labels_in_range`):
  −1 ≤ label < ``Manifest.num_classes`` (−1 = unlabelled, so an unlabelled set holds only −1);
* the ``.json`` record (:func:`check_meta`): sets packed since manifest version 2 record each sample's label
  and the sha256 of its image member there, so a changed or rotten image or label is found exactly, also when
  it still decodes;
* the size (:func:`sizes_match`): an image whose (H, W) is not the manifest's ``image_size`` is corrupt.

Why the image check is stricter than a decode: DALI's decoders do not fail cleanly on every damaged image. A
JPEG whose body is rotten but whose SOI/EOI markers are intact passes a signature check, and DALI's pipeline
then fails (its header parser rejects it) and, with several threads and prefetching, may kill the process
with SIGSEGV. A fuzzing probe (1,500 random corruptions of CIFAR-10 JPEGs, 800 of EDM PNGs) found that PIL's
decoder alone accepts about 1 in 20 JPEGs that DALI rejects (extra or zeroed bytes between header segments:
libjpeg skips them, nvImageCodec's parser does not), and that PNG damage is caught by the chunk CRCs that PIL
skips. With the marker walk, the CRCs and a full decode, no corruption in the probe reached DALI. The cost
(about 30–50 µs per 32×32 image) is paid once per set: :func:`check_members` spreads it over worker
processes and the loaders cache the verdicts (``shards.read.reader``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import re
import struct
import zlib

import numpy as np

from shards.base.host import cores
from shards.read.members import map_file

# verdicts (uint8): why a sample is never handed to a decoder
OK, TRUNCATED, BAD_SIZE, BAD_LABEL, BAD_STRUCTURE, UNDECODABLE, LABEL_RANGE, BAD_DIGEST, BAD_META, BAD_HEADER = range(
    10
)
WHY = {  # each completes "sample KEY …"
    TRUNCATED: "is truncated (its bytes lie past the end of the tar)",
    BAD_SIZE: "has another size than the manifest's image_size",
    BAD_LABEL: "is damaged (its .cls member is not an integer)",
    BAD_STRUCTURE: "is damaged (broken JPEG markers, PNG chunks or .npy header, or not the set's format)",
    UNDECODABLE: "does not decode",
    LABEL_RANGE: "has a label outside the set's classes",
    BAD_DIGEST: "has changed since it was packed (its bytes differ from the sha256 in its .json)",
    BAD_META: "is damaged (its .json is unreadable or disagrees with its .cls label or the manifest)",
    BAD_HEADER: "is damaged (its tar header does not match the index)",
}
NPY_HEADER = 512  # the .npy header pack writes: one tar block, so the pixels stay block-aligned
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_LABEL = re.compile(rb"-?[0-9]{1,18}")


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------
def check_image(buf: bytes, ext: str) -> tuple[int, int, int]:
    """(verdict, H, W) of one stored image member (``ext``: jpg, png, npy; raw gives (OK, 0, 0): its shape is
    the manifest's, see :func:`sizes_match`)."""
    if ext == "raw":
        return OK, 0, 0
    if ext == "npy":
        head = npy_shape(buf)
        return (BAD_STRUCTURE, 0, 0) if head is None else (OK, head[1], head[2])
    dims = _jpeg_dims(buf) if ext == "jpg" else _png_dims(buf) if ext == "png" else None
    if dims is None:
        return BAD_STRUCTURE, 0, 0
    from PIL import Image

    h, w = dims
    if h * w > Image.MAX_IMAGE_PIXELS:  # PIL would warn or refuse: no shard set holds such images
        return UNDECODABLE, h, w
    try:
        with Image.open(io.BytesIO(buf)) as im:
            if im.format != {"jpg": "JPEG", "png": "PNG"}[ext] or im.mode not in ("RGB", "L"):
                return BAD_STRUCTURE, h, w
            im.load()
            if (im.height, im.width) != (h, w):
                return BAD_STRUCTURE, h, w
    except Exception:  # noqa: BLE001 - any decoder failure means "undecodable"
        return UNDECODABLE, h, w
    return OK, h, w


def check_bytes(buf: bytes, fmt: str) -> int:
    """The verdict alone (``fmt``: jpg, png, npy or raw)."""
    return check_image(buf, fmt)[0]


def _jpeg_dims(b: bytes) -> tuple[int, int] | None:
    """(H, W) from the frame header when the marker segments up to SOS are sound — SOI, then ``FF xx`` +
    big-endian length segments, a baseline, extended or progressive Huffman frame (SOF0–2, what libjpeg
    writes) before SOS — as nvImageCodec's JPEG parser reads them; None otherwise."""
    n = len(b)
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    pos, dims = 2, None
    while True:
        if pos + 2 > n or b[pos] != 0xFF:
            return None
        pos += 1
        while pos < n and b[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n or b[pos] == 0:
            return None
        marker = b[pos]
        pos += 1
        if marker == 0xDA:
            return dims
        if pos + 2 > n:
            return None
        length = (b[pos] << 8) | b[pos + 1]
        if length < 2 or pos + length > n:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker > 0xC2 or dims is not None or length < 8:  # lossless/arithmetic/hierarchical, or a second SOF
                return None
            comps = b[pos + 7]
            h, w = (b[pos + 3] << 8) | b[pos + 4], (b[pos + 5] << 8) | b[pos + 6]
            if comps not in (1, 3) or length < 8 + 3 * comps or h == 0 or w == 0:
                return None
            dims = (h, w)
        pos += length


def _png_dims(b: bytes) -> tuple[int, int] | None:
    """(H, W) when the signature, an 8-bit grey or RGB IHDR first, every chunk's CRC and IEND are sound."""
    n = len(b)
    if n < 8 + 25 or b[:8] != _PNG_SIG:
        return None
    pos, dims = 8, None
    while True:
        if pos + 12 > n:
            return None
        (length,) = struct.unpack_from(">I", b, pos)
        kind = b[pos + 4 : pos + 8]
        if length > n - pos - 12 or ((dims is None) != (kind == b"IHDR")):
            return None
        (crc,) = struct.unpack_from(">I", b, pos + 8 + length)
        if zlib.crc32(b[pos + 4 : pos + 8 + length]) & 0xFFFFFFFF != crc:
            return None
        if kind == b"IHDR":
            if length != 13:
                return None
            w, h, depth, colour = struct.unpack_from(">IIBB", b, pos + 8)
            if depth != 8 or colour not in (0, 2) or h == 0 or w == 0:
                return None
            dims = (h, w)
        pos += 12 + length
        if kind == b"IEND":
            return dims


# -- raw pixels as .npy ------------------------------------------------------------------------------
def npy_header(h: int, w: int) -> bytes:
    """The 512-byte ``.npy`` (format 1.0) header of an (h, w, 3) uint8 array, padded with spaces as the format
    allows, so the pixels that follow start on a tar block like the member itself."""
    d = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({int(h)}, {int(w)}, 3), }}".encode()
    pad = NPY_HEADER - 10 - len(d) - 1
    if pad < 0:
        raise ValueError(f"image size {h}x{w} too large for a {NPY_HEADER}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", NPY_HEADER - 10) + d + b" " * pad + b"\n"


def npy_shape(buf: bytes | memoryview) -> tuple[int, int, int] | None:
    """(header length, H, W) of an ``.npy`` member holding one (H, W, 3) uint8 C-order array and nothing
    else; None for anything else."""
    head = npy_prefix(buf)
    if head is None:
        return None
    hl, h, w = head
    return head if len(buf) == hl + h * w * 3 else None


def npy_prefix(buf: bytes | memoryview) -> tuple[int, int, int] | None:
    """(header length, H, W) from an ``.npy`` header describing an (H, W, 3) uint8 C-order array; None when
    it is not one (the length of the data is not looked at)."""
    if len(buf) < 10 or bytes(buf[:6]) != b"\x93NUMPY":
        return None
    major = buf[6]
    if major == 1:
        hl = 10 + struct.unpack_from("<H", buf, 8)[0]
    elif major in (2, 3) and len(buf) >= 12:
        hl = 12 + struct.unpack_from("<I", buf, 8)[0]
    else:
        return None
    if hl > min(len(buf), 65536):
        return None
    return _parse_npy_header(bytes(buf[:hl]), 10 if major == 1 else 12)


@functools.lru_cache(maxsize=256)  # a set's headers are all alike: parsed once, compared after
def _parse_npy_header(raw: bytes, start: int) -> tuple[int, int, int] | None:
    hl, text = len(raw), raw[start:]
    try:
        d = ast.literal_eval(text.decode("latin1"))
        if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"} or d["fortran_order"] is not False:
            return None
        if np.dtype(d["descr"]) != np.uint8:
            return None
        shape = d["shape"]
        if not (isinstance(shape, tuple) and len(shape) == 3 and all(type(x) is int for x in shape)):
            return None
        h, w, c = shape
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return (hl, h, w) if c == 3 and h > 0 and w > 0 else None


# ---------------------------------------------------------------------------------------------------
# Labels, sizes and the per-sample record
# ---------------------------------------------------------------------------------------------------
def parse_label(b: bytes) -> int | None:
    """A ``.cls`` member's label: ASCII ``-?[0-9]+`` (what pack writes), else None."""
    return int(b) if _LABEL.fullmatch(bytes(b)) else None


def labels_in_range(labels: np.ndarray, manifest) -> np.ndarray:
    """Which labels the set may hold: −1 (unlabelled) or 0 … ``manifest.num_classes`` − 1."""
    labels = np.asarray(labels)
    return (labels >= -1) & (labels < manifest.num_classes)


def sizes_match(hw: np.ndarray, manifest) -> np.ndarray:
    """Which images have the manifest's ``image_size`` (every one when the manifest records none)."""
    hw = np.asarray(hw).reshape(-1, 2)
    if not manifest.image_size:
        return np.ones(len(hw), bool)
    return (hw[:, 0] == manifest.image_size[0]) & (hw[:, 1] == manifest.image_size[1])


def sample_record(name: str, kind: str, origin: str, label: int, image: bytes) -> bytes:
    """The ``.json`` member pack writes (manifest version 2): source, kind, origin, label, sha256 of the image
    member."""
    return json.dumps(
        {
            "source": name,
            "kind": kind,
            "origin": origin,
            "label": int(label),
            "sha256": hashlib.sha256(image).hexdigest(),
        }
    ).encode()


def check_meta(meta: bytes, label: int, image: bytes, name: str | None, kind: str | None, digests: bool) -> int:
    """The verdict on a sample's ``.json``: a JSON object (naming the set's source and kind, unless ``name`` is
    None: the loaders do not mind a renamed set or a benchmark stand-in); with ``digests`` (manifest version 2)
    also the sample's label and the sha256 of its image member."""
    try:
        d = json.loads(meta)
    except (ValueError, RecursionError):
        return BAD_META
    if not isinstance(d, dict) or (name is not None and (d.get("source") != name or d.get("kind") != kind)):
        return BAD_META
    if not digests:
        return OK
    if type(d.get("label")) is not int or d["label"] != label or not isinstance(d.get("sha256"), str):
        return BAD_META
    return OK if hashlib.sha256(image).hexdigest() == d["sha256"] else BAD_DIGEST


# ---------------------------------------------------------------------------------------------------
# Many members at once, in worker processes
# ---------------------------------------------------------------------------------------------------
def _check_chunk(job: dict) -> np.ndarray:
    """(n, 4) int32 [verdict, H, W, pixel offset within the member] of some samples of one tar (runs in a
    worker process for large sets). ``job``: tar, ext, off/size of the image members; optional meta_off,
    meta_size, labels, name, kind, digests for the ``.json`` check."""
    m = map_file(job["tar"])
    ext, off, size = job["ext"], job["off"], job["size"]
    meta = job.get("meta_off")
    out = np.zeros((len(off), 4), np.int32)
    for j, (o, n) in enumerate(zip(off.tolist(), size.tolist())):
        image = m[o : o + n].tobytes()
        v, h, w = check_image(image, ext)
        if v == OK and meta is not None:
            mo, mn = int(meta[j]), int(job["meta_size"][j])
            v = check_meta(
                m[mo : mo + mn].tobytes(), int(job["labels"][j]), image, job["name"], job["kind"], job["digests"]
            )
        out[j] = v, h, w, (npy_shape(image) or (0,))[0] if ext == "npy" and v == OK else 0
    return out


def check_members(jobs: list[dict], workers: int | None = None, chunk: int = 4096) -> list[np.ndarray]:
    """:func:`_check_chunk` over ``jobs`` (one dict per tar, arrays of equal length), in worker processes
    when there are many samples and more than one core (forked where possible: the workers touch only numpy,
    PIL and the mapped tars, never CUDA or DALI; spawned elsewhere); one (n, 4) array per job."""
    arrays = ("off", "size", "meta_off", "meta_size", "labels")
    pieces = [(j, a) for j, job in enumerate(jobs) for a in range(0, len(job["off"]), chunk)]
    args = [
        {k: (v[a : a + chunk] if k in arrays and v is not None else v) for k, v in jobs[j].items()} for j, a in pieces
    ]
    total = sum(len(job["off"]) for job in jobs)
    workers = min(workers or cores(), len(pieces))
    results = None
    if workers > 1 and total >= 2 * chunk:
        try:
            import concurrent.futures as cf
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
                results = list(pool.map(_check_chunk, args))
        except (OSError, RuntimeError, AssertionError, ImportError):  # e.g. inside a daemonic process
            results = None
    if results is None:
        results = [_check_chunk(a) for a in args]
    out = [np.zeros((len(job["off"]), 4), np.int32) for job in jobs]
    for (j, a), r in zip(pieces, results):
        out[j][a : a + len(r)] = r
    return out
