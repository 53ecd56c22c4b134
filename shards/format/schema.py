"""The fields of ``manifest.json``: the values they may take (versions, kinds, formats, the image member's
extension) and every field checked for type and range before anything uses it.

:func:`parse_manifest` turns the JSON object into the keyword arguments of ``shards.format.manifest.Manifest`` or
raises one :class:`ShardError` line naming the file, the field (``shards[3].count``) and what it should be.
JSON numbers that are not integers (``300.5``, ``1e400``, ``Infinity``) are not counts; booleans are not
numbers; a manifest of a version this code does not know is refused rather than half understood.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from shards.base.errors import ShardError

MANIFEST_VERSION = 2  # 2: keys prefixed by the set's name, raw pixels as .npy, label and sha256 in KEY.json
KNOWN_VERSIONS = (1, 2)
KINDS = ("real", "generated")
FORMATS = ("jpg", "png", "raw")  # what a shard set holds
PACK_FORMATS = ("auto",) + FORMATS  # what `shards pack --format` accepts (auto: see shards.packing.pack.resolve_format)
#: what a sample's image member may be named: jpg and png as encoded; raw pixels behind a .npy header (``npy``,
#: manifest version 2 on) or alone (``raw``, before version 2)
IMAGE_MEMBER_EXTS = ("jpg", "png", "raw", "npy")
PIXEL_MEMBER_EXTS = ("npy", "raw")  # the members holding pixels (no decoder needed; their size is the manifest's)
_PACKED_EXT = {"jpg": "jpg", "png": "png", "raw": "npy"}  # the image member's extension pack writes today


def packed_image_ext(fmt: str) -> str:
    """The extension ``shards pack`` gives the image members of a set of format ``fmt`` today."""
    return _PACKED_EXT[fmt]


def recorded_image_ext(fmt: str) -> str | None:
    """What a new manifest records as ``image_ext``: the extension where it differs from the format's name."""
    ext = packed_image_ext(fmt)
    return None if ext == fmt else ext


