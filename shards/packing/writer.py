"""Write a shard set: USTAR tars in webdataset layout, a DALI index per tar, and the manifest.

Nothing is half-written: each tar and index is written under a temporary name (with the writer's
pid and a random token, so two writers never share one) and renamed when complete; the manifest is
written last, so a directory without ``manifest.json`` is never mistaken for a finished shard set.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import secrets
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shards.base.errors import ShardError
from shards.format.manifest import Manifest, ShardInfo, check_name
from shards.format.schema import FORMATS, KINDS, packed_image_ext, recorded_image_ext
from shards.read.check import npy_header, sample_record
from shards.read.index import format_index

TAR_BLOCK = 512


@dataclass
class _OpenShard:
    file: str
    index: str
    tmp_path: Path
    fh: io.BufferedWriter
    out: _HashingWriter
    hasher: hashlib._Hash
    members: list = field(default_factory=list)  # per sample: [(ext, off, size, name), ...]


class _HashingWriter(io.RawIOBase):
    """File wrapper that feeds everything written through sha256 and counts the bytes."""

    def __init__(self, fh, hasher):
        self.fh, self.hasher, self.pos = fh, hasher, 0

    def writable(self):
        return True

    def tell(self):
        return self.pos

    def write(self, b):
        self.hasher.update(b)
        self.fh.write(b)
        self.pos += len(b)
        return len(b)


class ShardSetWriter:
    """Streams samples into ``OUT/STEM-00000.tar …`` with ``shard_size`` samples per tar (the members of
    ``shards.format.manifest``, manifest version 2).

    ``stem`` (default: ``name``) names the files only; ``shards.packing.pack`` picks one that does not clash
    with a set already in the folder. ``encoding`` (a dict, see ``shards.format.manifest``) is recorded in
    the manifest as given; set it (like ``skipped``) any time before ``close()``.

    Use as a context manager; ``add()`` one encoded sample at a time; ``close()`` (or leaving the
    ``with`` block normally) finalises the last tar and writes the manifest, returning it. Leaving the
    block with an exception removes the temporary files and leaves no manifest behind.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        name: str,
        *,
        kind: str,
        format: str,
        split: str = "train",
        shard_size: int = 10000,
        classes: tuple[str, ...] = (),
        fid: float | None = None,
        command: str = "",
        skipped: tuple[dict, ...] = (),
        stem: str | None = None,
        encoding: dict | None = None,
    ):
        check_name(name)
        stem = check_name(stem, "file stem") if stem is not None else name
        if kind not in KINDS:
            raise ShardError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
        if format not in FORMATS:
            raise ShardError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
        if shard_size < 1:
            raise ShardError(f"--shard-size {shard_size}: must be at least 1")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.name, self.kind, self.format, self.split = name, kind, format, split
        self.shard_size, self.classes, self.fid, self.command = shard_size, tuple(classes), fid, command
        self.skipped = list(skipped)
        self.stem, self.encoding = stem, encoding
        self.ext = packed_image_ext(format)  # the image member's extension
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._shard: _OpenShard | None = None
        self._done: list[ShardInfo] = []
        self._final_paths: list[tuple[Path, Path]] = []  # (tmp, final) renamed at close
        self._tmp_files: list[Path] = []  # everything written so far under a temporary name
        self._installed: list[Path] = []  # final names renamed by a close() not yet complete
        self._labels: Counter = Counter()
        self._sizes: set[tuple[int, int]] = set()
        self._count = 0
        self._closed = False

    # -- writing -------------------------------------------------------------------------------
    def add(self, key: str, image: bytes, label: int, origin: str = "", size: tuple[int, int] | None = None) -> None:
        """Append one sample. ``image`` is already encoded (jpg/png) or raw HWC uint8 bytes (stored as a
        ``KEY.npy`` member: a 512-byte ``.npy`` header, then the pixels); ``size`` is its (H, W) when known
        (required to record ``image_size``, and for raw pixels)."""
        if self.format == "raw":
            if size is None or len(image) != int(size[0]) * int(size[1]) * 3:
                raise ShardError(f"sample {key}: raw pixels need their (H, W) and H*W*3 bytes, got {len(image)} bytes")
            image = npy_header(*size) + bytes(image)
        if self._shard is None or len(self._shard.members) >= self.shard_size:
            self._finish_shard()
            self._open_shard()
        label = int(label) if self.kind == "real" or label >= 0 else -1
        meta = sample_record(self.name, self.kind, origin, label, image)
        members = []
        out = self._shard.out
        for ext, data in (("cls", str(label).encode()), ("json", meta), (self.ext, image)):
            name = f"{key}.{ext}"
            # USTAR: one 512-byte header per member, data padded to whole blocks follows it
            out.write(ustar_header(name, len(data)))
            data_off = out.pos
            out.write(data)
            pad = _padded(len(data)) - len(data)
            if pad:
                out.write(_ZEROS[:pad])
            members.append((ext, data_off, len(data), name))
        self._shard.members.append(members)
        self._labels[str(label)] += 1
        if size is not None:
            self._sizes.add((int(size[0]), int(size[1])))
        else:
            self._sizes.add((-1, -1))
        self._count += 1

    def _open_shard(self) -> None:
        i = len(self._done)
        file, index = f"{self.stem}-{i:05d}.tar", f"{self.stem}-{i:05d}.idx"
        tmp = self.out / f".{file}.{self._token}.tmp"
        self._tmp_files.append(tmp)
        fh = open(tmp, "wb")
        hasher = hashlib.sha256()
        self._shard = _OpenShard(file, index, tmp, fh, _HashingWriter(fh, hasher), hasher)

    def _finish_shard(self) -> None:
        sh = self._shard
        if sh is None:
            return
        # end of archive as tarfile writes it: two zero blocks, then zeros up to a whole record
        end = sh.out.pos + 2 * TAR_BLOCK
        sh.out.write(bytes(2 * TAR_BLOCK + (-end) % tarfile.RECORDSIZE))
        sh.fh.flush()
        os.fsync(sh.fh.fileno())
        nbytes = sh.fh.tell()
        sh.fh.close()
        idx_tmp = self.out / f".{sh.index}.{self._token}.tmp"
        self._tmp_files.append(idx_tmp)
        with open(idx_tmp, "w") as f:
            f.write(format_index(sh.members))
            f.flush()
            os.fsync(f.fileno())
        self._final_paths += [(sh.tmp_path, self.out / sh.file), (idx_tmp, self.out / sh.index)]
        self._done.append(ShardInfo(sh.file, sh.index, len(sh.members), sh.hasher.hexdigest(), nbytes))
        self._shard = None

    # -- finishing -----------------------------------------------------------------------------
    def close(self) -> Manifest:
        if self._closed:
            raise ShardError("ShardSetWriter closed twice")
        try:
            return self._close()
        except BaseException:
            self.abort()
            raise

    def _close(self) -> Manifest:
        self._finish_shard()
        self._closed = True
        if self._count == 0:
            raise ShardError(f"{self.name}: no samples to write; check the source path and --limit/--per-class")
        sizes = self._sizes
        image_size = next(iter(sizes)) if len(sizes) == 1 and (-1, -1) not in sizes else None
        if self.format == "raw" and image_size is None:
            raise ShardError(f"{self.name}: raw format needs every image to have one size; use --format jpg or png")
        for tmp, final in self._final_paths:
            os.replace(tmp, final)
            self._installed.append(final)
        manifest = Manifest(
            name=self.name,
            kind=self.kind,
            split=self.split,
            format=self.format,
            image_size=image_size,
            classes=self.classes,
            count=self._count,
            shards=tuple(self._done),
            fid=self.fid,
            label_counts=dict(sorted(self._labels.items(), key=lambda kv: int(kv[0]))),
            skipped=tuple(self.skipped),
            command=self.command,
            encoding=self.encoding,
            image_ext=recorded_image_ext(self.format),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        manifest.save(self.out)
        self._installed = []
        return manifest

    def abort(self) -> None:
        """Remove everything this writer wrote: temporary files, and final files of a ``close()``
        that failed before its manifest was written (a disk filling up at the last moment)."""
        if self._shard is not None:
            try:
                self._shard.fh.close()
            except OSError:
                pass  # the disk is full: the file goes anyway
            self._shard = None
        for p in self._tmp_files + self._installed:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._final_paths, self._tmp_files, self._installed = [], [], []
        self._closed = True

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.manifest = self.close()


def _header_template() -> bytearray:
    info = tarfile.TarInfo("")
    info.size, info.mode, info.mtime, info.uname, info.gname = 0, 0o444, 0, "", ""
    h = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="surrogateescape"))
    h[148:156] = b" " * 8  # checksum field counts as spaces while summing
    return h


_TEMPLATE = _header_template()
_ZEROS = bytes(TAR_BLOCK)


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header tarfile writes for a read-only regular file (mode 0444, mtime 0),
    built without tarfile's per-member overhead; names longer than 100 bytes go through tarfile."""
    raw = name.encode()
    if len(raw) > 100:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o444, 0, "", ""
        return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="surrogateescape")
    h = _TEMPLATE.copy()
    h[: len(raw)] = raw
    h[124:136] = b"%011o\x00" % size
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def _padded(n: int) -> int:
    return (n + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK
