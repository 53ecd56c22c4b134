"""Image sources for ``shards pack``: what SRC holds, detected from its contents.

Every source enumerates its samples in a fixed order (position 0..n-1: sorted paths for folders,
member order for archives, row order for arrays), knows each sample's label (-1 when unlabelled)
and its origin (path, member name or ``file[row]``), and hands out *batches* of samples in any
order the packer asks for. A batch carries one of three payloads, whichever is cheapest to move:

* ``pixels``: a uint8 array (n, H, W, 3) (CIFAR pickles, npz/npy, the demo generator),
* ``paths``: file paths the encoding worker reads itself (folder trees),
* ``bytes``: file contents already read (tar archives, read by streaming in the main process).

Detected layouts: an ImageFolder tree (``<class>/**/<image>``), a flat folder of unlabelled images
(nested numbered subfolders allowed), webdataset-style samples (``KEY.jpg`` beside ``KEY.cls``, the
label; e.g. shards written by this package or by webdataset's ``TarWriter``), CIFAR-10/100 python
pickles, ``.npz``/``.npy`` arrays (AdaInf release format: key ``image`` N×H×W×3 uint8, optional
``label``), and a ``.tar``/``.tar.gz`` holding any of these, read without extracting it to disk.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from shards.base.errors import ShardError

IMAGE_FILE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ARRAY_EXTS = (".npz", ".npy")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SPLIT_DIRS = frozenset({"train", "test", "val", "valid", "validation"})
LAYOUTS = ("auto", "imagefolder", "flat", "webdataset")
_CIFAR_TRAIN = re.compile(r"^(data_batch_\d+|train)$")
_CIFAR_TEST = re.compile(r"^(test_batch|test)$")
_CIFAR_META = ("batches.meta", "meta")
_FIX = "give an ImageFolder tree, a folder of images, CIFAR pickles, an .npz/.npy array or a .tar/.tar.gz of one"


@dataclass(frozen=True)
class InputBatch:
    positions: np.ndarray  # (n,) positions in the source's enumeration order
    kind: str  # "pixels" | "paths" | "bytes"
    payload: object  # uint8 (n, H, W, 3) array | list[str] | list[bytes]


@dataclass
class InputSource:
    """What the packer needs from any source. Subclasses implement ``batches``."""

    detected: str  # one line for the user: what SRC was recognised as
    labels: np.ndarray  # (n,) int64, -1 = unlabelled
    classes: tuple[str, ...]
    skipped: list[dict] = field(default_factory=list)  # found while listing: {"path", "reason"}

    def __len__(self) -> int:
        return len(self.labels)

    def origin(self, pos: int) -> str:
        raise NotImplementedError

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[InputBatch]:
        raise NotImplementedError

    def input_formats(self, order: np.ndarray) -> Counter:
        """How many of the samples at ``order`` are in each format, judged by file name before
        anything is read (``"jpeg"``, ``"png"``, ...; ``"array"`` for pixels without an encoding)."""
        return Counter({"array": len(order)})

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) when every sample has that size and it is known without decoding."""
        return None


def format_of_name(name: str) -> str:
    """The image format a file name claims (``"jpeg"`` for .jpg/.jpeg)."""
    ext = PurePosixPath(name).suffix.lower().lstrip(".")
    return "jpeg" if ext in ("jpg", "jpeg") else ext


# -- arrays ----------------------------------------------------------------------------------------


