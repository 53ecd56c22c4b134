"""What this machine gives a run, decided here and nowhere else: the device a ``--device`` names, the cores this
process may use, and how many CPU threads a loader gets unless told otherwise.

``train.py`` (through ``models.training.runtime``), ``python -m loaders audit``, the readers' and hashers' worker
pools and every benchmark ask these functions instead of re-deciding. It lives in the lowest package, like
``shards.base.errors``, so that every other package can ask it; torch is imported only when a device is resolved.
"""

from __future__ import annotations

import os

from shards.base.errors import ConfigError

#: DALI CPU threads per loader unless a command says otherwise (train.py --num-threads, loaders audit --threads,
#: bench end-to-end --num-threads): DALI's examples' setting; more help only where cores are free.
LOADER_THREADS = 2


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or ``taskset`` narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_device(device: str = "auto", flag: str = "--device") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cpu`` and ``cuda[:N]`` as given. A CUDA device
    without a visible GPU is a :class:`ConfigError` naming ``flag``."""
    import torch

    device = (device or "auto").strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: no CUDA device is visible; use {flag} cpu (or auto)")
        return device
    if device != "cpu":
        raise ConfigError(f"{flag} {device}: use auto, cpu or cuda[:N]")
    return device
