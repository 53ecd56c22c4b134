"""Model ceiling: training steps/s of a method on tensors already on the device (no data loading).

    python -m bench.model --method simclr --batch-size 512            # GPU: bf16 autocast + channels_last
    python -m bench.model --quick                                      # CPU smoke run, under a minute

The step is the real one (``Method.training_step`` + backward + optimizer + ``on_train_step_end``), timed by
``bench.common.timed`` (warm-up steps, then ≥ 50 steps and ≥ 10 s, synchronised on the device). FLOPs per
step are counted once with ``torch.utils.flop_counter.FlopCounterMode``; MFU is achieved FLOP/s over the
device's measured dense matmul rate (bf16 on GPU, fp32 on CPU; ≥ 50 products and ≥ 2 s, before and after
the steps, the higher of the two) taken in the same run.
Memory: the peak PSS of this process during the run and, on a GPU, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import device_sync, out_dir_option, print_table, timed, timing_settings, write_results
from models import build_method, build_optimizer


def measure_matmul_flops(
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    n: int | None = None,
    min_products: int = 50,
    min_seconds: float = 2.0,
) -> float:
    """Measured dense matmul rate (FLOP/s) of an n×n×n product: bf16 on GPU, fp32 on CPU by default;
    the mean over at least ``min_products`` products and ``min_seconds`` after two warm-up ones."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def product() -> int:
        a @ b
        return 1

    row = timed(
        product,
        warmup=2,
        min_batches=min_products,
        min_seconds=min_seconds,
        sync=device_sync(str(device)),
        memory=False,
    )
    return 2 * n**3 * row["timed_batches"] / row["seconds"]


def measure_model_ceiling(
    method,
    batch_size: int,
    device: torch.device | str,
    *,
    warmup: int = 10,
    min_batches: int = 50,
    min_seconds: float = 10.0,
    max_batches: int | None = None,
    dtype: torch.dtype | None = None,
    image_size: int = 32,
    num_views: int = 2,
    peak_flops: float | None = None,
) -> dict:
    """Train ``method`` (moved to ``device``) on random views resident on the device, timed by
    ``bench.common.timed`` (``warmup`` untimed steps, then ≥ ``min_batches`` steps and ≥ ``min_seconds``);
    return samples/s, steps/s, FLOPs per step, MFU over the measured matmul rate and the timing counts.

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
    total = 10**6  # momentum schedules: a long run's early steps

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

    with FlopCounterMode(display=False) as counter:  # one step, before the warm-up
        train_step()
    flops_per_step = counter.get_total_flops()

    def run_one() -> int:
        train_step()
        return batch_size

    # the matmul rate just before and just after the steps, the higher of the two: on shared cores a
    # single calibration taken while someone else computes would make MFU look better than it is
    before = peak_flops if peak_flops is not None else measure_matmul_flops(device)
    row = timed(
        run_one,
        warmup=warmup,
        min_batches=min_batches,
        min_seconds=min_seconds,
        max_batches=max_batches,
        sync=device_sync(str(device)),
    )
    peak = peak_flops if peak_flops is not None else max(before, measure_matmul_flops(device))
    steps_per_s = row["timed_batches"] / row["seconds"]
    return {
        "backend": "model-ceiling",
        "method": method.name,
        "batch_size": batch_size,
        **row,
        "samples_per_s": batch_size * steps_per_s,
        "steps_per_s": steps_per_s,
        "flops_per_step": flops_per_step,
        "achieved_tflops": flops_per_step * steps_per_s / 1e12,
        "peak_tflops": peak / 1e12,
        "mfu": flops_per_step * steps_per_s / peak,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
    }


@click.command()
@click.option(
    "--method", "method_name", default="simclr", show_default=True, help="simclr | mocov2plus | byol | barlow"
)
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(2))
@click.option("--warmup", default=None, type=click.IntRange(0), help="untimed steps first [10; --quick 2]")
@click.option(
    "--min-steps", "min_batches", default=None, type=click.IntRange(1), help="timed steps at least [50; --quick 5]"
)
@click.option("--min-seconds", default=None, type=float, help="timed seconds at least [10; --quick 1]")
@click.option("--max-steps", "max_batches", default=None, type=click.IntRange(1), help="timed steps at most")
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(8))
@click.option("--device", default="auto", show_default=True, help="auto | cuda | cpu (auto: cuda when available)")
@click.option(
    "--quick", is_flag=True, help="small CPU-friendly run (batch 16, lower minimums; marked quick in the JSON)"
)
@out_dir_option
def main(
    method_name, backbone, batch_size, warmup, min_batches, min_seconds, max_batches, image_size, device, quick, out_dir
):
    """Training throughput of a method with no data loading (the model ceiling)."""
    from bench.common import pick_device

    device = torch.device(pick_device(device or "auto"))
    timing = timing_settings(quick, warmup, min_batches, min_seconds)
    if quick:
        batch_size = min(batch_size, 16)
    try:
        method = build_method(method_name, backbone=backbone)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--method/--backbone") from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    row = measure_model_ceiling(
        method,
        batch_size,
        device,
        warmup=timing["warmup"],
        min_batches=timing["min_batches"],
        min_seconds=timing["min_seconds"],
        max_batches=max_batches,
        image_size=image_size,
    )
    settings = {
        "method": method.name,
        "backbone": backbone,
        "batch_size": batch_size,
        **timing,
        "max_batches": max_batches,
        "image_size": image_size,
        "device": str(device),
        "precision": "bf16-autocast" if device.type == "cuda" else "fp32",
        "channels_last": device.type == "cuda",
        "method_config": dataclasses.asdict(method.cfg),
    }
    path = write_results("model", settings, [row], out_dir)
    print_table(
        [row],
        [
            "backend",
            "method",
            "batch_size",
            "samples_per_s",
            "steps_per_s",
            "achieved_tflops",
            "peak_tflops",
            "mfu",
            "peak_pss_mb",
            "timed_batches",
            "seconds",
        ],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