@dataclass
class ArraySource(InputSource):
    images: np.ndarray = None  # (n, H, W, 3) uint8, possibly a read-only memmap
    origin_prefix: str = ""

    def origin(self, pos: int) -> str:
        return f"{self.origin_prefix}[{pos}]"

    @property
    def image_shape(self) -> tuple[int, int] | None:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[InputBatch]:
        for start in range(0, len(order), batch_size):
            chunk = np.asarray(order[start : start + batch_size])
            # read rows in ascending order (sequential on a memmap), then restore the asked order
            sort = np.argsort(chunk, kind="stable")
            rows = np.empty((len(chunk),) + self.images.shape[1:], dtype=np.uint8)
            rows[sort] = self.images[chunk[sort]]
            yield InputBatch(chunk, "pixels", rows)


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ShardError(f"{where}: images have shape {images.shape}, want N×H×W×3; save them as uint8 NHWC RGB")
    if images.dtype != np.uint8:
        raise ShardError(
            f"{where}: images are {images.dtype}, want uint8; convert with (x * 255).round().astype(np.uint8)"
        )
    if len(images) == 0:
        raise ShardError(f"{where}: holds no images; give a source with at least one image")
    return images


def _labels_for(labels: np.ndarray | None, n: int, where: str) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise ShardError(f"{where}: {len(labels)} labels for {n} images; save one label per image")
    return labels.astype(np.int64)


def _mmap_npz_member(path: Path, member: str) -> np.ndarray | None:
    """Memory-map ``member`` of an *uncompressed* npz in place (None if it is compressed)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            f.seek(start)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            data_off = f.tell()
    if fortran or dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=data_off, shape=shape)


def open_array_file(path: Path, data: bytes | None = None, where: str | None = None) -> ArraySource:
    """An ``.npy`` (images only, memory-mapped) or ``.npz`` (``image`` + optional ``label``)."""
    where = where or str(path)
    try:
        if str(path).endswith(".npy"):
            images = np.load(io.BytesIO(data)) if data is not None else np.load(path, mmap_mode="r")
            labels = None
        else:
            with np.load(io.BytesIO(data) if data is not None else path, allow_pickle=False) as z:
                keys = list(z.files)
                if "image" not in keys:
                    raise ShardError(
                        f"{where}: no 'image' array (keys: {', '.join(keys) or 'none'}); "
                        "save images as np.savez(path, image=N×H×W×3 uint8, label=N ints)"
                    )
                images = _mmap_npz_member(path, "image.npy") if data is None else None
                if images is None:
                    images = z["image"]
                labels = z["label"] if "label" in keys else None
    except ShardError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ShardError(f"{where}: not a readable numpy file ({e}); re-save it with np.savez / np.save") from None
    images = check_images(images, where)
    labels = _labels_for(labels, len(images), where)
    kind = "memory-mapped" if isinstance(images, np.memmap) else "loaded"
    detected = (
        f"numpy array {where} ({len(images)} images {images.shape[1]}×{images.shape[2]}, {kind}, "
        f"{'labelled' if (labels >= 0).any() else 'unlabelled'})"
    )
    return ArraySource(detected, labels, (), images=images, origin_prefix=PurePosixPath(where).name)


# -- CIFAR pickles ---------------------------------------------------------------------------------


def cifar_from_blobs(blobs: dict[str, bytes], split: str, where: str) -> ArraySource:
    """blobs: basename -> pickle bytes for every CIFAR file found (batches and meta)."""
    pattern = _CIFAR_TEST if split == "test" else _CIFAR_TRAIN
    names = sorted((n for n in blobs if pattern.match(n)), key=_natural)
    if not names:
        have = ", ".join(sorted(blobs))
        raise ShardError(f"{where}: no CIFAR {split} batches (found {have}); use --split train or --split test")
    images, labels = [], []
    for n in names:
        d = _unpickle(blobs[n], f"{where}/{n}")
        try:
            data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            lab = d[b"labels"] if b"labels" in d else d[b"fine_labels"]
        except (KeyError, ValueError) as e:
            raise ShardError(f"{where}/{n}: not a CIFAR batch ({e!r}); give the python-version CIFAR files") from None
        images.append(data)
        labels.append(np.asarray(lab, dtype=np.int64))
    classes: tuple[str, ...] = ()
    for meta in _CIFAR_META:
        if meta in blobs:
            m = _unpickle(blobs[meta], f"{where}/{meta}")
            key = b"label_names" if b"label_names" in m else b"fine_label_names"
            classes = tuple(x.decode() if isinstance(x, bytes) else str(x) for x in m.get(key, ()))
            break
    imgs = np.ascontiguousarray(np.concatenate(images))
    lab = np.concatenate(labels)
    which = "CIFAR-100" if len(classes) == 100 or (lab.max() >= 10) else "CIFAR-10"
    detected = f"{which} python pickles in {where} ({split}: {', '.join(names)}; {len(imgs)} images)"
    return ArraySource(detected, lab, classes, images=imgs, origin_prefix=names[0] if len(names) == 1 else split)


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        return pickle.loads(blob, encoding="bytes")
    except Exception as e:  # pickle raises many types on garbage
        raise ShardError(
            f"{where}: not a readable CIFAR pickle ({type(e).__name__}); re-download the python version"
        ) from None


def _is_cifar_name(name: str) -> bool:
    return bool(_CIFAR_TRAIN.match(name) or _CIFAR_TEST.match(name) or name in _CIFAR_META)


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# -- trees of image files (folders and archives) ----------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A classified list of file paths: which are samples, their labels, the rest skipped."""

    files: list[str]  # sample paths (relative), enumeration order
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: list[dict]
    layout: str  # "imagefolder" | "flat"


