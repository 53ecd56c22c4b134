"""Checkpoints: one dict (nanoGPT's habit), written atomically, read back with one-line errors.

A checkpoint holds ``settings`` (the run's Settings as a dict), ``resolved`` (what they resolved to:
device, schedule, mixture with each source's count and digest, augmentation), ``step`` (optimizer steps
taken), ``model`` (the method without any DDP / compile wrapper: no ``module.`` or ``_orig_mod.`` key prefix,
so a checkpoint loads into a plain method whatever ``--compile`` wrote or reads it), ``optimizer``, ``scheduler``,
``scaler``, ``loader`` (the position of the next batch: the only source of the epoch and in-epoch step),
``rng`` (one state per rank, as tensors and plain types).

Every value is a tensor or a plain Python type, so a checkpoint loads with ``torch.load(path, weights_only=True)``
(torch's default): nothing in it runs code when read. Checkpoints written before that held numpy's RNG state
tuple (a pickled ``ndarray``); ``load_checkpoint`` still reads them, with ``weights_only=True`` and only numpy's
array-rebuilding globals allowed (``LEGACY_NUMPY_GLOBALS``), never with ``weights_only=False``.
"""

from __future__ import annotations

import errno
import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import torch

from shards.base.errors import ConfigError, UserError

CKPT_LAST = "ckpt-last.pt"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's and torch.compile's attribute names in a wrapped state_dict


# What numpy's RNG state tuple (``np.random.get_state()``) pickles as: older checkpoints held it.
LEGACY_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(UserError):
    """A checkpoint could not be written (disk full, permissions) or read (missing, foreign, truncated)."""


def save_checkpoint(path: Path, state: dict) -> Path:
    """``torch.save`` to a uniquely named temporary file beside ``path``, fsync, then rename: a reader sees
    the old checkpoint or the new one, never half of one; two writers never share a temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({why}); free space or fix the "
            f"permissions of {path.parent}, then continue with --resume"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """Load a checkpoint file, or DIR/ckpt-last.pt for a run directory; a bad path is one clear line."""
    p = Path(path)
    if p.is_dir():
        p = p / CKPT_LAST
    if not p.is_file():
        raise ConfigError(f"{p}: no checkpoint here; give a run directory with {CKPT_LAST} or a .pt file")
    try:
        ckpt = read_weights_only(p)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file, whatever torch raises
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "settings" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{p}: not a train.py checkpoint (no settings/model)")
    ckpt["model"] = plain_state_dict(ckpt["model"])
    return p, ckpt


def read_weights_only(path: Path) -> object:
    """``torch.load(path, weights_only=True)``; a file refused only for numpy's RNG state (a checkpoint written
    before RNG states were saved as tensors) is read again with numpy's array globals allowed, still
    ``weights_only``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "numpy" not in str(e):
            raise
    with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def plain_state_dict(state: dict) -> dict:
    """``state`` with DDP / compile wrapper prefixes removed from its keys (a state_dict saved from a wrapped
    module elsewhere); this project's checkpoints have none."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out