def image_member_ext(fmt: str, recorded: str | None) -> str:
    """The extension of a set's image members: the recorded ``image_ext``, else the format's name (raw sets
    packed before manifest version 2 hold ``KEY.raw``)."""
    return recorded or fmt


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SHARD_KEYS = ("file", "index", "count", "sha256", "bytes")
_MAX_SIDE = 65535  # JPEG's limit; no shard set holds larger images


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fields:
    def __init__(self, where: str):
        self.where = where

    def fail(self, name: str, value, want: str):
        raise ShardError(
            f"{self.where}: field {name} is {_show(value)}, want {want}; re-create the manifest with "
            "`python -m shards pack`"
        )

    def integer(self, name: str, v, lo: int = 0, hi: int | None = None) -> int:
        if type(v) is not int or v < lo or (hi is not None and v > hi):
            self.fail(name, v, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
        return v

    def text(self, name: str, v, empty: bool = False) -> str:
        if not isinstance(v, str) or (not empty and not v):
            self.fail(name, v, "a string" if empty else "a non-empty string")
        return v

    def choice(self, name: str, v, choices) -> str:
        if not isinstance(v, str) or v not in choices:
            self.fail(name, v, f"one of {', '.join(choices)}")
        return v

    def path(self, name: str, v) -> str:
        self.text(name, v)
        p = Path(v)
        if p.is_absolute() or ".." in p.parts or "\0" in v or v.strip() != v or any(c in v for c in "\n\r"):
            raise ShardError(
                f"{self.where}: shard file {v!r} ({name}) lies outside the shard folder; "
                "re-create the manifest with `python -m shards pack`"
            )
        return v


def parse_manifest(d, where: str) -> dict:
    """The checked keyword arguments of ``Manifest`` from a manifest's JSON object ``d`` (``shards``: the
    keyword arguments of each ``ShardInfo``)."""
    f = _Fields(where)
    if not isinstance(d, dict):
        raise ShardError(
            f"{where}: holds {type(d).__name__}, not a JSON object; re-create it with `python -m shards pack`"
        )
    for key in ("name", "kind", "format", "count", "shards"):
        if key not in d:
            raise ShardError(f"{where}: field {key} is missing; re-create the manifest with `python -m shards pack`")
    version = d.get("version", 1)
    if type(version) is not int or version not in KNOWN_VERSIONS:
        raise ShardError(
            f"{where}: field version is {_show(version)}, this code reads manifest versions "
            f"{', '.join(map(str, KNOWN_VERSIONS))}; re-pack the set with `python -m shards pack` or update this code"
        )
    out: dict = {"version": version}
    out["name"] = f.text("name", d["name"])
    out["kind"] = f.choice("kind", d["kind"], KINDS)
    out["split"] = f.text("split", d.get("split", "train"))
    out["format"] = fmt = f.choice("format", d["format"], FORMATS)

    size = d.get("image_size")
    if size is not None:
        if (
            not isinstance(size, list)
            or len(size) != 2
            or any(type(x) is not int or not 0 < x <= _MAX_SIDE for x in size)
        ):
            f.fail("image_size", size, f"null or [H, W] with integers 1 … {_MAX_SIDE}")
        size = (size[0], size[1])
    if fmt == "raw" and size is None:
        f.fail("image_size", None, "[H, W] (a raw set's pixels have the manifest's size)")
    out["image_size"] = size

    classes = d.get("classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        f.fail("classes", classes, "a list of class names (strings)")
    out["classes"] = tuple(classes)

    out["count"] = count = f.integer("count", d["count"])
    shards = d["shards"]
    if not isinstance(shards, list):
        f.fail("shards", shards, "a list of {file, index, count, sha256, bytes}")
    infos, seen = [], {}
    for i, s in enumerate(shards):
        name = f"shards[{i}]"
        if not isinstance(s, dict) or set(s) != set(_SHARD_KEYS):
            f.fail(name, s, "an object with exactly " + ", ".join(_SHARD_KEYS))
        info = dict(
            file=f.path(f"{name}.file", s["file"]),
            index=f.path(f"{name}.index", s["index"]),
            count=f.integer(f"{name}.count", s["count"]),
            sha256=s["sha256"],
            bytes=f.integer(f"{name}.bytes", s["bytes"]),
        )
        if not isinstance(info["sha256"], str) or not _HEX64.fullmatch(info["sha256"]):
            f.fail(f"{name}.sha256", info["sha256"], "64 hexadecimal digits")
        for field, v in ((f"{name}.file", info["file"]), (f"{name}.index", info["index"])):
            key = str(Path(v))
            if key in seen:
                raise ShardError(
                    f"{where}: {field} {v!r} is already listed as {seen[key]}; a shard set lists each file once: "
                    "re-create the manifest with `python -m shards pack`"
                )
            seen[key] = field
        infos.append(info)
    out["shards"] = tuple(infos)
    total = sum(s["count"] for s in infos)
    if total != count:
        raise ShardError(f"{where}: shard counts add up to {total}, manifest says {count}")

    fid = d.get("fid")
    if fid is not None and (type(fid) not in (int, float) or not math.isfinite(fid) or fid < 0):
        f.fail("fid", fid, "null or a finite number >= 0")
    out["fid"] = None if fid is None else float(fid)

    labels = d.get("label_counts") or {}
    if not isinstance(labels, dict):
        f.fail("label_counts", labels, "an object {label: count}")
    parsed = {}
    for k, v in labels.items():
        if not re.fullmatch(r"-?[0-9]{1,18}", k) or int(k) < -1 or (classes and int(k) >= len(classes)):
            bound = f" (the set has {len(classes)} classes)" if classes else ""
            f.fail(f"label_counts[{k!r}]", k, f"a label from -1 to the number of classes - 1{bound}")
        parsed[str(int(k))] = f.integer(f"label_counts[{k!r}]", v)
    if parsed and sum(parsed.values()) != count:
        raise ShardError(f"{where}: label_counts add up to {sum(parsed.values())}, manifest says {count}")
    out["label_counts"] = parsed

    skipped = d.get("skipped") or []
    if not isinstance(skipped, list) or not all(isinstance(x, dict) for x in skipped):
        f.fail("skipped", skipped, "a list of {path, reason}")
    out["skipped"] = tuple(skipped)
    out["command"] = f.text("command", d.get("command", ""), empty=True)
    out["created"] = f.text("created", d.get("created", ""), empty=True)
    encoding = d.get("encoding")
    if encoding is not None and not isinstance(encoding, dict):
        f.fail("encoding", encoding, "null or an object")
    out["encoding"] = None if encoding is None else dict(encoding)

    ext = d.get("image_ext")
    packed = recorded_image_ext(fmt)
    if ext is not None:
        f.choice("image_ext", ext, (fmt,) if packed is None else (packed, fmt))
    elif version >= 2 and packed is not None:
        f.fail("image_ext", None, f"{packed} for a {fmt} set of manifest version 2")
    out["image_ext"] = ext
    standin = d.get("standin")
    if standin is not None:
        f.text("standin", standin)
    out["standin"] = standin
    return out