def _wds_key(path: str) -> tuple[str, str]:
    """webdataset's grouping: the key is the path up to the first dot of the file name."""
    folder, _, base = path.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def webdataset_tree(paths: Sequence[str], cls: dict[str, bytes], where: str, required: bool = False) -> Tree | None:
    """Samples grouped as webdataset groups them (``KEY.jpg`` + ``KEY.cls`` + ...), labels from the
    ``.cls`` members (ASCII integers, -1 = unlabelled); None when no image has a ``.cls`` beside it.
    ``cls`` maps each ``.cls`` path to its bytes. The other members of a sample (``.json``, ``.txt``)
    are part of it, not skipped inputs."""
    keyed = [(p, *_wds_key(p)) for p in paths]
    labels_at = {k: cls[p] for p, k, ext in keyed if ext.lower() == "cls" and p in cls}
    image_keys = {k for p, k, _ in keyed if p.lower().endswith(IMAGE_FILE_EXTS)}
    if not image_keys & set(labels_at):
        if required:
            raise ShardError(f"{where}: no image has a KEY.cls label beside it; use --layout imagefolder or flat")
        return None
    files, labels, skipped = [], [], []
    for p, k, _ in keyed:
        if not p.lower().endswith(IMAGE_FILE_EXTS):
            if k not in image_keys:
                skipped.append(
                    {"path": p, "reason": f"not an image file ({PurePosixPath(p).suffix or 'no extension'})"}
                )
            continue
        if k not in labels_at:
            skipped.append({"path": p, "reason": f"no {PurePosixPath(k).name}.cls label beside it"})
            continue
        text = labels_at[k].strip()
        try:
            label = int(text)
        except ValueError:
            label = None
        if label is None or label < -1:
            skipped.append(
                {"path": p, "reason": f"its label {PurePosixPath(k).name}.cls is {text[:20]!r}, not an integer >= -1"}
            )
            continue
        files.append(p)
        labels.append(label)
    if not files:
        raise ShardError(
            f"{where}: no webdataset sample has both an image and a valid .cls label "
            f"(first: {skipped[0]['path']}: {skipped[0]['reason']})"
        )
    labels = np.asarray(labels, dtype=np.int64)
    classes = tuple(str(i) for i in range(int(labels.max()) + 1)) if (labels >= 0).any() else ()
    return Tree(files, labels, classes, skipped, "webdataset")


