"""``shards pack SRC --out s3://BUCKET/PREFIX/SET``: pack into a temporary folder beside the staging cache, then
upload it (``shards.remote.upload``: tars and indexes, the manifest last). The URL is checked before packing
starts (bucket, credentials, a set already there without ``--overwrite``), so a mistake costs no packing."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from shards.base.errors import ShardError
from shards.format.manifest import check_name
from shards.packing.pack import PackConfig, PackResult, pack
from shards.remote.options import RemoteOptions
from shards.remote.upload import check_target, upload_set
from shards.remote.url import normalise, redact


def pack_to_url(
    src, cfg: PackConfig, url: str, options: RemoteOptions, *, subdir: str = "", layout: str = "auto", log=print
) -> tuple[PackResult, dict]:
    """Pack ``src`` as ``cfg`` says, upload the set to ``url``; (the pack's result, the upload's figures)."""
    url = normalise(url)
    check_target(url, options, cfg.overwrite)
    name = check_name(cfg.name, "--name") if cfg.name else check_name(url.rsplit("/", 1)[-1], f"--out {redact(url)}")
    work = options.cache / "upload"
    try:
        work.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    except OSError as e:
        raise ShardError(
            f"--cache-dir {options.cache}: cannot write there ({e.strerror}); `pack --out URL` packs into it "
            "before uploading: give a writable --cache-dir"
        ) from None
    try:
        local = dataclasses.replace(cfg, out=tmp / name, name=name, overwrite=False)
        result = pack(src, local, subdir=subdir, layout=layout)
        sent = upload_set(tmp / name, url, options, overwrite=cfg.overwrite, log=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result, sent
