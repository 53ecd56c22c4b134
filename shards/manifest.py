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

File names come from the manifest, never from a pattern: ``shards pack --overwrite`` writes the new
set under names that do not clash with the old one's (``NAME-00000.tar`` and ``NAME-g1-00000.tar``
alternate), so the folder holds a complete set at every instant.

``encoding`` records how the images got their bytes (manifests written before it existed have
``None``)::

    {"format": "png",                      # the set's format (as ``format``)
     "source_formats": {"png": 50000},     # inputs by their own format ("jpeg", "png", ..., "array")
     "passthrough": 50000,                 # stored byte for byte as they came
     "reencoded": 0,                       # decoded and stored again (e.g. JPEG inputs of a mixed set as PNG)
     "lossy_reencoded": 0,                 # of all samples, those whose pixels changed (a JPEG encode)
     "quality": null}                      # JPEG quality when anything was JPEG-encoded
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
FORMATS = ("jpg", "png", "raw")  # what a shard set holds
PACK_FORMATS = ("auto",) + FORMATS  # what `shards pack --format` accepts (auto: see shards.pack.resolve_format)


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
    encoding: dict | None = None  # see the module docstring; None in manifests older than the field

    @property
    def lossless(self) -> bool | None:
        """True when no image was lossily encoded on the way in; None when the manifest does not say."""
        if self.encoding is None:
            return None
        return int(self.encoding.get("lossy_reencoded", 0)) == 0

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
    def from_dict(cls, d: dict, where: str = "manifest") -> Manifest:
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
                encoding=_encoding(d.get("encoding")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(
                f"{where}: malformed manifest ({e!r}); re-create it with `python -m shards pack`"
            ) from None
        if m.kind not in KINDS:
            raise ShardError(f"{where}: kind {m.kind!r} is not one of {KINDS}; re-pack with --kind real|generated")
        if m.format not in FORMATS:
            raise ShardError(f"{where}: format {m.format!r} is not one of {FORMATS}")
        for f in sorted(m.files):
            parts = Path(f).parts
            if not parts or Path(f).is_absolute() or ".." in parts:
                raise ShardError(
                    f"{where}: shard file {f!r} lies outside the shard folder; "
                    "re-create the manifest with `python -m shards pack`"
                )
        if sum(s.count for s in m.shards) != m.count:
            raise ShardError(
                f"{where}: shard counts add up to {sum(s.count for s in m.shards)}, manifest says {m.count}"
            )
        return m

    @property
    def files(self) -> set[str]:
        """Every file name the manifest owns (tars and indexes), relative to its directory."""
        return {s.file for s in self.shards} | {s.index for s in self.shards}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Manifest:
        """Read DIR/manifest.json; a missing or broken one is a ShardError naming the path and the fix."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.exists():
            raise ShardError(f"{directory}: no such directory; give a directory written by `python -m shards pack`")
        if not path.is_file():
            raise ShardError(
                f"{directory}: no {MANIFEST_NAME} here; "
                f"pack images into it with `python -m shards pack SRC --out {directory}`"
            )
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ShardError(f"{path}: unreadable manifest ({e}); re-create it with `python -m shards pack`") from None
        return cls.from_dict(d, where=str(path))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write DIR/manifest.json atomically (temporary file, then rename)."""
        return atomic_write_text(Path(directory) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2) + "\n")


def _encoding(e) -> dict | None:
    if e is None:
        return None
    if not isinstance(e, dict):
        raise TypeError(f"encoding is {type(e).__name__}, want an object")
    return dict(e)


def check_name(name: str, where: str = "--name") -> str:
    """A shard set's name is a plain file-name stem: its tars are ``NAME-00000.tar`` beside the
    manifest, so a ``/``, a leading ``.`` (``..``, hidden files) or a control character would put
    files elsewhere or hide them."""
    if not isinstance(name, str) or not name:
        raise ShardError(f"{where} is empty; give a plain name such as cifar10-train")
    bad = next((c for c in name if c in "/\\" or ord(c) < 32 or c == "\x7f"), None)
    if bad is not None or name.startswith(".") or len(name.encode()) > 200:
        why = f"contains {bad!r}" if bad is not None else ("starts with '.'" if name.startswith(".") else "is too long")
        raise ShardError(f"{where} {name!r} {why}; a name must be a plain file-name stem such as cifar10-train")
    return name


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
