"""URLs of shard sets: recognised before anything takes them for a path, their scheme checked, and the
``--storage-option KEY=VALUE`` spelling of fsspec's storage options.

Anything that starts ``SCHEME://`` is a URL, never a local path (``Path("s3://b/set")`` would silently be
the local folder ``s3:/b/set``). A scheme outside :data:`SCHEMES` is one line listing the supported ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from shards.base.errors import ShardError


@dataclass(frozen=True)
class Scheme:
    name: str
    protocol: str  # fsspec's protocol name
    package: str  # the module fsspec needs for it
    extra: str  # the optional extra of this project that installs it
    what: str  # for messages


SCHEMES: dict[str, Scheme] = {
    "s3": Scheme("s3", "s3", "s3fs", "s3", "S3 or an S3-compatible store (MinIO, Ceph, R2)"),
    "gs": Scheme("gs", "gs", "gcsfs", "gcs", "Google Cloud Storage"),
    "http": Scheme("http", "http", "aiohttp", "http", "an HTTP server"),
    "https": Scheme("https", "https", "aiohttp", "http", "an HTTPS server"),
}
SUPPORTED = ", ".join(f"{s}://" for s in SCHEMES)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(text) -> bool:
    """Whether ``text`` is a URL (``SCHEME://…``), whatever the scheme; a URL is never a local path."""
    return isinstance(text, str) and bool(_URL.match(text))


def scheme_of(url: str, option: str = "") -> Scheme:
    """The :class:`Scheme` of ``url``; an unknown scheme or a URL without a bucket / host is one line."""
    where = f"{option} {url}" if option else url
    m = _URL.match(url)
    if not m:
        raise ShardError(f"{where}: not a URL; write {SUPPORTED.replace(', ', ' / ')}BUCKET_OR_HOST/PATH")
    name = m.group(1).lower()
    if name not in SCHEMES:
        raise ShardError(
            f"{where}: {name}:// is not a supported scheme; shard sets may be local folders or {SUPPORTED} URLs"
        )
    if not urlsplit(url).netloc:
        host = "host" if name.startswith("http") else "bucket"
        raise ShardError(f"{where}: no {host} in the URL; write {name}://{host.upper()}/PATH/TO/SET")
    return SCHEMES[name]


def normalise(url: str) -> str:
    """The URL of a set without a trailing slash (``s3://b/set/`` and ``s3://b/set`` are one set)."""
    return url.rstrip("/")


def child(url: str, name: str) -> str:
    """``url/name`` (a file of the set)."""
    return f"{normalise(url)}/{name}"


def split_weight(arg: str) -> tuple[str, str | None]:
    """``URL[:WEIGHT]`` → (URL, WEIGHT text or None). The weight is what follows the last ``:`` of the URL's
    path: ``s3://b/set:10`` has weight 10, ``http://host:8000/set`` none (8000 is a port), ``http://host:8000/set:10``
    weight 10; an object-store URL has no port, so ``s3://bucket:10`` is the bucket with weight 10."""
    parts = urlsplit(arg)
    if not parts.path and parts.scheme.lower() in ("s3", "gs"):  # s3://bucket:10 — a bucket name holds no ':'
        host, sep, weight = parts.netloc.rpartition(":")
        return (f"{parts.scheme}://{host}", weight) if sep else (arg, None)
    head, sep, weight = arg.rpartition(":")
    if not sep or "/" in weight or len(head) < len(parts.scheme) + 3 + len(parts.netloc):
        return arg, None  # the last ':' is the scheme's or a port's
    return head, weight


def parse_storage_options(items) -> dict:
    """``["KEY=VALUE", …]`` (``--storage-option``, repeatable) → fsspec's storage options. A dotted key nests
    (``config_kwargs.retries.max_attempts=2``, ``client_kwargs.region_name=eu-west-1``); ``true`` / ``false``
    and numbers become booleans and numbers, anything else stays text."""
    out: dict = {}
    for item in items or ():
        if isinstance(item, dict):
            merge_options(out, item)
            continue
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ShardError(
                f"--storage-option {item!r}: write KEY=VALUE, e.g. --storage-option endpoint_url=http://127.0.0.1:9000"
            )
        node = out
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ShardError(f"--storage-option {item!r}: {k} is set to a value and used as a group")
        node[last] = _value(value)
    return out


def merge_options(into: dict, more: dict) -> dict:
    """``more`` merged into ``into`` (nested dictionaries merged, ``more`` wins), returned."""
    for k, v in (more or {}).items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge_options(into[k], v)
        else:
            into[k] = v
    return into


def _value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def redact(url: str) -> str:
    """A URL fit for messages and logs: a ``user:password@`` part hidden."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return url.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)
