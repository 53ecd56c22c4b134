"""The manifest of a shard set: what `shards pack` wrote and what `loaders/` reads.

A shard set is a directory holding ``NAME-00000.tar …``, one DALI index per tar
(``NAME-00000.idx``, the ``wds2idx`` format) and ``manifest.json``. Every sample
in a tar has three members sharing its ``__key__``:

* ``KEY.jpg`` / ``KEY.png`` / ``KEY.npy`` — the image (npy: one (H, W, 3) uint8 array, HWC, RGB,
  shape ``image_size``, behind a 512-byte ``.npy`` header so the pixels start on a tar block; the
  loaders read the pixels in place, any ``.npy`` reader, e.g. webdataset's decoder, gets the array);
  sets packed before manifest version 2 store raw pixels as ``KEY.raw`` (the H*W*3 bytes alone),
* ``KEY.cls`` — the label as ASCII digits (``-1`` for generated / unlabelled),
* ``KEY.json`` — ``{"source": NAME, "kind": KIND, "origin": ORIGINAL_PATH_OR_INDEX, "label": LABEL,
  "sha256": SHA256_OF_THE_IMAGE_MEMBER}`` (label and sha256 since version 2: each sample checkable alone).

Keys are unique within a shard set and, since version 2, across sets: ``NAME/POSITION`` (the set's
name, then the zero-padded position in the source's enumeration order, so a shuffled pack keeps stable
keys); CIFAR-10 and EDM samples in one stream never share a key. Sets of version 1 keep their plain
``POSITION`` keys and keep loading. Every field is checked when a manifest is read (``shards.format.schema``).

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

``standin`` (absent in data sets) marks a benchmark stand-in (``bench.scale``): a manifest that lists other
sets' tars again, through symbolic links, to reach a sample count; such a set may list one tar several
times, cut a tar to a prefix through its index and repeat keys, which the loaders and ``verify`` otherwise
refuse.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from shards.base.atomic import atomic_write_text
from shards.base.errors import ShardError
from shards.format.schema import MANIFEST_VERSION, image_member_ext, parse_manifest

MANIFEST_NAME = "manifest.json"


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
    kind: str  # one of shards.format.schema.KINDS
    split: str  # "train" | "test" | ...
    format: str  # one of shards.format.schema.FORMATS
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
    image_ext: str | None = None  # the image member's extension (schema.recorded_image_ext); None: the format's
    standin: str | None = None  # a benchmark stand-in repeating other sets' tars (see the module docstring)

    @property
    def lossless(self) -> bool | None:
        """True when no image was lossily encoded on the way in; None when the manifest does not say."""
        if self.encoding is None:
            return None
        return int(self.encoding.get("lossy_reencoded", 0)) == 0

    @property
    def labelled(self) -> bool:
        return any(int(k) >= 0 for k, v in self.label_counts.items() if v)

    @property
    def ext(self) -> str:
        """The extension of each sample's image member: ``jpg``, ``png``, ``npy`` or (raw sets packed before
        manifest version 2) ``raw`` (``shards.format.schema.image_member_ext``)."""
        return image_member_ext(self.format, self.image_ext)

    @property
    def num_classes(self) -> int:
        """How many labels the set's samples may use (0 … num_classes − 1, and −1 for unlabelled): its class
        names, or for a set without names (labelled arrays) the labels its label counts record."""
        if self.classes:
            return len(self.classes)
        used = [int(k) for k, v in self.label_counts.items() if v and int(k) >= 0]
        return max(used) + 1 if used else 0

    @property
    def digests(self) -> bool:
        """Whether each sample's ``.json`` records its label and the sha256 of its image (version 2 on)."""
        return self.version >= 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["classes"] = list(self.classes)
        d["skipped"] = list(self.skipped)
        for k in ("image_ext", "standin"):
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> Manifest:
        """A manifest from its JSON object, every field checked for type and range (a ShardError naming the
        field and the file otherwise)."""
        fields = parse_manifest(d, where)
        return cls(**{**fields, "shards": tuple(ShardInfo(**s) for s in fields["shards"])})

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
        except (OSError, ValueError, RecursionError) as e:
            raise ShardError(f"{path}: unreadable manifest ({e}); re-create it with `python -m shards pack`") from None
        return cls.from_dict(d, where=str(path))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write DIR/manifest.json atomically (temporary file, then rename)."""
        return atomic_write_text(Path(directory) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2) + "\n")


def check_name(name: str, where: str = "--name") -> str:
    """A shard set's name is a plain file-name stem: its tars are ``NAME-00000.tar`` beside the
    manifest, so a ``/``, a leading ``.`` (``..``, hidden files) or a control character would put
    files elsewhere or hide them; it also starts every key (``NAME/000123``), so it holds no white
    space (an index line separates fields by spaces) and at most 150 bytes (a tar header's prefix field)."""
    if not isinstance(name, str) or not name:
        raise ShardError(f"{where} is empty; give a plain name such as cifar10-train")
    bad = next((c for c in name if c in "/\\" or ord(c) < 32 or c == "\x7f" or c.isspace()), None)
    if bad is not None or name.startswith(".") or len(name.encode()) > 150:
        why = f"contains {bad!r}" if bad is not None else ("starts with '.'" if name.startswith(".") else "is too long")
        raise ShardError(f"{where} {name!r} {why}; a name must be a plain file-name stem such as cifar10-train")
    return name
