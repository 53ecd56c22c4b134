"""The project's user-facing errors: one line saying what is wrong and how to fix it.

Every command-line entry point (``train.py``, ``python -m shards``, ``python -m loaders``,
``python -m bench``) catches :class:`UserError` and prints its message as one line with a non-zero exit
status; anything else is a programming error and keeps its traceback. They live in ``shards.base``, the layer
every other package may import, so that every package can raise them. :class:`ShardError` is for shard sets
and their inputs only; settings and devices are :class:`ConfigError`.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (bad input, a missing file, a setting that cannot work): one line."""


class ShardError(UserError):
    """A problem with shards or their input: what, where, and how to fix it."""


class ConfigError(UserError, ValueError):
    """Settings that cannot work together, a missing device, a run directory that must not be touched.
    Also a ValueError: a bad value given to a library function is one, whoever gave it."""
