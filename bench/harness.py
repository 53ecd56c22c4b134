"""The harness every benchmark runs on: one timing rule, one memory figure, fresh-process isolation, the hardware,
one JSON shape, the command-line options they share and the loader timed on the training path.

A benchmark is a small suite over it: the grid of its :class:`Case` s (what each calls, with which arguments,
the fields its row starts with), :func:`run_cases`, then :func:`finish` (table and JSON). How every figure is
taken, and why, is stated once, in bench/README.md ("How every figure is taken").
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import click

from shards.base import host
from shards.base.errors import ConfigError, UserError

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # committed: full runs only
# A quick (smoke) run's JSON, where no --out-dir is given: under runs/, which git ignores, never among the
# committed results (whose report and charts it would otherwise redraw).
QUICK_RESULTS_DIR = Path(__file__).resolve().parents[1] / "runs" / "bench-quick"
MIN_BATCHES, MIN_SECONDS = 50, 10.0  # the rule of every quoted figure: >= 50 batches and >= 10 s after warm-up
QUICK_BATCHES, QUICK_SECONDS = 5, 1.0  # what --quick asks for instead (the JSON then says "quick": true)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """How a row is timed: ``warmup`` untimed calls, then at least ``min_batches`` calls and ``min_seconds``
    (at most ``max_batches``). ``small``: --quick was given (benchmarks shrink their sizes too)."""

    warmup: int = 10
    min_batches: int = MIN_BATCHES
    min_seconds: float = MIN_SECONDS
    max_batches: int | None = None
    small: bool = False

    @property
    def quick(self) -> bool:
        """Below the rule (both minimums lowered), whatever lowered them: such a JSON is marked quick."""
        return self.small or (self.min_batches < MIN_BATCHES and self.min_seconds < MIN_SECONDS)

    def settings(self) -> dict:
        keys = ("warmup", "min_batches", "min_seconds", "max_batches")
        return {**{k: getattr(self, k) for k in keys}, "quick": self.quick}


def timing_options(warmup: int = 10, *, min_batches: int = MIN_BATCHES, noun: str = "batches", floor: int = 0):
    """The options of :class:`Timing` (``--warmup``, ``--min-NOUN``, ``--min-seconds``, ``--max-NOUN``, ``--quick``),
    handed to the command as ``timing=``. ``floor``: the least warm-up (compiling must not fall in timed calls)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*, warmup_, min_batches_, min_seconds_, max_batches_, quick, **kw):
            mb = min_batches_ or (min(min_batches, QUICK_BATCHES) if quick else min_batches)
            ms = min_seconds_ if min_seconds_ is not None else (QUICK_SECONDS if quick else MIN_SECONDS)
            wu = warmup_ if warmup_ is not None else (min(warmup, 2) if quick else warmup)
            return fn(timing=Timing(max(wu, floor), mb, ms, max_batches_, quick), **kw)

        least, fewest = f", at least {floor}" if floor else "", min(min_batches, QUICK_BATCHES)
        for flag, name, kind, text in (
            ("--quick", "quick", None, "small sizes, lower minimums: a smoke run (marked quick in the JSON)"),
            (f"--max-{noun}", "max_batches_", click.IntRange(1), f"timed {noun} at most"),
            ("--min-seconds", "min_seconds_", click.FloatRange(0), "timed seconds at least [10; --quick 1]"),
            (
                f"--min-{noun}",
                "min_batches_",
                click.IntRange(1),
                f"timed {noun} at least [{min_batches}; quick {fewest}]",
            ),
            ("--warmup", "warmup_", click.IntRange(0), f"untimed {noun} first [{warmup}; --quick 2{least}]"),
        ):
            flags = {"is_flag": True} if kind is None else {"type": kind}
            wrapper = click.option(flag, name, help=text, **flags)(wrapper)
        return wrapper

    return decorate


