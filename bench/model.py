"""Model ceiling: the training engine's step (``Trainer.step``) on random views already on the device, no data
loading, eager and compiled side by side (one row per method and ``--compile`` mode), with FLOPs, MFU over the
matmul rate measured in the same run, compile time, cache hits and peak memory (bench/README.md, "Model ceiling").
"""

from __future__ import annotations

import dataclasses
import gc

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import harness
from models import build_method
from shards.base.errors import ConfigError
from shards.base.host import resolve_device

VARIANT = {"off": "eager", "on": "compiled", "cudagraphs": "compiled+cudagraphs"}
_PRECISION = {None: "auto", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def measure_matmul_flops(device, dtype=None, n: int | None = None, min_products: int = 50, min_seconds=2.0) -> float:
    """Measured dense matmul rate (FLOP/s) of n×n×n products, bf16 on a GPU and fp32 on the CPU by default:
    the mean over at least ``min_products`` products and ``min_seconds`` after two warm-up ones."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    timing = harness.Timing(2, min_products, min_seconds)
    # one product a call
    row = harness.timed(lambda: [a @ b] and 1, timing, sync=harness.device_sync(device), memory=False)
    return 2 * n**3 * row["timed_batches"] / row["seconds"]


class _ResidentData:
    """What ``Trainer`` asks of a loader when nothing is loaded: the epoch length, for the schedule's shape."""

    steps_per_epoch = 1


def build_trainer(method, batch_size: int, device, compile: str = "off", dtype=None):
    """``Trainer`` around ``method`` as train.py builds it: runtime, precision (``dtype`` None: bf16 autocast on a
    GPU, fp32 on the CPU), channels_last, optimizer, the release's 100k-step schedule and ``--compile``."""
    from models.training import Trainer, setup_runtime
    from models.training.settings import DEFAULT_STEPS, Settings

    device = torch.device(device)
    settings = Settings(method=method.name, backbone=method.cfg.backbone, batch_size=batch_size, device=device.type)
    settings = settings.replace(precision=_PRECISION[dtype], compile=compile, steps=DEFAULT_STEPS, progress=False)
    trainer = Trainer(settings, setup_runtime(settings.device, settings.precision), _ResidentData(), method)
    trainer.method.train()
    return trainer


def measure_model_ceiling(
    method,
    batch_size: int,
    device,
    *,
    compile="off",
    timing=None,
    dtype=None,
    image_size=32,
    num_views=2,
    peak_flops=None,
    flops_per_step=None,
) -> dict:
    """One row: ``method`` trained by ``Trainer.step`` (``--compile`` = ``compile``) on resident random views, timed
    by the rule with at least 4 warm-up steps (compiling falls there). ``flops_per_step``: counted here on an eager
    step unless given; ``peak_flops``: measured before and after the steps unless given (the higher)."""
    device = torch.device(device)
    timing = dataclasses.replace(timing or harness.Timing(), warmup=max((timing or harness.Timing()).warmup, 4))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = build_trainer(method, batch_size, device, compile, dtype)
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device) for _ in range(num_views)]
    if trainer.runtime.is_cuda and trainer.settings.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    labels = torch.randint(-1, trainer.method.num_classes, (batch_size,), generator=gen).to(device)
    if flops_per_step is None:  # one eager forward + backward: what the compiled step computes too
        with trainer.autocast, FlopCounterMode(display=False) as counter:
            trainer.method.training_step(views, labels)["loss"].backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        flops_per_step = counter.get_total_flops()
    before = peak_flops or measure_matmul_flops(device)

    def step() -> int:
        trainer.step(views, labels)
        return batch_size

    row = harness.timed(step, timing, sync=harness.device_sync(device))
    peak = peak_flops or max(before, measure_matmul_flops(device))
    steps_per_s = row["timed_batches"] / row["seconds"]
    compiled = trainer.compile_report(final=True) or {}
    return {
        "backend": "model-ceiling",
        "method": trainer.method.name,
        "batch_size": batch_size,
        "variant": VARIANT[trainer.compile],
        "compile": trainer.compile,
        "precision": trainer.runtime.precision,
        **row,
        "samples_per_s": batch_size * steps_per_s,
        "steps_per_s": steps_per_s,
        "flops_per_step": flops_per_step,
        "achieved_tflops": flops_per_step * steps_per_s / 1e12,
        "peak_tflops": peak / 1e12,
        "mfu": flops_per_step * steps_per_s / peak,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "compile_s": compiled.get("compile_s"),
        "first_step_s": compiled.get("first_step_s"),
        **{k: v for k, v in compiled.items() if k.endswith(("_hits", "_misses"))},
    }


