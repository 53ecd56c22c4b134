"""What this machine gives a run, decided here and nowhere else: the device a ``--device`` names, where a
loader's DALI graph runs (``--loader-device``), the cores this process may use, and how many CPU threads a
loader gets unless told otherwise.

``train.py`` (through ``models.training.runtime``), the loaders (``loaders.batch.loader``), ``python -m loaders
audit``, the readers' and hashers' worker pools and every benchmark ask these functions instead of re-deciding.
It lives in ``shards.base`` so that every other package can ask it; torch is imported only when a device is
resolved.
"""

from __future__ import annotations

import os

from shards.base.errors import ConfigError

#: DALI CPU threads per loader unless a command says otherwise (``--num-threads`` in train.py, ``python -m loaders
#: audit|preview`` and the benchmarks): DALI's examples' setting; more help only where cores are free.
LOADER_THREADS = 2
#: where a loader's DALI graph runs: ``gpu`` (the mixed decoder, GPU resizes), ``cpu`` (CPU threads), ``auto``
#: (``gpu`` exactly when the model's device is CUDA)
LOADER_DEVICES = ("auto", "cpu", "gpu")


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or ``taskset`` narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_device(device: str = "auto", flag: str = "--device") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cpu`` and ``cuda[:N]`` as given. A CUDA device
    without a visible GPU is a :class:`ConfigError` naming ``flag``."""
    import torch

    device = (str(device) or "auto").strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: no GPU is visible here; use {flag} cpu (or auto)")
        return device
    if device != "cpu":
        raise ConfigError(f"{flag} {device}: use auto, cpu or cuda[:N]")
    return device


def resolve_loader_device(loader_device: str, device: str, flag: str = "--loader-device") -> str:
    """Where the DALI graph runs (one of :data:`LOADER_DEVICES`) for a model on ``device`` (as
    :func:`resolve_device` gives it): ``auto`` → ``gpu`` exactly when ``device`` is CUDA. ``gpu`` without a
    visible GPU, or a name not in the list, is a :class:`ConfigError` naming ``flag``."""
    import torch

    if loader_device not in LOADER_DEVICES:
        raise ConfigError(f"{flag} {loader_device}: use one of {', '.join(LOADER_DEVICES)}")
    if loader_device == "auto":
        return "gpu" if str(device).startswith("cuda") else "cpu"
    if loader_device == "gpu" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} gpu: no GPU is visible here; use {flag} cpu (or auto)")
    return loader_device


def cuda_index(device: str) -> int:
    """The GPU number of a ``cuda[:N]`` device (DALI's ``device_id``); 0 for ``cuda`` and for the CPU."""
    device = str(device)
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