def timed(run_one: Callable[[], int], timing: Timing, *, sync: Callable[[], None] | None = None, memory: bool = True):
    """Time ``run_one`` (one batch or step; returns its sample count; ``StopIteration`` when the data ends) by the
    rule: warm-up, ``sync``, calls until both minimums hold (or ``max_batches``, or the data ends), ``sync``. The
    row holds the counts, ``stopped``, ``meets_minimum`` and, with ``memory``, :meth:`PssSampler.row`."""
    sync = sync or (lambda: None)
    sampler = PssSampler() if memory else None
    with sampler or contextlib.nullcontext():
        for i in range(timing.warmup):
            try:
                run_one()
            except StopIteration:
                raise ConfigError(
                    f"the data ran out after {i} of {timing.warmup} warm-up batches; give more data or lower --warmup"
                ) from None
        sync()
        t0, batches, samples, stopped = time.perf_counter(), 0, 0, "minimum"
        while True:
            if timing.max_batches is not None and batches >= timing.max_batches:
                stopped = "max_batches"
                break
            try:
                samples += int(run_one())
            except StopIteration:
                stopped = "exhausted"
                break
            batches += 1
            if batches >= timing.min_batches and time.perf_counter() - t0 >= timing.min_seconds:
                break
        sync()
        seconds = time.perf_counter() - t0
    row = {
        "samples_per_s": round(samples / seconds, 1) if samples and seconds > 0 else None,
        "batches_per_s": round(batches / seconds, 3) if batches and seconds > 0 else None,
        "warmup_batches": timing.warmup,
        "timed_batches": batches,
        "timed_samples": samples,
        "seconds": round(seconds, 6),
        "stopped": stopped,
        "meets_minimum": batches >= MIN_BATCHES or seconds >= MIN_SECONDS,
    }
    return {**row, **sampler.row()} if sampler else row


