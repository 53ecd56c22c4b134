"""What every benchmark shares: the hardware description, one JSON shape, one way to time, one memory figure.

Every benchmark writes ``bench/results/<host-kind>-<date>-<bench>.json`` shaped as::

    {"bench": NAME, "quick": false, "hardware": {...}, "settings": {...},
     "results": [{"backend": ..., "samples_per_s": ..., "timed_batches": ..., "seconds": ..., "peak_pss_mb": ...}]}

``backend`` is one of "dali-gpu", "dali-cpu", "reference", "webdataset", "model-ceiling", "end-to-end"
(or a packing path such as "npz->raw" for the packing benchmark).

Two rules hold for every figure (and are checked by ``bench.report.check_doc``):

* **Timing** — :func:`timed`: untimed warm-up batches, then at least ``MIN_BATCHES`` batches *and* at least
  ``MIN_SECONDS`` seconds (unless the data or ``max_batches`` ends first), with a device synchronisation on
  both sides. Each row carries its counts (``warmup_batches``, ``timed_batches``, ``timed_samples``,
  ``seconds``) and ``meets_minimum`` (≥ 50 batches or ≥ 10 s). ``--quick`` lowers the minimums; the JSON
  then says ``"quick": true`` and such figures are not quoted.
* **Memory** — :class:`PssSampler`: the sum of PSS (proportional set size: a page shared by k processes
  counts 1/k in each) over the process tree — this process and its live children (DataLoader workers,
  packing workers, DALI's parallel external-source workers when there are any) — sampled in a background
  thread during the run; the peak is ``peak_pss_mb``. Summing RSS instead would count pages shared by
  forked workers once per process and make a multi-process loader look several times bigger than it is.
  PSS includes file-backed pages mapped by the processes (the memory-mapped shards, libraries):
  ``peak_pss_file_mb`` is the peak of that part (page cache the kernel can drop), ``peak_pss_anon_mb`` the
  peak of the rest (the processes' own memory). ``peak_rss_sum_mb`` is an extra, not comparable across
  single- and multi-process backends.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The rule every quoted figure follows (the project's developer guide): >= 50 batches or >= 10 s after warm-up.
MIN_BATCHES = 50
MIN_SECONDS = 10.0
# What --quick asks for instead (the JSON then says "quick": true).
QUICK_MIN_BATCHES = 5
QUICK_MIN_SECONDS = 1.0


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
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other users of the cores, at write time
    except OSError:
        info["load_average"] = None
    return info


def host_kind(hw: dict | None = None) -> str:
    hw = hw or hardware_info()
    if hw.get("gpu"):
        return hw["gpu"].lower().replace("nvidia ", "").replace(" ", "-")
    return f"cpu{hw.get('cores')}"


#: Every benchmark's ``--out-dir``: where :func:`write_results` puts its JSON.
out_dir_option = click.option(
    "--out-dir", type=click.Path(file_okay=False), default=None, help="Where the JSON goes [bench/results]."
)


def write_results(bench: str, settings: dict, results: list[dict], out_dir: str | os.PathLike | None = None) -> Path:
    """Write one run's JSON (atomically) and return its path. ``settings["quick"]`` becomes the top-level
    ``quick`` flag (false when absent), so a reader can tell smoke runs from quotable ones."""
    from shards.manifest import atomic_write_text

    hw = hardware_info()
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"{host_kind(hw)}-{stamp}-{bench}.json"
    doc = {
        "bench": bench,
        "quick": bool(settings.get("quick", False)),
        "hardware": hw,
        "settings": settings,
        "results": results,
    }
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

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------------------
# Memory: PSS of the process tree
# ---------------------------------------------------------------------------------------------------
def tree_memory() -> dict:
    """This process and its live children now, in MiB: ``pss`` (sum of PSS), ``pss_file`` (of which
    file-backed: mapped shards, libraries), ``rss_sum`` (sum of RSS, counting shared pages once per
    process: an extra, not comparable across single- and multi-process backends), ``processes``."""
    import psutil

    me = psutil.Process()
    pss = pss_file = rss = 0
    count = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            full = p.memory_full_info()  # psutil reads /proc/PID/smaps_rollup on Linux
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss += getattr(full, "pss", full.rss)
        rss += full.rss
        pss_file += _pss_file(p.pid)
        count += 1
    mib = 2**20
    return {"pss": pss / mib, "pss_file": pss_file / mib, "rss_sum": rss / mib, "processes": count}


def _pss_file(pid: int) -> int:
    """Bytes of file-backed PSS of one process (``Pss_File`` of smaps_rollup; 0 where the kernel lacks it)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss_File:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PssSampler:
    """Peak of :func:`tree_memory` sampled every ``interval`` seconds in a background thread, from
    ``__enter__`` to ``__exit__`` (the code under test owns the main thread). One sample costs a few
    milliseconds of the sampling thread; at 0.25 s that is about 1 % of one core, the same for every backend.
    """

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_pss_mb = self.peak_pss_file_mb = self.peak_pss_anon_mb = self.peak_rss_sum_mb = 0.0
        self.max_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pss-sampler")

    def sample(self) -> dict:
        now = tree_memory()
        self.peak_pss_mb = max(self.peak_pss_mb, now["pss"])
        self.peak_pss_file_mb = max(self.peak_pss_file_mb, now["pss_file"])
        self.peak_pss_anon_mb = max(self.peak_pss_anon_mb, now["pss"] - now["pss_file"])
        self.peak_rss_sum_mb = max(self.peak_rss_sum_mb, now["rss_sum"])
        self.max_processes = max(self.max_processes, now["processes"])
        self.samples += 1
        return now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def row(self) -> dict:
        """The memory fields of a results row."""
        return {
            "peak_pss_mb": round(self.peak_pss_mb, 1),
            "peak_pss_file_mb": round(self.peak_pss_file_mb, 1),
            "peak_pss_anon_mb": round(self.peak_pss_anon_mb, 1),
            "peak_rss_sum_mb": round(self.peak_rss_sum_mb, 1),
            "processes": self.max_processes,
            "memory_samples": self.samples,
        }


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
def timed(
    run_one: Callable[[], int],
    *,
    warmup: int,
    min_batches: int = MIN_BATCHES,
    min_seconds: float = MIN_SECONDS,
    max_batches: int | None = None,
    sync: Callable[[], None] | None = None,
    memory: bool = True,
) -> dict:
    """Time ``run_one`` — one batch or step, returning how many samples it handled; ``StopIteration`` when
    the data is exhausted — the same way in every benchmark.

    Runs ``warmup`` untimed calls, synchronises (``sync``: e.g. ``torch.cuda.synchronize``), then calls
    until at least ``min_batches`` calls *and* ``min_seconds`` seconds have passed, or ``max_batches``
    calls, or the data ends; synchronises again and stops the clock. With ``memory`` the PSS of the process
    tree is sampled from the first warm-up call to the end (:class:`PssSampler`).

    Returns a results-row fragment: ``samples_per_s``, ``batches_per_s``, ``warmup_batches``,
    ``timed_batches``, ``timed_samples``, ``seconds``, ``stopped`` ("minimum" | "max_batches" |
    "exhausted"), ``meets_minimum`` (the project's rule: ≥ ``MIN_BATCHES`` batches or ≥ ``MIN_SECONDS``
    s) and, with ``memory``, the :meth:`PssSampler.row` fields.
    """
    sync = sync or (lambda: None)
    sampler = PssSampler() if memory else None
    with sampler or contextlib.nullcontext():
        for i in range(warmup):
            try:
                run_one()
            except StopIteration:
                raise ValueError(
                    f"the data ran out after {i} of {warmup} warm-up batches; give more data or a smaller --warmup"
                ) from None
        sync()
        t0 = time.perf_counter()
        batches = samples = 0
        stopped = "minimum"
        while True:
            if max_batches is not None and batches >= max_batches:
                stopped = "max_batches"
                break
            try:
                n = run_one()
            except StopIteration:
                stopped = "exhausted"
                break
            batches += 1
            samples += int(n)
            if batches >= min_batches and time.perf_counter() - t0 >= min_seconds:
                break
        sync()
        seconds = time.perf_counter() - t0
    row = {
        "samples_per_s": round(samples / seconds, 1) if samples and seconds > 0 else None,
        "batches_per_s": round(batches / seconds, 3) if batches and seconds > 0 else None,
        "warmup_batches": warmup,
        "timed_batches": batches,
        "timed_samples": samples,
        "seconds": round(seconds, 6),
        "stopped": stopped,
        "meets_minimum": batches >= MIN_BATCHES or seconds >= MIN_SECONDS,
    }
    if sampler is not None:
        row.update(sampler.row())
    return row


