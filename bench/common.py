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


# ---------------------------------------------------------------------------------------------------
# Shared by the benchmark commands: memory of the process tree, the data to run on, the device.
# ---------------------------------------------------------------------------------------------------
def rss_tree_mb() -> float:
    """Current resident memory of this process plus its live children (DALI's Python workers), in MiB."""
    import psutil

    proc = psutil.Process()
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return round(total / 2**20, 1)


class RssSampler:
    """Peak of `rss_tree_mb()` over the calls to `sample()` (cheap enough to call once per batch)."""

    def __init__(self):
        self.start_mb = rss_tree_mb()
        self.peak_mb = self.start_mb

    def sample(self) -> float:
        now = rss_tree_mb()
        self.peak_mb = max(self.peak_mb, now)
        return now


def demo_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adainf-bench" / "demo"


def resolve_shards(shards: tuple[str, ...] | list[str], cache_dir: str | os.PathLike | None = None) -> list[str]:
    """The `--shards` arguments to use: the user's, or the demo mixture (built once, cached).

    With no `--shards`, `shards.demo.make_demo` builds the small real / generated / test shard sets into
    ``cache_dir`` (default ``~/.cache/adainf-bench/demo``) the first time, and the mixture is
    ``real:10 generated:1`` as in the paper.
    """
    if shards:
        return list(shards)
    out = Path(cache_dir) if cache_dir else demo_cache_dir()
    if not all((out / part / "manifest.json").is_file() for part in ("real", "generated")):
        from shards.demo import make_demo

        out.mkdir(parents=True, exist_ok=True)
        make_demo(out)
    return [f"{out / 'real'}:10", f"{out / 'generated'}:1"]


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; an explicit 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        import click

        raise click.BadParameter("no CUDA device is visible; use --device cpu (or auto)", param_hint="--device")
    return device


def time_train_loader(shards: list[str], aug: str, batch_size: int, batches: int | None, warmup: int,
                      device: str, seed: int = 0) -> dict:
    """Build the real `loaders.pipeline.TrainLoader` over ``shards`` (``DIR[:W]`` arguments) and time it.

    Runs ``warmup`` untimed batches, then ``batches`` timed ones (``None``: the rest of the epoch), with a
    device synchronisation around the timed part. Returns two-view samples/s, the loader's start-up time
    (construction to first batch), and memory: ``peak_rss_mb`` is the peak of the process tree (this process
    plus DALI's Python workers) sampled once per batch; ``process_maxrss_mb`` is getrusage's figure, which
    on Linux also remembers a spawning parent's peak, so it is kept only for reference.
    """
    import time

    from loaders.augment import preset
    from loaders.mixture import parse_shards_args
    from loaders.pipeline import TrainLoader

    sync = _device_sync(device)
    rss = RssSampler()
    t0 = time.perf_counter()
    loader = TrainLoader(parse_shards_args(shards), preset(aug), batch_size=batch_size, seed=seed, device=device)
    steps = loader.steps_per_epoch
    warmup = min(warmup, max(steps - 1, 0))
    budget = steps if batches is None else min(steps, warmup + batches)
    it = iter(loader.epoch(0))
    startup = t_start = None
    samples = timed = 0
    if warmup == 0:
        t_start = time.perf_counter()
    for i in range(budget):
        batch = next(it)
        if i == 0:
            startup = time.perf_counter() - t0
        rss.sample()
        if i < warmup:
            if i == warmup - 1:
                sync()
                t_start = time.perf_counter()
            continue
        timed += 1
        samples += int(batch.views[0].shape[0])
    sync()
    seconds = time.perf_counter() - t_start if t_start is not None else 0.0
    rss.sample()
    del it, loader
    return {"samples_per_s": round(samples / seconds, 1) if samples and seconds > 0 else None,
            "timed_batches": timed, "timed_samples": samples, "seconds": round(seconds, 3),
            "steps_per_epoch": steps, "startup_s": None if startup is None else round(startup, 2),
            "peak_rss_mb": rss.peak_mb, "rss_tree_peak_mb": rss.peak_mb, "process_maxrss_mb": peak_rss_mb()}


def _device_sync(device: str):
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def run_in_workdir(prefix: str, shards, run, cfg):
    """``run(resolve_shards(shards), cfg, workdir)`` in a fresh temporary folder, removed afterwards;
    a ShardError becomes one click error line. Returns (rows, the resolved shards)."""
    import shutil
    import tempfile

    import click

    from shards.manifest import ShardError

    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        shards = resolve_shards(shards)
        return run(shards, cfg, work), shards
    except ShardError as e:
        raise click.ClickException(str(e)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