def device_sync(device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


# ---------------------------------------------------------------------------------------------------
# Memory: the sum of PSS over the process tree
# ---------------------------------------------------------------------------------------------------
def tree_memory() -> dict:
    """This process and its live children now, in MiB: ``pss`` (sum of PSS), ``pss_file`` (its file-backed part),
    ``rss_sum`` (RSS summed: shared pages once per process, an extra only) and ``processes``."""
    import psutil

    me = psutil.Process()
    pss = pss_file = rss = count = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            full = p.memory_full_info()  # /proc/PID/smaps_rollup on Linux
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss, rss, count = pss + getattr(full, "pss", full.rss), rss + full.rss, count + 1
        with contextlib.suppress(OSError), open(f"/proc/{p.pid}/smaps_rollup") as fh:
            pss_file += next((int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss_File:")), 0)
    mib = 2**20
    return {"pss": pss / mib, "pss_file": pss_file / mib, "rss_sum": rss / mib, "processes": count}


class PssSampler:
    """Peaks of :func:`tree_memory`, sampled every ``interval`` s in a background thread from ``__enter__`` to
    ``__exit__``. What the sampling itself costs is measured (CPU time of its calls, ``memory_probe_cpu_s``, and its
    share of one core over the run, ``memory_probe_core_share``): tens of ms per sample over a tree of a few
    processes, more for more processes, so a suite that compares rates measures memory in a pass of its own
    (``bench/loader.py``)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.samples, self.peak = interval, 0, {"pss": 0.0, "pss_file": 0.0, "anon": 0.0, "rss_sum": 0.0}
        self.max_processes, self.cpu_s, self._wall = 0, 0.0, [0.0, 0.0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pss-sampler")

    def sample(self) -> dict:
        cpu = time.thread_time()  # this thread's CPU time (user + system): what this sample costs
        now = tree_memory()
        self.cpu_s += time.thread_time() - cpu
        for k, v in {**now, "anon": now["pss"] - now["pss_file"]}.items():
            if k in self.peak:
                self.peak[k] = max(self.peak[k], v)
        self.max_processes, self.samples = max(self.max_processes, now["processes"]), self.samples + 1
        return now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PssSampler:
        self._wall[0] = time.perf_counter()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self._wall[1] = time.perf_counter()

    def row(self) -> dict:
        """The memory fields of a results row."""
        p = {k: round(v, 1) for k, v in self.peak.items()}
        return {
            "peak_pss_mb": p["pss"],
            "peak_pss_file_mb": p["pss_file"],
            "peak_pss_anon_mb": p["anon"],
            "peak_rss_sum_mb": p["rss_sum"],
            "processes": self.max_processes,
            "memory_samples": self.samples,
            "memory_probe_cpu_s": round(self.cpu_s, 4),
            "memory_probe_core_share": round(self.cpu_s / wall, 5)
            if (wall := self._wall[1] - self._wall[0]) > 0
            else None,
        }


# ---------------------------------------------------------------------------------------------------
# Fresh processes and suites of cases
# ---------------------------------------------------------------------------------------------------
class MeasurementError(RuntimeError):
    """A measuring process failed or died: not the user's data or settings (its traceback went to stderr)."""


def in_fresh_process(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a freshly spawned process (its memory is its own; it leaves nothing behind),
    returning its picklable result. A :class:`UserError` there is raised here as the same one-line error; any
    other failure, or the process dying (a crash in native code), is a :class:`MeasurementError`."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q, mp.get_start_method(allow_none=True), fn, args, kwargs))
    proc.start()
    try:
        while True:
            try:
                status, *value = q.get(timeout=1.0)
                break
            except queue.Empty:
                if not proc.is_alive():
                    raise MeasurementError(
                        f"{fn.__name__}: the measuring process died (exit code {proc.exitcode}) before reporting; "
                        "run it with --no-isolate to see why"
                    ) from None
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    if status == "ok":
        return value[0]
    if status == "user":
        cls, message = value
        try:
            error = cls(message)
        except Exception:  # an error class with other arguments: the line is what matters
            error = UserError(message)
        raise error
    raise MeasurementError(f"{fn.__name__}: {value[0]} (the measuring process's traceback is above)")


def _child(q, start_method, fn, args, kwargs) -> None:
    import multiprocessing as mp
    import traceback

    # a spawned child starts its own workers (DataLoader, packing) as the parent would: fork on Linux
    mp.set_start_method(start_method, force=True)
    try:
        q.put(("ok", fn(*args, **kwargs)))
    except UserError as e:
        q.put(("user", type(e), str(e)))
    except BaseException as e:
        traceback.print_exc()
        q.put(("error", f"{type(e).__name__}: {e}"))


@dataclass(frozen=True)
class Case:
    """One row of a suite: ``fn(**kwargs)`` (a module-level function, so it can run in a fresh process), named
    ``label`` in the log, and the fields its row starts with."""

    label: str
    fn: Callable
    kwargs: dict
    fields: dict = field(default_factory=dict)


def run_cases(cases: Iterable[Case], isolate: bool = True) -> list[dict]:
    """Each case in turn, each in a fresh process unless ``isolate`` is off: one row each."""
    rows = []
    for case in cases:
        click.echo(f"  {case.label} ...", err=True)
        row = {**case.fields, **(in_fresh_process(case.fn, **case.kwargs) if isolate else case.fn(**case.kwargs))}
        rows.append(row)
        memory = f", peak PSS {_fmt(row['peak_pss_mb'])} MiB" if "peak_pss_mb" in row else ""
        click.echo(f"  {case.label}: {_fmt(row.get('samples_per_s'))} samples/s{memory}", err=True)
    return rows


def finish(bench: str, settings: dict, rows: list[dict], columns: str, out_dir=None, save: bool = True):
    """Print the table (``columns``: row keys, space-separated) and write the JSON; returns its path."""
    print_table(rows, columns.split())
    if save:
        path = write_results(bench, settings, rows, out_dir)
        click.echo(f"wrote {path}", err=True)
        return path
    return None


# ---------------------------------------------------------------------------------------------------
# Hardware, results JSON, table
# ---------------------------------------------------------------------------------------------------
def hardware_info() -> dict:
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    info.update(platform=platform.platform(), gpu=None, driver=None, torch=None, dali=None)
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, driver=_nvidia_driver())
    with contextlib.suppress(ImportError):
        import nvidia.dali

        info["dali"] = nvidia.dali.__version__
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other users of the cores, at write time
    except OSError:
        info["load_average"] = None
    return info


def host_kind(hw: dict | None = None) -> str:
    hw = hw or hardware_info()
    return hw["gpu"].lower().replace("nvidia ", "").replace(" ", "-") if hw.get("gpu") else f"cpu{hw.get('cores')}"


def write_results(bench: str, settings: dict, results: list[dict], out_dir=None) -> Path:
    """``<out_dir>/<host-kind>-<date>-<bench>.json`` (atomically); ``settings["quick"]`` is also the top-level flag.
    Without ``out_dir``: ``RESULTS_DIR``, or ``QUICK_RESULTS_DIR`` for a quick run."""
    from shards.base.atomic import atomic_write_text

    hw = hardware_info()
    quick = bool(settings.get("quick", False))
    out = Path(out_dir) if out_dir else QUICK_RESULTS_DIR if quick else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{host_kind(hw)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{bench}.json"
    doc = {"bench": bench, "quick": quick, "hardware": hw, "settings": settings}
    return atomic_write_text(path, json.dumps({**doc, "results": results}, indent=2, default=str) + "\n")


def print_table(rows: list[dict], columns: list[str]) -> None:
    columns = [c for c in columns if any(c in r for r in rows)]
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    for line in [columns, *([_fmt(r.get(c)) for c in columns] for r in rows)]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"
    return "-" if v is None else str(v)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _nvidia_driver() -> str | None:
    try:
        cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------------------
# The options and the command every benchmark shares
# ---------------------------------------------------------------------------------------------------
def command(name: str):
    """A benchmark command: ``--out-dir``, ``-h``, and a :class:`UserError` or :class:`MeasurementError` as one
    line (exit 1) instead of a traceback."""

    def decorate(fn):
        @functools.wraps(fn)
        def main(**kw):
            try:
                return fn(**kw)
            except (UserError, MeasurementError) as e:
                raise click.ClickException(str(e)) from None

        main = click.option("--out-dir", type=click.Path(file_okay=False), help="where the JSON goes")(main)
        return click.command(name, context_settings=CONTEXT)(main)

    return decorate


def shards_option(help: str = "DIR[:WEIGHT] (repeatable) or mix.yaml [the demo mixture real:10 generated:1]"):
    return click.option("--shards", multiple=True, metavar="DIR[:W]", help=help)


device_option = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
isolate_option = click.option(
    "--isolate/--no-isolate", default=True, show_default=True, help="each row in a fresh process (memory of its own)"
)
workers_option = click.option("--workers", type=click.IntRange(1), help="DALI threads / workers [the cores available]")
PRESET_HELP = "the recipe (default: train.py's for SimCLR on real + generated data, the release's AdaInf)"
preset_option = click.option("--preset", default="symmetric_adainf", show_default=True, help=PRESET_HELP)


def comma_list(text: str, cast=str, allowed=(), flag: str = "") -> list:
    """A comma-separated option's values (deduplicated, in order), each one of ``allowed`` when given."""
    try:
        items = list(dict.fromkeys(cast(v.strip()) for v in str(text).split(",") if v.strip()))
    except ValueError:
        items = []
    if not items or (allowed and set(items) - set(allowed)):
        choose = f" of {', '.join(map(str, allowed))}" if allowed else ""
        raise click.BadParameter(f"{text!r}: give a comma-separated list{choose}", param_hint=flag or None)
    return items


def workers_or_cores(workers: int | None) -> int:
    return workers or host.cores()


# ---------------------------------------------------------------------------------------------------
# The data, and the loader on the training path
# ---------------------------------------------------------------------------------------------------
def demo_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adainf-bench" / "demo"


def resolve_shards(shards, cache_dir=None) -> list[str]:
    """The ``--shards`` to use: the user's, or the demo mixture ``real:10 generated:1`` (``shards.packing.demo``, built
    once into ``cache_dir``, default ``~/.cache/adainf-bench/demo``)."""
    if shards:
        return list(shards)
    out = Path(cache_dir) if cache_dir else demo_cache_dir()
    if not all((out / part / "manifest.json").is_file() for part in ("real", "generated", "test")):
        from shards.packing.demo import make_demo

        out.mkdir(parents=True, exist_ok=True)
        make_demo(out, overwrite=True)
    return [f"{out / 'real'}:10", f"{out / 'generated'}:1"]


def time_loader(
    shards, aug: str, batch_size: int, *, timing: Timing, device="cpu", loader_device="auto", memory=True, **kw
) -> dict:
    """The real ``TrainLoader`` over ``shards`` timed on the training path, ``batches()`` (one pipeline across
    epochs), plus ``startup_s`` (construction to the first batch, compiling included), ``steps_per_epoch``,
    ``dali_operators``, ``colour_compiled`` and where it ran. ``compile``: the colour stage (None: the loader's
    default, compiled on CUDA); ``memory``: sample peak PSS (:class:`PssSampler`) during the run; ``kw``: more
    TrainLoader arguments (``num_threads``, ``seed``)."""
    from loaders.batch.loader import TrainLoader
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    t0, startup = time.perf_counter(), []
    kw.setdefault("num_threads", host.LOADER_THREADS)
    loader = TrainLoader(
        parse_shards_args(shards), preset(aug), batch_size, device=device, loader_device=loader_device, **kw
    )
    it = loader.batches()

    def run_one() -> int:
        n = len(next(it))
        startup[:] = startup or [time.perf_counter() - t0]
        return n

    row = timed(
        run_one, dataclasses.replace(timing, warmup=max(timing.warmup, 1)), sync=device_sync(device), memory=memory
    )
    it.close()
    return {
        **row,
        "startup_s": round(startup[0], 2),
        "steps_per_epoch": loader.steps_per_epoch,
        "num_threads": loader.num_threads,
        "loader_device": loader.loader_device,
        "dali_operators": loader.dali_operators,
        "colour_compiled": loader.colour.compiled,
    }


def read_images(directory, limit: int | None = None):
    """The first ``limit`` usable samples of a shard set through the project's reader: (reader, their sample
    indices, their stored bytes (raw sets: the pixels), their decoded uint8 (H, W, 3) images, their labels)."""
    import io

    import numpy as np
    from PIL import Image

    from shards.format.manifest import Manifest
    from shards.read.reader import SourceReader

    r = SourceReader(directory, Manifest.load(directory))
    ids = np.flatnonzero(r.verdict == 0)[:limit]
    data, labels, _ = r.read(ids)
    shape = r.raw_shape
    images = [d.reshape(shape) if shape else np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]
    return r, ids, data, images, labels
