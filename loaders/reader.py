"""Random access to the encoded samples of a shard set: memory-mapped tars + DALI index offsets.

A :class:`SourceReader` maps every tar of one shard set read-only (``mmap``) and keeps, per
sample, the shard number and the data offset/size of its image and ``.cls`` members (from
``shards.index.read_index``). ``read(indices)`` returns zero-copy numpy views of the encoded bytes
— what the DALI ``external_source`` consumes — plus labels and a mask of samples that fail a cheap
structural check (truncated tar, wrong raw size, missing JPEG/PNG signature or trailer), so a
damaged shard is reported by name instead of crashing the decoder.
"""
from __future__ import annotations

import io
import mmap
from pathlib import Path

import numpy as np

from shards.index import read_index
from shards.manifest import Manifest, ShardError

_PNG_SIG = b"\x89PNG\r\n\x1a\n"


class SourceReader:
    """Encoded samples of one shard set by global sample index (0 … count−1, tar order)."""

    def __init__(self, directory: str | Path, manifest: Manifest):
        self.directory = Path(directory)
        self.manifest = manifest
        self.format = manifest.format
        if self.format == "raw" and not manifest.image_size:
            raise ShardError(f"{self.directory}: raw shards need image_size in the manifest; re-pack with `shards pack`")
        self._files: list[Path] = []
        self._maps: list[np.ndarray] = []
        shard_of, offsets, sizes, cls_off, cls_size, keys = [], [], [], [], [], []
        for s, info in enumerate(manifest.shards):
            tar, idx = self.directory / info.file, self.directory / info.index
            index = read_index(idx)
            if len(index) != info.count:
                raise ShardError(f"{idx}: index lists {len(index)} samples, manifest says {info.count}; "
                                 f"re-create the index with `wds2idx {tar} {idx}`")
            for ext in (self.format, "cls"):
                if ext not in index.offsets or (index.offsets[ext] < 0).any():
                    raise ShardError(f"{idx}: some samples have no .{ext} member; re-pack {self.directory}")
            self._files.append(tar)
            self._maps.append(_map(tar))
            shard_of.append(np.full(len(index), s, dtype=np.int32))
            offsets.append(index.offsets[self.format])
            sizes.append(index.sizes[self.format])
            cls_off.append(index.offsets["cls"])
            cls_size.append(index.sizes["cls"])
            keys.append(index.keys)
        self.shard_of = np.concatenate(shard_of)
        self.offsets = np.concatenate(offsets)
        self.sizes = np.concatenate(sizes)
        self._cls_off = np.concatenate(cls_off)
        self._cls_size = np.concatenate(cls_size)
        self.keys = np.concatenate(keys)
        if len(self.keys) != manifest.count:
            raise ShardError(f"{self.directory}: indexes hold {len(self.keys)} samples, manifest says {manifest.count}")
        # samples whose bytes lie past the end of a (truncated) tar
        ends = np.array([m.shape[0] for m in self._maps], dtype=np.int64)[self.shard_of]
        self._truncated = (self.offsets + self.sizes > ends) | (self._cls_off + self._cls_size > ends)
        if self.format == "raw":
            h, w = manifest.image_size
            self._truncated |= self.sizes != h * w * 3

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def raw_shape(self) -> tuple[int, int, int] | None:
        return (*self.manifest.image_size, 3) if self.format == "raw" else None

    def shard_file(self, i: int) -> Path:
        return self._files[int(self.shard_of[i])]

    def read(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(encoded bytes per sample as uint8 views, int64 labels, bool mask of damaged samples)."""
        data, labels = [], np.empty(len(indices), dtype=np.int64)
        bad = self._truncated[indices].copy()
        maps, shard_of, offs, sizes = self._maps, self.shard_of, self.offsets, self.sizes
        for j, i in enumerate(indices.tolist()):
            if bad[j]:
                data.append(np.zeros(1, np.uint8))
                labels[j] = -1
                continue
            m = maps[shard_of[i]]
            o, n = offs[i], sizes[i]
            buf = m[o:o + n]
            co = self._cls_off[i]
            try:
                labels[j] = int(m[co:co + self._cls_size[i]].tobytes())
            except ValueError:
                bad[j] = True
                labels[j] = -1
            if not bad[j] and not _looks_valid(buf, self.format):
                bad[j] = True
            data.append(buf)
        return data, labels, bad

    def describe(self, i: int, why: str = "damaged") -> str:
        """One line naming the shard, the member and the fix."""
        return (f"{self.shard_file(i)}: sample {self.keys[i]!s} (member {self.keys[i]!s}.{self.format} at byte "
                f"{int(self.offsets[i])}) is {why}; re-pack {self.directory} with `python -m shards pack` "
                f"(or check it with `python -m shards verify`), or pass on_corrupt='skip' to skip such samples")

    def decodes(self, i: int) -> bool:
        """Whether PIL can decode sample ``i`` (used to find the culprit when DALI's decoder fails)."""
        if self._truncated[i]:
            return False
        if self.format == "raw":
            return True
        from PIL import Image

        buf = self._maps[self.shard_of[i]][self.offsets[i]:self.offsets[i] + self.sizes[i]].tobytes()
        try:
            with Image.open(io.BytesIO(buf)) as im:
                im.load()
            return True
        except Exception:  # noqa: BLE001 - any decoder failure means "damaged"
            return False


def _map(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                return np.zeros(0, np.uint8)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ShardError(f"{path}: cannot open shard ({e.strerror}); check the path or re-pack the shard set") from None
    return np.frombuffer(mm, dtype=np.uint8)


def _looks_valid(buf: np.ndarray, fmt: str) -> bool:
    if fmt == "png":
        return buf.shape[0] > 20 and buf[:8].tobytes() == _PNG_SIG and buf[-8:-4].tobytes() == b"IEND"
    if fmt == "jpg":
        return buf.shape[0] > 4 and buf[:3].tobytes() == b"\xff\xd8\xff" and b"\xff\xd9" in buf[-32:].tobytes()
    return True
