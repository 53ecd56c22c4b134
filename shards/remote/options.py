"""What a command that reads shard sets needs to know about remote ones, and the one call that turns a
location (a folder or a URL) into a local folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shards.remote.url import merge_options, parse_storage_options

CACHE_ENV = "ADAINF_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$ADAINF_CACHE_DIR``, else ``$XDG_CACHE_HOME/adainf-loader``, else ``~/.cache/adainf-loader``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adainf-loader"


@dataclass(frozen=True)
class RemoteOptions:
    """``cache_dir``: the node-local staging cache (None: :func:`default_cache_dir`); ``storage_options``:
    fsspec's, from ``--storage-option KEY=VALUE`` or a mixture YAML's ``storage_options:`` (credentials and
    endpoint otherwise come from the environment and profiles, as the SDKs read them); ``on_corrupt``: the
    loaders' (``skip`` installs a shard damaged on the server, whose samples the loader then checks one by one
    and skips); ``progress``: a bar on a terminal, plain lines elsewhere."""

    cache_dir: str | os.PathLike | None = None
    storage_options: dict = field(default_factory=dict)
    on_corrupt: str = "error"
    progress: bool = True

    @classmethod
    def from_cli(cls, cache_dir=None, storage_option=(), **kw) -> RemoteOptions:
        return cls(cache_dir=cache_dir or None, storage_options=parse_storage_options(storage_option), **kw)

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def with_storage_options(self, more: dict) -> RemoteOptions:
        """These options with ``more`` (a YAML's) underneath: what the command line gave wins."""
        import copy

        merged = merge_options(copy.deepcopy(dict(more or {})), copy.deepcopy(self.storage_options))
        return RemoteOptions(self.cache_dir, merged, self.on_corrupt, self.progress)


def click_options(f):
    """``--cache-dir`` and ``--storage-option KEY=VALUE`` (repeatable), as every command that takes shard sets
    spells them."""
    import click

    f = click.option(
        "--storage-option",
        "storage_option",
        multiple=True,
        metavar="KEY=VALUE",
        help="fsspec storage option for s3:// / gs:// / http(s):// shard sets (repeatable; a dotted KEY nests, "
        "e.g. client_kwargs.region_name=eu-west-1); credentials and endpoint otherwise come from the environment "
        "(AWS_ENDPOINT_URL, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS…)",
    )(f)
    f = click.option(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help=f"node-local cache where remote shard sets are staged (default ${CACHE_ENV} or ~/.cache/adainf-loader)",
    )(f)
    return f
