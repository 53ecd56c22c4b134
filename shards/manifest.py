"""The manifest of a shard set: what `shards pack` wrote and what `loaders/` reads.

A shard set is a directory holding ``NAME-00000.tar …``, one DALI index per tar
(``NAME-00000.idx``, the ``wds2idx`` format) and ``manifest.json``. Every sample
in a tar has three members sharing its ``__key__``:

* ``KEY.jpg`` / ``KEY.png`` / ``KEY.raw`` — the image (raw: H*W*3 uint8 pixels,
  HWC, RGB, shape from ``image_size``),
* ``KEY.cls`` — the label as ASCII digits (``-1`` for generated / unlabelled),
* ``KEY.json`` — ``{"source": NAME, "kind": KIND, "origin": ORIGINAL_PATH_OR_INDEX}``.

Keys are unique within a shard set (zero-padded position in the source's
enumeration order, so a shuffled pack keeps stable keys).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ShardError, UserError  # noqa: F401  (ShardError is imported from here too)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
KINDS = ("real", "generated")
FORMATS = ("jpg", "png", "raw")


@dataclass(frozen=True)
class ShardInfo:
    file: str  # tar file name, relative to the shard directory
    index: str  # DALI index file name (wds2idx format), relative to the shard directory
    count: int  # samples in this tar
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: str  # "real" | "generated"
    split: str  # "train" | "test" | ...
    format: str  # "jpg" | "png" | "raw"
    image_size: tuple[int, int] | None  # (H, W) when every image has that size, else None (raw requires it)
    classes: tuple[str, ...]  # class names by index; empty for unlabelled sets
    count: int
    shards: tuple[ShardInfo, ...]
    fid: float | None = None
    label_counts: dict[str, int] = field(default_factory=dict)  # str(label) -> count; "-1" for unlabelled
    skipped: tuple[dict, ...] = ()  # [{"path": ..., "reason": ...}] inputs that could not be packed
    command: str = ""
    created: str = ""
    version: int = MANIFEST_VERSION

    @property
    def labelled(self) -> bool:
        return any(int(k) >= 0 for k, v in self.label_counts.items() if v)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["classes"] = list(self.classes)
        d["skipped"] = list(self.skipped)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "Manifest":
        try:
            shards = tuple(ShardInfo(**s) for s in d["shards"])
            size = d.get("image_size")
            m = cls(
                name=str(d["name"]),
                kind=str(d["kind"]),
                split=str(d.get("split", "train")),
                format=str(d["format"]),
                image_size=tuple(int(x) for x in size) if size else None,
                classes=tuple(d.get("classes") or ()),
                count=int(d["count"]),
                shards=shards,
                fid=None if d.get("fid") is None else float(d["fid"]),
                label_counts={str(k): int(v) for k, v in (d.get("label_counts") or {}).items()},
                skipped=tuple(d.get("skipped") or ()),
                command=str(d.get("command", "")),
                created=str(d.get("created", "")),
                version=int(d.get("version", MANIFEST_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{where}: malformed manifest ({e!r}); re-create it with `python -m shards pack`") from None
        if m.kind not in KINDS:
            raise ShardError(f"{where}: kind {m.kind!r} is not one of {KINDS}; re-pack with --kind real|generated")
        if m.format not in FORMATS:
            raise ShardError(f"{where}: format {m.format!r} is not one of {FORMATS}")
        if sum(s.count for s in m.shards) != m.count:
            raise ShardError(f"{where}: shard counts add up to {sum(s.count for s in m.shards)}, manifest says {m.count}")
        return m

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Manifest":
        """Read DIR/manifest.json; a missing or broken one is a ShardError naming the path and the fix."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.exists():
            raise ShardError(f"{directory}: no such directory; give a directory written by `python -m shards pack`")
        if not path.is_file():
            raise ShardError(f"{directory}: no {MANIFEST_NAME} here; pack images into it with `python -m shards pack SRC --out {directory}`")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ShardError(f"{path}: unreadable manifest ({e}); re-create it with `python -m shards pack`") from None
        return cls.from_dict(d, where=str(path))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write DIR/manifest.json atomically (temporary file, then rename)."""
        return atomic_write_text(Path(directory) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2) + "\n")


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