def classify_tree(
    paths: Sequence[str], layout: str, where: str, subdir_hint: str = "", cls: dict[str, bytes] | None = None
) -> Tree:
    """Decide webdataset-style vs ImageFolder vs flat from relative posix paths (already in
    enumeration order); ``cls``: the bytes of the ``.cls`` files among them, when read."""
    if layout in ("auto", "webdataset"):
        tree = webdataset_tree(paths, cls or {}, where, required=layout == "webdataset")
        if tree is not None:
            return tree
    images, skipped = [], []
    for p in paths:
        (images if p.lower().endswith(IMAGE_FILE_EXTS) else skipped).append(p)
    skipped = [
        {"path": p, "reason": f"not an image file ({PurePosixPath(p).suffix or 'no extension'})"} for p in skipped
    ]
    if not images:
        raise ShardError(f"{where}: no image files ({', '.join(IMAGE_FILE_EXTS)}) found; {_FIX}")
    # look through single wrapper folders (e.g. "cifar10/" or "edm-cifar10/fid-tmp/")
    strip = 0
    parts = [PurePosixPath(p).parts for p in images]
    while all(len(q) > strip + 1 for q in parts) and len({q[strip] for q in parts}) == 1:
        strip += 1
    prefix = "/".join(parts[0][:strip])
    tops = sorted({q[strip] for q in parts if len(q) > strip + 1})
    loose = [p for p, q in zip(images, parts) if len(q) == strip + 1]
    if tops and set(tops) <= SPLIT_DIRS and not loose and all(len(q) > strip + 2 for q in parts):
        base = "/".join(x for x in (subdir_hint, prefix) if x)
        hint = "/".join(x for x in (base, tops[-1]) if x)
        raise ShardError(
            f"{where}: holds the splits {', '.join(tops)}; pack one at a time with --subdir {hint} --split {tops[-1]}"
        )
    if layout == "auto":
        numbered = all(t.isdigit() for t in tops)
        layout = "imagefolder" if len(tops) >= 2 and not loose and not numbered else "flat"
    if layout == "flat":
        return Tree(images, np.full(len(images), -1, dtype=np.int64), (), skipped, "flat")
    index = {c: i for i, c in enumerate(tops)}
    files, labels = [], []
    for p, q in zip(images, parts):
        if len(q) == strip + 1:
            skipped.append({"path": p, "reason": "image outside any class folder"})
            continue
        files.append(p)
        labels.append(index[q[strip]])
    if not files:
        raise ShardError(f"{where}: no images inside class folders; use --layout flat for unlabelled images")
    return Tree(files, np.asarray(labels, dtype=np.int64), tuple(tops), skipped, "imagefolder")


def _describe_tree(tree: Tree, where: str) -> str:
    if tree.layout == "webdataset":
        labelled = int((tree.labels >= 0).sum())
        return (
            f"webdataset-style samples {where} ({len(tree.files)} images, {labelled} labelled by their .cls"
            f"{f', {len(tree.classes)} classes' if tree.classes else ''})"
        )
    if tree.layout == "imagefolder":
        return f"ImageFolder tree {where} ({len(tree.files)} images, {len(tree.classes)} classes)"
    return f"flat folder of unlabelled images {where} ({len(tree.files)} images)"


@dataclass
class FolderSource(InputSource):
    root: Path = None
    files: list[str] = None

    def origin(self, pos: int) -> str:
        return self.files[pos]

    def input_formats(self, order: np.ndarray) -> Counter:
        return Counter(format_of_name(self.files[int(i)]) for i in order)

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[InputBatch]:
        for start in range(0, len(order), batch_size):
            chunk = np.asarray(order[start : start + batch_size])
            yield InputBatch(chunk, "paths", [str(self.root / self.files[i]) for i in chunk])


