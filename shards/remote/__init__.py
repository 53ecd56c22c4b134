"""Shard sets in object storage or behind an HTTP server: ``s3://``, ``gs://``, ``http(s)://`` URLs.

* :mod:`shards.remote.url` — what a URL is (never a local path), the supported schemes and their extras,
  ``URL:WEIGHT``, ``--storage-option KEY=VALUE``;
* :mod:`shards.remote.fs` — an fsspec filesystem for a URL, with every failure (unknown scheme, missing
  extra, wrong endpoint, missing credentials, 403, 404) turned into one line naming the URL and the fix;
* :mod:`shards.remote.stage` — the node-local staging cache: a set is downloaded once per node, each shard
  checked against the manifest's sha256 as it lands and installed by rename, then read as a local set;
* :mod:`shards.remote.upload` — ``shards pack … --out s3://…``: tars and indexes first, the manifest last.

This package imports ``shards.base``, ``shards.format`` and ``shards.read`` only; ``shards.packing``,
``shards.verify``, ``shards.cli``, ``loaders`` and ``models.training`` import it.
"""