def timing_settings(
    quick: bool, warmup: int | None, min_batches: int | None, min_seconds: float | None, default_warmup: int = 10
) -> dict:
    """``timed``'s keyword arguments from command-line options: the project's minimums, or --quick's lower
    ones; an explicit option wins. ``quick`` in the result is true whenever the minimums are below the rule's,
    so such a run is marked in its JSON whatever flag lowered them."""
    mb = min_batches if min_batches is not None else (QUICK_MIN_BATCHES if quick else MIN_BATCHES)
    ms = min_seconds if min_seconds is not None else (QUICK_MIN_SECONDS if quick else MIN_SECONDS)
    wu = warmup if warmup is not None else (min(default_warmup, 2) if quick else default_warmup)
    return {
        "warmup": wu,
        "min_batches": mb,
        "min_seconds": ms,
        "quick": quick or (mb < MIN_BATCHES and ms < MIN_SECONDS),
    }


def timing_kwargs(settings: dict) -> dict:
    """The subset of :func:`timing_settings`' result that :func:`timed` takes."""
    return {k: settings[k] for k in ("warmup", "min_batches", "min_seconds")}


def device_sync(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def in_fresh_process(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a freshly spawned Python process, returning its (picklable) result, so that
    each measurement's memory is its own and nothing it allocates is left behind for the next one. An
    exception in the child, or the child dying (e.g. a crash in native code), becomes a one-line
    ``ShardError`` here. ``fn`` must be importable (a module-level function)."""
    import multiprocessing as mp
    import queue as _queue

    from shards.manifest import ShardError

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_main, args=(q, mp.get_start_method(allow_none=True), fn, args, kwargs))
    proc.start()
    try:
        while True:
            try:
                status, value = q.get(timeout=1.0)
                break
            except _queue.Empty:
                if not proc.is_alive():
                    raise ShardError(
                        f"{fn.__name__}: the measuring process died (exit code {proc.exitcode}) "
                        "before reporting; run it with --no-isolate to see the error"
                    ) from None
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        raise ShardError(f"{fn.__name__}: {value}")
    return value


def _child_main(q, start_method, fn, args, kwargs) -> None:
    import multiprocessing as mp

    # A spawned child's default start method is "spawn"; give the code under test the parent's (on Linux
    # "fork"), so its own workers (DataLoader, packing) start as they would in a normal run.
    mp.set_start_method(start_method, force=True)
    try:
        q.put(("ok", fn(*args, **kwargs)))
    except BaseException as e:  # reported to the parent as one line
        q.put(("error", f"{type(e).__name__}: {e}"))


# ---------------------------------------------------------------------------------------------------
# The data to run on, the device, the real loader
# ---------------------------------------------------------------------------------------------------
def default_workers() -> int:
    """Cores this process may use: the worker / thread count given to every loading backend by default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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


def time_train_loader(
    shards: list[str],
    aug: str,
    batch_size: int,
    *,
    device: str,
    warmup: int = 10,
    min_batches: int = MIN_BATCHES,
    min_seconds: float = MIN_SECONDS,
    max_batches: int | None = None,
    seed: int = 0,
    num_threads: int = 2,
    compile: bool | None = None,
) -> dict:
    """Build the real `loaders.loader.TrainLoader` over ``shards`` (``DIR[:W]`` arguments) and :func:`timed`
    its ``batches()`` — the training path: one pipeline across epochs. ``compile``: compile the colour stage
    (None: the loader's default, on for CUDA). Returns the timed row plus ``startup_s`` (construction to first
    batch, which is also the first warm-up batch, compilation included), ``steps_per_epoch`` and
    ``dali_operators``. Call it through :func:`in_fresh_process` for a memory figure of its own."""
    from loaders.augment import preset
    from loaders.loader import TrainLoader
    from loaders.mixture import parse_shards_args

    t0 = time.perf_counter()
    loader = TrainLoader(
        parse_shards_args(shards),
        preset(aug),
        batch_size=batch_size,
        seed=seed,
        device=device,
        num_threads=num_threads,
        compile=compile,
    )
    it = loader.batches()
    startup: list[float] = []

    def run_one() -> int:
        batch = next(it)
        if not startup:
            startup.append(time.perf_counter() - t0)
        return len(batch)

    row = timed(
        run_one,
        warmup=max(warmup, 1),
        min_batches=min_batches,
        min_seconds=min_seconds,
        max_batches=max_batches,
        sync=device_sync(device),
    )
    it.close()
    row.update(
        startup_s=round(startup[0], 2),
        steps_per_epoch=loader.steps_per_epoch,
        num_threads=num_threads,
        dali_operators=loader.dali_operators,
        colour_compiled=loader.colour.compiled,
    )
    return row


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