@dataclass
class TarSource(InputSource):
    archive: Path = None
    members: list[str] = None  # full member names, enumeration (= archive) order
    offsets: list[tuple[int, int]] = None  # (data offset, size) per member, usable when not compressed
    compressed: bool = True

    def origin(self, pos: int) -> str:
        return self.members[pos]

    def input_formats(self, order: np.ndarray) -> Counter:
        return Counter(format_of_name(self.members[int(i)]) for i in order)

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[InputBatch]:
        order = np.asarray(order)
        if not self.compressed:
            yield from self._seek_batches(order, batch_size)
        elif len(order) < 2 or bool(np.all(order[1:] > order[:-1])):
            yield from self._stream_batches(order, batch_size)
        else:
            # a shuffled order from a compressed archive: one streaming pass keeps the selected
            # (still encoded) files in memory, then hands them out in the asked order
            data = dict(self._stream(set(order.tolist())))
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                yield InputBatch(chunk, "bytes", [data.pop(int(i)) for i in chunk])

    def _seek_batches(self, order, batch_size):
        with open(self.archive, "rb") as f:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                out = []
                for i in chunk:
                    off, size = self.offsets[i]
                    f.seek(off)
                    out.append(f.read(size))
                yield InputBatch(chunk, "bytes", out)

    def _stream_batches(self, order, batch_size):
        pos, payload = [], []
        for i, data in self._stream(set(order.tolist())):
            pos.append(i)
            payload.append(data)
            if len(pos) == batch_size:
                yield InputBatch(np.asarray(pos), "bytes", payload)
                pos, payload = [], []
        if pos:
            yield InputBatch(np.asarray(pos), "bytes", payload)

    def _stream(self, wanted: set[int]) -> Iterator[tuple[int, bytes]]:
        """Stream the archive once, yielding (position, bytes) of wanted members; stop after the last."""
        if not wanted:
            return
        where = {name: i for i, name in enumerate(self.members)}
        last = max(wanted)
        try:
            with tarfile.open(self.archive, "r|*") as tf:
                for m in tf:
                    i = where.get(m.name)
                    if i is None or i not in wanted:
                        continue
                    f = tf.extractfile(m)
                    yield i, f.read() if f is not None else b""
                    if i == last:
                        return
        except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
            raise ShardError(
                f"{self.archive}: archive unreadable while packing ({e}); re-download or re-create it"
            ) from None


@dataclass
class ShardSetSource(InputSource):
    """A shard set written by ``shards pack`` (a folder with ``manifest.json``), read back from its tars
    through their indexes: re-pack it to take a subset (``--per-class``, ``--limit``) or change the format.
    Labels come from the ``KEY.cls`` members, classes from the manifest."""

    root: Path = None
    format: str = "jpg"
    image_size: tuple[int, int] | None = None
    members: list[tuple[str, int, int]] = None  # (tar, data offset, size) of each sample's image
    keys: list[str] = None

    @classmethod
    def open(cls, root: Path) -> ShardSetSource:
        from shards.format.manifest import Manifest
        from shards.read.index import read_index

        m = Manifest.load(root)
        members, keys, labels = [], [], []
        for shard in m.shards:
            idx = read_index(root / shard.index)
            tar = str(root / shard.file)
            images = [e for e in idx.offsets if e not in ("cls", "json")]  # the image member: KEY.<format>
            ext = m.format if m.format in idx.offsets else (images[0] if len(images) == 1 else None)
            if ext is None or "cls" not in idx.offsets:
                raise ShardError(f"{root / shard.index}: no {m.format}/cls members listed; verify the set")
            with open(tar, "rb") as f:
                for key, off, size, c_off, c_size in zip(
                    idx.keys.tolist(),
                    idx.offsets[ext].tolist(),
                    idx.sizes[ext].tolist(),
                    idx.offsets["cls"].tolist(),
                    idx.sizes["cls"].tolist(),
                ):
                    f.seek(c_off)
                    try:
                        labels.append(int(f.read(c_size)))
                    except ValueError:
                        raise ShardError(f"{tar}: {key}.cls is not an integer; verify the set") from None
                    members.append((tar, off, size))
                    keys.append(f"{shard.file}:{key}")
        detected = (
            f"shard set {root} (name {m.name!r}, kind {m.kind}, {m.count} {m.format} samples, "
            f"{len(m.classes)} classes; read from its tars)"
        )
        return cls(
            detected,
            np.asarray(labels, dtype=np.int64),
            tuple(m.classes),
            root=root,
            format=m.format,
            image_size=tuple(m.image_size) if m.image_size else None,
            members=members,
            keys=keys,
        )

    def origin(self, pos: int) -> str:
        return self.keys[pos]

    @property
    def image_shape(self) -> tuple[int, int] | None:
        return self.image_size

    def input_formats(self, order: np.ndarray) -> Counter:
        return Counter({{"jpg": "jpeg", "raw": "array"}.get(self.format, self.format): len(order)})

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[InputBatch]:
        files: dict[str, object] = {}
        try:
            for start in range(0, len(order), batch_size):
                chunk = np.asarray(order[start : start + batch_size])
                data = []
                for i in chunk.tolist():
                    tar, off, size = self.members[i]
                    f = files.get(tar) or files.setdefault(tar, open(tar, "rb"))
                    f.seek(off)
                    data.append(f.read(size))
                if self.format == "raw":  # raw uint8 HWC bytes (or a .npy member holding them)
                    h, w = self.image_size
                    pixels = np.stack(
                        [
                            (np.load(io.BytesIO(d)) if d[:6] == b"\x93NUMPY" else np.frombuffer(d, np.uint8)).reshape(
                                h, w, 3
                            )
                            for d in data
                        ]
                    )
                    yield InputBatch(chunk, "pixels", pixels)
                else:
                    yield InputBatch(chunk, "bytes", data)
        finally:
            for f in files.values():
                f.close()