def compile_modes(value: str, cuda: bool) -> list[str]:
    """``--compile``: a comma list of off / on / cudagraphs; auto = off,on (and cudagraphs on a GPU)."""
    if value == "auto":
        return ["off", "on", "cudagraphs"] if cuda else ["off", "on"]
    modes = harness.comma_list(value, str, tuple(VARIANT), "--compile")
    if "cudagraphs" in modes and not cuda:
        raise click.BadParameter("cudagraphs needs a GPU; on the CPU use off,on", param_hint="--compile")
    return modes


@harness.command("model")
@click.option("--methods", "--method", default="simclr,byol", show_default=True, help="comma list of methods")
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(2), help="[--quick: at most 16]")
@click.option("--compile", "compile_", default="auto", show_default=True, help="comma list of off, on, cudagraphs")
@harness.timing_options(noun="steps", floor=4)
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(8))
@harness.device_option
@click.option("--torch-threads", type=click.IntRange(1), help="torch intra-op threads on the CPU [torch's default]")
@click.option("--threads", "old_threads", type=click.IntRange(1), hidden=True)  # the old spelling, still accepted
def main(methods, backbone, batch_size, compile_, timing, image_size, device, torch_threads, old_threads, out_dir):
    """Training throughput with no data loading (the model ceiling), eager and compiled."""
    from models.training.compiling import cache_dir

    if old_threads or torch_threads:
        torch.set_num_threads(old_threads or torch_threads)
    device = torch.device(resolve_device(device))
    batch_size = min(batch_size, 16) if timing.small else batch_size
    modes, names = compile_modes(compile_, device.type == "cuda"), harness.comma_list(methods, flag="--methods")
    try:
        configs = {n: dataclasses.asdict(build_method(n, backbone=backbone).cfg) for n in names}  # every name checked
    except ValueError as e:
        raise ConfigError(f"--methods/--backbone: {e}") from None
    peak, rows = measure_matmul_flops(device), []
    for name in names:
        flops = eager = None
        for mode in modes:
            click.echo(f"  {name} --compile {mode} ...", err=True)
            if mode != "off":
                torch._dynamo.reset()  # compiled afresh (only the on-disk cache may serve it)
            torch.manual_seed(0)
            method = build_method(name, backbone=backbone)
            kw = dict(compile=mode, timing=timing, image_size=image_size, peak_flops=peak, flops_per_step=flops)
            row = measure_model_ceiling(method, batch_size, device, **kw)
            del method
            gc.collect()  # what the last row's trainer left behind
            if device.type == "cuda":
                torch.cuda.empty_cache()
            flops, eager = row["flops_per_step"], row if mode == "off" else eager
            row["speedup"] = round(row["samples_per_s"] / eager["samples_per_s"], 3) if eager else None
            rows.append(row)
    after = measure_matmul_flops(device)
    for row in rows if after > peak else ():  # the higher calibration of the two
        row.update(peak_tflops=after / 1e12, mfu=row["achieved_tflops"] * 1e12 / after)
    settings = {"methods": names, "backbone": backbone, "batch_size": batch_size, "compile": modes}
    settings.update(timing.settings(), image_size=image_size, device=str(device), precision=rows[0]["precision"])
    settings.update(torch_threads=torch.get_num_threads(), channels_last=device.type == "cuda")
    settings.update(inductor_cache_dir=cache_dir(), method_configs=configs)
    columns = (
        "method variant batch_size samples_per_s speedup mfu compile_s peak_gpu_mb peak_pss_mb timed_batches seconds"
    )
    harness.finish("model", settings, rows, columns, out_dir)
