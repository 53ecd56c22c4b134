"""``shards pack … --out s3://…``: the set is packed locally (a temporary folder in the cache's disk), then its
tars and indexes are uploaded, and its manifest last, so a reader never sees half a set: a URL without
``manifest.json`` is no set (``stage`` says so in one line), one with it is whole.

``--overwrite`` of a set already at the URL removes its manifest first (readers then find no set, not a mix
of two), uploads the new files, writes the new manifest, and removes the old set's files the new manifest
does not list. Only object stores are written (``s3://``, ``gs://``); HTTP servers are read-only here.
"""

from __future__ import annotations

import json
import time

from shards.base.errors import ShardError
from shards.base.progress import progress
from shards.format.manifest import MANIFEST_NAME, Manifest
from shards.remote.fs import filesystem, remote_errors
from shards.remote.options import RemoteOptions
from shards.remote.url import child, normalise, redact, scheme_of

WRITABLE = ("s3", "gs")


def check_target(url: str, options: RemoteOptions, overwrite: bool, option: str = "--out"):
    """Refuse, before any packing, a URL that cannot take a new set (one line): an HTTP URL, a missing bucket,
    credentials or endpoint that do not work, a set already there without ``--overwrite``. The filesystem."""
    url = normalise(url)
    scheme = scheme_of(url, option)
    if scheme.name not in WRITABLE:
        raise ShardError(
            f"{option} {redact(url)}: {scheme.name}:// URLs are read-only here; pack into a folder served by the "
            "server, or upload to s3:// or gs://"
        )
    fs = filesystem(url, options.storage_options, option)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    with remote_errors(url):
        if not fs.exists(f"{scheme.name}://{bucket}"):
            raise ShardError(f"{option} {redact(url)}: no bucket {bucket!r} there; create it first, or check the URL")
        exists = fs.exists(child(url, MANIFEST_NAME))
    if exists and not overwrite:
        raise ShardError(
            f"{option} {redact(url)}: a shard set is already there; pass --overwrite to replace it, or give another URL"
        )
    return fs


def upload_set(local, url: str, options: RemoteOptions, *, overwrite: bool = False, log=print) -> dict:
    """Upload the packed set in folder ``local`` to ``url``: tars and indexes, then the manifest. Returns
    ``{"bytes", "seconds", "files"}``."""
    url = normalise(url)
    fs = check_target(url, options, overwrite)
    manifest = Manifest.load(local)
    old: set[str] = set()
    t0 = time.perf_counter()
    with remote_errors(url):
        if fs.exists(child(url, MANIFEST_NAME)):
            try:
                old = Manifest.from_dict(json.loads(fs.cat_file(child(url, MANIFEST_NAME)))).files
            except (ValueError, ShardError):
                old = set()
            fs.rm_file(child(url, MANIFEST_NAME))  # from now on no reader takes the old files for a set
        files = [f for s in manifest.shards for f in (s.file, s.index)]
        total = sum((local / f).stat().st_size for f in files)
        with progress(total, f"upload {redact(url)}", "B", enabled=options.progress) as bar:
            for f in files:
                fs.put_file(str(local / f), child(url, f))
                bar.update((local / f).stat().st_size)
        fs.put_file(str(local / MANIFEST_NAME), child(url, MANIFEST_NAME))  # last: the set exists from now on
        for f in sorted(old - manifest.files):
            fs.rm_file(child(url, f))
    return {"bytes": total, "seconds": time.perf_counter() - t0, "files": len(files) + 1}