def zlib_error():
    import zlib

    return zlib.error


def _list_tar(archive: Path, subdir: str, where: str, stop_after: int | None = None):
    """One streaming pass over the headers: regular files under ``subdir`` (names, offsets) plus the
    bytes of small array/pickle members (read now, since a stream cannot go back). With
    ``stop_after`` the pass ends after that many image members."""
    prefix = subdir.strip("/") + "/" if subdir else ""
    names, offsets, blobs = [], [], {}
    folders: set[str] = set()  # folders down to --subdir's depth, to name the ones that exist
    depth = len(PurePosixPath(prefix).parts)
    n_images = 0
    try:
        with tarfile.open(archive, "r|*") as tf:
            for m in tf:
                if not m.isfile() or not m.name.startswith(prefix):
                    if prefix and not names:  # only while --subdir was not found: it may be a typo
                        parts = PurePosixPath(m.name if m.isdir() else PurePosixPath(m.name).parent).parts
                        folders.update("/".join(parts[: k + 1]) for k in range(min(depth, len(parts))))
                    continue
                rel = m.name[len(prefix) :]
                names.append(m.name)
                offsets.append((m.offset_data, m.size))
                base = PurePosixPath(rel).name
                if base.endswith(ARRAY_EXTS) or _is_cifar_name(base) or (base.endswith(".cls") and m.size <= 64):
                    f = tf.extractfile(m)
                    blobs[rel] = f.read() if f is not None else b""
                elif base.lower().endswith(IMAGE_FILE_EXTS):
                    n_images += 1
                    if stop_after is not None and n_images >= stop_after:
                        break
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as e:
        raise ShardError(f"{where}: not a readable tar archive ({e}); check the file or re-download it") from None
    if not names:
        fix = _subdir_hint(subdir, _children(folders, subdir)) if subdir else "it holds no files"
        raise ShardError(f"{where}: no files{' under ' + prefix if prefix else ''} in the archive; {fix}")
    return names, offsets, blobs, prefix


