"""Model ceiling: training steps/s of a method on tensors already on the device (no data loading).

    python -m bench.model --method simclr --batch-size 512            # GPU: bf16 autocast + channels_last
    python -m bench.model --quick                                      # CPU smoke run, under a minute

The step is the real one (``Method.training_step`` + backward + optimizer + ``on_train_step_end``).  FLOPs
per step are counted once with ``torch.utils.flop_counter.FlopCounterMode``; MFU is achieved FLOP/s over
the device's measured dense matmul rate (bf16 on GPU, fp32 on CPU) taken in the same run.
``measure_model_ceiling`` is reused by the end-to-end benchmark.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import peak_rss_mb, print_table, write_results
from models import build_method, build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype | None = None, n: int | None = None,
                         repeats: int = 10) -> float:
    """Measured dense matmul rate (FLOP/s) of an n×n×n product: bf16 on GPU, fp32 on CPU by default."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    seconds = _time(lambda: a @ b, device, repeats)
    return 2 * n ** 3 / seconds


def _time(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds per call of ``fn`` (CUDA events on GPU, perf_counter on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def measure_model_ceiling(method, batch_size: int, device: torch.device | str, steps: int = 20, warmup: int = 5,
                          dtype: torch.dtype | None = None, image_size: int = 32, num_views: int = 2,
                          peak_flops: float | None = None) -> dict:
    """Train ``method`` (moved to ``device``) for ``warmup`` + ``steps`` steps on random views resident on
    the device; return samples/s, steps/s, FLOPs per step and MFU over the measured matmul rate.

    ``dtype``: autocast dtype (default bf16 on GPU, none on CPU).  Channels-last on GPU.
    """
    device = torch.device(device)
    if dtype is None and device.type == "cuda":
        dtype = torch.bfloat16
    channels_last = device.type == "cuda"
    method = method.to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    method.train()
    opt = build_optimizer(method, batch_size=batch_size)
    gen = torch.Generator(device="cpu").manual_seed(0)
    views = [torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device) for _ in range(num_views)]
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    labels = torch.randint(-1, method.num_classes, (batch_size,), generator=gen).to(device)
    total = warmup + steps + 1

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    state = {"step": 0}

    def train_step():
        with autocast():
            out = method.training_step(views, labels)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_train_step_end(state["step"], total)
        state["step"] += 1
        return out

    with FlopCounterMode(display=False) as counter:       # one step, also the first warm-up step
        train_step()
    flops_per_step = counter.get_total_flops()
    for _ in range(warmup):
        train_step()
    _sync(device)
    seconds = _time(train_step, device, steps)
    peak = peak_flops if peak_flops is not None else measure_matmul_flops(device)
    steps_per_s = 1.0 / seconds
    return {
        "backend": "model-ceiling",
        "method": method.name,
        "batch_size": batch_size,
        "samples_per_s": batch_size * steps_per_s,
        "steps_per_s": steps_per_s,
        "flops_per_step": flops_per_step,
        "achieved_tflops": flops_per_step * steps_per_s / 1e12,
        "peak_tflops": peak / 1e12,
        "mfu": flops_per_step * steps_per_s / peak,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None,
    }


@click.command()
@click.option("--method", "method_name", default="simclr", show_default=True,
              help="simclr | mocov2plus | byol | barlow")
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(2))
@click.option("--steps", default=30, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0))
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(8))
@click.option("--device", default="auto", show_default=True, help="auto | cuda | cpu (auto: cuda when available)")
@click.option("--quick", is_flag=True, help="tiny CPU-friendly run (batch 16, 3 steps, 1 warm-up)")
@click.option("--out-dir", default=None, type=click.Path(file_okay=False), help="default bench/results")
def main(method_name, backbone, batch_size, steps, warmup, image_size, device, quick, out_dir):
    """Training throughput of a method with no data loading (the model ceiling)."""
    from bench.common import pick_device

    device = torch.device(pick_device(device or "auto"))
    if quick:
        batch_size, steps, warmup = min(batch_size, 16), min(steps, 3), min(warmup, 1)
    try:
        method = build_method(method_name, backbone=backbone)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--method/--backbone") from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    row = measure_model_ceiling(method, batch_size, device, steps=steps, warmup=warmup, image_size=image_size)
    settings = {"method": method.name, "backbone": backbone, "batch_size": batch_size, "steps": steps,
                "warmup": warmup, "image_size": image_size, "device": str(device), "quick": quick,
                "precision": "bf16-autocast" if device.type == "cuda" else "fp32",
                "channels_last": device.type == "cuda", "method_config": dataclasses.asdict(method.cfg)}
    path = write_results("model", settings, [row], out_dir)
    print_table([row], ["backend", "method", "batch_size", "samples_per_s", "steps_per_s", "achieved_tflops",
                        "peak_tflops", "mfu", "peak_rss_mb"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
