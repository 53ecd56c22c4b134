"""``--compile auto|on|off|cudagraphs``: what is compiled, how the compile time is measured, where the cache lives.

``auto`` is ``on`` on a GPU and ``off`` on the CPU (where compiling costs tens of seconds and gains little:
``bench/README.md``). ``on`` compiles, in nanoGPT's order — after the method is built and moved, before any
DDP wrap, the unwrapped method staying the reference for checkpoints (no ``_orig_mod.`` keys):

* the method's forward and loss: ``torch.compile(method)``; ``forward`` is ``training_step``, so the
  backbone, heads, loss and online probe are one graph and AOTAutograd compiles their backward (MoCo v2+
  enqueues its keys after the step for this: ``models/methods/mocov2plus.py``);
* the optimizer: LARS's multi-tensor update through ``torch.compile`` (``LARS.compile``); SGD (MoCo v2+) is
  PyTorch's fused kernel on a GPU and its multi-tensor (``foreach``) one on the CPU (``build_optimizer``),
  compiled or not;
* the momentum encoders' EMA (BYOL, MoCo v2+): one ``torch._foreach_lerp_`` over every target parameter,
  eager in every mode (a single multi-tensor operation already).

``cudagraphs`` is ``on`` with inductor's ``reduce-overhead`` mode (CUDA graph trees) for the method and the
LARS update, one GPU only: with DDP the gradients are all-reduced by DDP's autograd hooks outside the
compiled graphs, a combination this project has not measured, so it is refused rather than tried silently.

Compile time is paid in the first steps: ``StepClock`` times them (synchronised) and reports how much longer
they took than a steady step. Inductor's FX-graph and AOTAutograd caches (on by default in PyTorch) keep the
compiled graphs on disk in ``cache_dir()`` — ``$TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_$USER`` — so a second run of the same model and settings loads them instead of
compiling (``cache_stats`` counts the hits; ``tests/test_models_optim.py`` checks that a second process only loads).
Both compiled pieces use static shapes (``dynamic=False``), so a cache entry depends only on the model, the
batch and the settings (on the CPU also the intra-op thread count), not on what compiled before.
"""

from __future__ import annotations

import time

import torch

from shards.base.errors import ConfigError

COMPILE_CHOICES = ("auto", "on", "off", "cudagraphs")


def resolve_compile(mode: str | bool, *, cuda: bool, distributed: bool = False) -> str:
    """``off``, ``on`` or ``cudagraphs`` for the ``--compile`` setting (a saved ``True`` / ``False`` reads as
    ``on`` / ``off``); a combination that cannot work is a one-line ConfigError."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in COMPILE_CHOICES:
        raise ConfigError(f"--compile {mode!r}: expected one of {', '.join(COMPILE_CHOICES)}")
    if mode == "auto":
        return "on" if cuda else "off"
    if mode == "cudagraphs" and not cuda:
        raise ConfigError("--compile cudagraphs needs a GPU (CUDA graphs); on the CPU use --compile on or off")
    if mode == "cudagraphs" and distributed:
        raise ConfigError(
            "--compile cudagraphs: CUDA graphs are not used with DDP here (its gradient all-reduce runs outside "
            "the compiled graphs; not measured); use --compile on"
        )
    return mode


def inductor_mode(mode: str) -> str | None:
    """``torch.compile``'s ``mode`` for a resolved setting: None (inductor's default) or ``reduce-overhead``."""
    return "reduce-overhead" if mode == "cudagraphs" else None


def compile_method(method: torch.nn.Module, mode: str):
    """The callable a step runs: ``method`` itself (``off``) or its ``torch.compile`` wrapper.

    Static shapes (``dynamic=False``): a training step's shapes are fixed, and without dynamo's automatic
    dynamic shapes (whose decisions it also keeps in the cache directory) the graph, and so its cache entry,
    depends only on the model and batch, not on what ran before in this process or in an earlier one."""
    if mode == "off":
        return method
    return torch.compile(method, mode=inductor_mode(mode), dynamic=False)


def compile_optimizer(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Compile the optimizer's update where it has one to compile (LARS, static shapes as above); SGD keeps its
    fused / foreach kernels."""
    if mode != "off" and hasattr(optimizer, "compile"):
        optimizer.compile(mode=inductor_mode(mode), dynamic=False)


def cache_dir() -> str:
    """Where inductor keeps its on-disk caches ($TORCHINDUCTOR_CACHE_DIR, else /tmp/torchinductor_$USER)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as _cache_dir

    return _cache_dir()


def cache_stats() -> dict:
    """This process's inductor FX-graph and AOTAutograd cache hits and misses so far."""
    from torch._dynamo.utils import counters

    return {
        "fx_graph_cache_hits": int(counters["inductor"]["fxgraph_cache_hit"]),
        "fx_graph_cache_misses": int(counters["inductor"]["fxgraph_cache_miss"]),
        "aot_autograd_cache_hits": int(counters["aot_autograd"]["autograd_cache_hit"]),
        "aot_autograd_cache_misses": int(counters["aot_autograd"]["autograd_cache_miss"]),
    }


class StepClock:
    """Wall time of the first ``n`` steps, each synchronised on the device, to show what compiling cost.

    ``compile_s`` = how much longer the first ``n - 1`` steps took than ``n - 1`` steps at the pace of step
    ``n`` (the first steps trace, compile or load the graphs and, with CUDA graphs, warm up and record them).
    """

    def __init__(self, sync=None, n: int = 4):
        self.sync = sync or (lambda: None)
        self.n = n
        self.times: list[float] = []
        self.stats0 = cache_stats()
        self._t0 = 0.0

    @property
    def timing(self) -> bool:
        return len(self.times) < self.n

    def start(self) -> None:
        if self.timing:
            self.sync()
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.timing:
            self.sync()
            self.times.append(time.perf_counter() - self._t0)

    @property
    def done(self) -> bool:
        return len(self.times) >= self.n

    def report(self) -> dict:
        """The figures so far: ``compile_s`` (None before ``n`` steps: then ``first_steps_s`` is all there is),
        the first step's time, the steady step's, and the cache hits and misses since the clock started."""
        steady = self.times[self.n - 1] if self.done else None
        first = self.times[: self.n - 1] if self.done else self.times
        now = cache_stats()
        return {
            "compile_s": round(max(sum(first) - len(first) * steady, 0.0), 3) if steady is not None else None,
            "first_step_s": round(self.times[0], 3) if self.times else None,
            "first_steps_s": round(sum(first), 3),
            "steps_timed": len(self.times),
            "steady_step_s": round(steady, 6) if steady is not None else None,
            "cache_dir": cache_dir(),
            **{k: now[k] - self.stats0[k] for k in now},
        }


def describe(mode: str, report: dict) -> str:
    """One log line for a ``StepClock.report``."""
    cache = (
        f"inductor cache {report['cache_dir']}: {report['fx_graph_cache_hits']} graph(s) loaded, "
        f"{report['fx_graph_cache_misses']} compiled"
    )
    if report["compile_s"] is None:
        return (
            f"--compile {mode}: the first {report['steps_timed']} step(s), compiling included, took "
            f"{report['first_steps_s']:.1f} s; {cache}"
        )
    return (
        f"--compile {mode}: compiling took {report['compile_s']:.1f} s (what the first {report['steps_timed'] - 1} "
        f"steps took beyond {report['steady_step_s'] * 1e3:.1f} ms each, a compiled step's time); {cache}"
    )