def _children(folders: set[str], subdir: str) -> tuple[str, list[str]]:
    """The deepest folder above ``subdir`` that exists among ``folders`` ("" for the top) and the folders
    directly inside it."""
    parts = PurePosixPath(subdir.strip("/")).parts
    for k in range(len(parts) - 1, -1, -1):
        base = "/".join(parts[:k])
        if not base or base in folders:
            return base, sorted(f for f in folders if str(PurePosixPath(f).parent) == (base or "."))
    return "", []


def _folders_of(src: Path, subdir: str) -> tuple[str, list[str]]:
    """As :func:`_children` for a folder on disk."""
    parts = PurePosixPath(subdir.strip("/")).parts
    for k in range(len(parts) - 1, -1, -1):
        base = "/".join(parts[:k])
        here = src / base if base else src
        if here.is_dir():
            try:
                names = sorted(e.name for e in os.scandir(here) if e.is_dir() and not e.name.startswith("."))
            except OSError:
                names = []
            return base, [f"{base}/{n}" if base else n for n in names]
    return "", []


def _subdir_hint(subdir: str, found: tuple[str, list[str]]) -> str:
    """ "check --subdir: the folders inside X are ...; did you mean ...?" for a --subdir that does not exist."""
    import difflib

    base, inside = found
    if not inside:
        return f"check --subdir {subdir!r}: {'folder ' + base if base else 'the top level'} has no folders"
    parts = PurePosixPath(subdir.strip("/")).parts
    k = len(PurePosixPath(base).parts) if base else 0  # the first part of --subdir that is not there
    names = {PurePosixPath(f).name: f for f in inside}
    close = difflib.get_close_matches(parts[k], list(names), n=1, cutoff=0.5)
    listed = ", ".join(inside[:12]) + (", …" if len(inside) > 12 else "")
    hint = f"check --subdir: the folders {'inside ' + base if base else 'at the top'} are {listed}"
    if close:
        hint += f"; did you mean --subdir {'/'.join((names[close[0]], *parts[k + 1 :]))}?"
    return hint


# -- entry point -----------------------------------------------------------------------------------


def open_source(
    src: str | os.PathLike,
    *,
    subdir: str = "",
    split: str = "train",
    layout: str = "auto",
    stop_after: int | None = None,
) -> InputSource:
    """Detect what ``src`` holds and return an InputSource over it (ShardError naming the path otherwise).

    ``stop_after``: the caller needs only the first N images in archive order and no labels, so an
    archive's listing may stop there (a streamed .tar.gz is then read only up to that point)."""
    if layout not in LAYOUTS:
        raise ShardError(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    src = Path(src)
    if not src.exists():
        raise ShardError(f"{src}: no such file or directory; {_FIX}")
    if src.is_file():
        name = src.name.lower()
        if name.endswith(TAR_SUFFIXES):
            return _open_tar(src, subdir, split, layout, stop_after)
        if subdir:
            raise ShardError(f"{src}: --subdir only applies to folders and .tar archives")
        if name.endswith(ARRAY_EXTS):
            return open_array_file(src)
        if _is_cifar_name(src.name):
            return _open_cifar_dir(
                src.parent, split, [src.name] + [m for m in _CIFAR_META if (src.parent / m).is_file()]
            )
        if src.stat().st_size == 0:
            raise ShardError(f"{src}: empty file; {_FIX}")
        raise ShardError(f"{src}: unsupported file type; {_FIX}")
    root = src / subdir if subdir else src
    if not root.is_dir():
        raise ShardError(f"{root}: no such folder; {_subdir_hint(subdir, _folders_of(src, subdir))}")
    if (root / "manifest.json").is_file():
        return ShardSetSource.open(root)
    paths = _walk(root)
    if not paths:
        raise ShardError(f"{root}: empty folder; {_FIX}")
    bases = [PurePosixPath(p).name for p in paths]
    cifar = [b for b, p in zip(bases, paths) if "/" not in p and _is_cifar_name(b)]
    if any(b not in _CIFAR_META for b in cifar):
        return _open_cifar_dir(root, split, cifar)
    images = [p for p in paths if p.lower().endswith(IMAGE_FILE_EXTS)]
    arrays = [p for p in paths if p.lower().endswith(ARRAY_EXTS)]
    if arrays and not images:
        if len(arrays) > 1:
            raise ShardError(
                f"{root}: holds {len(arrays)} array files ({', '.join(arrays[:3])}…); pass one file as SRC"
            )
        return open_array_file(root / arrays[0])
    cls = {p: _read_small(root / p) for p in paths if p.endswith(".cls")} if layout in ("auto", "webdataset") else {}
    tree = classify_tree(paths, layout, str(root), subdir_hint=str(subdir), cls=cls)
    return FolderSource(
        _describe_tree(tree, str(root)), tree.labels, tree.classes, tree.skipped, root=root, files=tree.files
    )


def _read_small(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64)
    except OSError:
        return b""  # reported as a bad label by webdataset_tree


def _project_file(name: str) -> bool:
    """Files this project writes beside data, never inputs: the loaders' index caches, lock files,
    temporary files of atomic writes."""
    from shards.base.lock import LOCK_NAME
    from shards.read.index import is_cache_file

    return is_cache_file(name) or name == LOCK_NAME or (name.startswith(".") and name.endswith(".tmp"))


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not (d.startswith(".pack-") and d.endswith(".tmp")))
        rel = os.path.relpath(dirpath, root)
        for f in sorted(filenames):
            if not _project_file(f):
                out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(out, key=lambda p: PurePosixPath(p).parts)


