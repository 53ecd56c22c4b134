"""What every benchmark shares: the hardware description and one JSON shape for results.

Every benchmark writes ``bench/results/<host-kind>-<date>-<bench>.json`` shaped as::

    {"bench": NAME, "hardware": {...}, "settings": {...}, "results": [{"backend": ..., "samples_per_s": ..., ...}]}

``backend`` is one of "dali-gpu", "dali-cpu", "reference", "webdataset", "model-ceiling", "end-to-end"
(or a packing path such as "npz->raw" for the packing benchmark).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def hardware_info() -> dict:
    info = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": None,
        "driver": None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
            info["driver"] = _nvidia_driver()
    except ImportError:
        info["torch"] = None
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except ImportError:
        info["dali"] = None
    return info


def host_kind(hw: dict | None = None) -> str:
    hw = hw or hardware_info()
    if hw.get("gpu"):
        return hw["gpu"].lower().replace("nvidia ", "").replace(" ", "-")
    return f"cpu{hw.get('cores')}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024.0, 1)


def write_results(bench: str, settings: dict, results: list[dict], out_dir: str | os.PathLike | None = None) -> Path:
    """Write one run's JSON (atomically) and return its path."""
    from shards.manifest import atomic_write_text

    hw = hardware_info()
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"{host_kind(hw)}-{stamp}-{bench}.json"
    doc = {"bench": bench, "hardware": hw, "settings": settings, "results": results}
    return atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"
    return "-" if v is None else str(v)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