def _open_cifar_dir(root: Path, split: str, names: list[str]) -> ArraySource:
    blobs = {}
    for n in names:
        try:
            blobs[n] = (root / n).read_bytes()
        except OSError as e:
            raise ShardError(f"{root / n}: cannot read ({e.strerror}); check permissions") from None
    return cifar_from_blobs(blobs, split, str(root))


def _open_tar(archive: Path, subdir: str, split: str, layout: str, stop_after: int | None = None) -> InputSource:
    where = f"{archive}:{subdir}" if subdir else str(archive)
    names, offsets, blobs, prefix = _list_tar(archive, subdir, where, stop_after)
    rel = [n[len(prefix) :] for n in names]
    bases = {PurePosixPath(r).name: r for r in blobs}
    if any(_is_cifar_name(b) and b not in _CIFAR_META for b in bases):
        src = cifar_from_blobs({b: blobs[r] for b, r in bases.items() if _is_cifar_name(b)}, split, where)
        src.detected += " (inside the archive)"
        return src
    has_images = any(r.lower().endswith(IMAGE_FILE_EXTS) for r in rel)
    arrays = [r for r in blobs if r.endswith(ARRAY_EXTS)]
    if arrays and not has_images:
        if len(arrays) > 1:
            raise ShardError(f"{where}: holds {len(arrays)} array files; pick one with --subdir")
        return open_array_file(Path(arrays[0]), data=blobs[arrays[0]], where=f"{archive}:{prefix}{arrays[0]}")
    cls = {r: b for r, b in blobs.items() if r.endswith(".cls")}
    tree = classify_tree(rel, layout, where, subdir_hint=subdir.strip("/"), cls=cls)
    keep = {r: i for i, r in enumerate(rel)}
    idx = [keep[f] for f in tree.files]
    skipped = [{"path": prefix + s["path"], "reason": s["reason"]} for s in tree.skipped]
    compressed = not archive.name.lower().endswith(".tar")
    how = ", streamed from the archive" if compressed else ", read in place"
    if stop_after is not None and len(tree.files) >= stop_after:
        how += f", listing stopped after the first {stop_after}"
    return TarSource(
        _describe_tree(tree, where) + how,
        tree.labels,
        tree.classes,
        skipped,
        archive=archive,
        members=[names[i] for i in idx],
        offsets=[offsets[i] for i in idx],
        compressed=compressed,
    )
