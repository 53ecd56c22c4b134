"""Model ceiling: training steps/s of a method on tensors already on the device (no data loading), eager and
compiled side by side.

    python -m bench model                                   # SimCLR and BYOL, eager / compiled (/ CUDA graphs on a GPU)
    python -m bench model --methods simclr --compile off,on --batch-size 512
    python -m bench model --quick                           # CPU smoke run

The step is the training engine's (``models.engine.Trainer.step``, as train.py runs it: autocast forward,
``zero_grad``, scaled backward, optimizer, schedule, ``on_train_step_end``; ``setup_runtime``'s TF32 and
cuDNN settings, channels_last on a GPU) with ``--compile off``, ``on`` or ``cudagraphs``
(``models/engine/compiling.py``), one row each, every method built afresh from the same seed. Each row is
timed by ``bench.common.timed`` (warm-up steps, at least 4, which absorb compiling; then ≥ 50 steps and
≥ 10 s, synchronised on the device). ``compile_s`` is the trainer's own figure (``StepClock``: how much
longer the first 3 steps took than a compiled one), with the inductor cache's hits and misses for that row
(``torch._dynamo.reset()`` before each compiled row, so the in-process cache does not hide a compile).
FLOPs per step are counted once per method on an eager step with ``torch.utils.flop_counter.FlopCounterMode``;
MFU is achieved FLOP/s over the device's measured dense matmul rate (bf16 on GPU, fp32 on CPU; ≥ 50
products and ≥ 2 s, before and after all rows, the higher of the two). ``speedup`` = samples/s over the
eager row of the same method. Memory: the peak PSS of this process during the row and, on a GPU,
``torch.cuda.max_memory_allocated`` (reset per row).
"""

from __future__ import annotations

import dataclasses
import gc

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import device_sync, out_dir_option, print_table, timed, timing_settings, write_results
from models import build_method

VARIANT = {"off": "eager", "on": "compiled", "cudagraphs": "compiled+cudagraphs"}


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


class _ResidentData:
    """What ``Trainer`` asks of a loader when nothing is loaded: the epoch length, for the schedule's shape."""

    steps_per_epoch = 1


_PRECISION = {None: "auto", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def build_trainer(method, batch_size: int, device: torch.device | str, compile: str = "off", dtype=None):
    """The training engine's ``Trainer`` around ``method`` for the ceiling: ``train.py``'s runtime, precision
    (``dtype``: None = bf16 autocast on a GPU, fp32 on the CPU), channels_last, optimizer, schedule and
    ``--compile`` (the release's 100k steps: only the schedule's shape matters here)."""
    from models.engine import Settings, Trainer, setup_runtime

    device = torch.device(device)
    s = Settings(
        method=method.name,
        backbone=method.cfg.backbone,
        batch_size=batch_size,
        device=device.type,
        precision=_PRECISION[dtype],
        compile=compile,
        steps=100_000,
        progress=False,
    )
    rt = setup_runtime(s.device, s.precision)
    trainer = Trainer(s, rt, _ResidentData(), method)
    trainer.method.train()
    return trainer


def measure_model_ceiling(
    method,
    batch_size: int,
    device: torch.device | str,
    *,
    compile: str = "off",
    warmup: int = 10,
    min_batches: int = 50,
    min_seconds: float = 10.0,
    max_batches: int | None = None,
    dtype: torch.dtype | None = None,
    image_size: int = 32,
    num_views: int = 2,
    peak_flops: float | None = None,
    flops_per_step: float | None = None,
) -> dict:
    """Train ``method`` with ``Trainer.step`` (``--compile`` = ``compile``) on random views resident on the
    device, timed by ``bench.common.timed`` (``max(warmup, 4)`` untimed steps, then ≥ ``min_batches`` steps
    and ≥ ``min_seconds``); return samples/s, steps/s, FLOPs per step, MFU over the measured matmul rate, the
    compile figures and the timing counts. ``flops_per_step``: counted here on an eager step unless given."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = build_trainer(method, batch_size, device, compile, dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    views = [torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device) for _ in range(num_views)]
    if trainer.rt.is_cuda and trainer.s.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    labels = torch.randint(-1, trainer.method.num_classes, (batch_size,), generator=gen).to(device)

    if flops_per_step is None:  # one eager forward + backward of the method (what the compiled step computes)
        with trainer.autocast, FlopCounterMode(display=False) as counter:
            trainer.method.training_step(views, labels)["loss"].backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        flops_per_step = counter.get_total_flops()

    def run_one() -> int:
        trainer.step(views, labels)
        return batch_size

    # the matmul rate just before and just after the steps, the higher of the two: on shared cores a
    # single calibration taken while someone else computes would make MFU look better than it is
    before = peak_flops if peak_flops is not None else measure_matmul_flops(device)
    row = timed(
        run_one,
        warmup=max(warmup, 4),
        min_batches=min_batches,
        min_seconds=min_seconds,
        max_batches=max_batches,
        sync=device_sync(str(device)),
    )
    peak = peak_flops if peak_flops is not None else max(before, measure_matmul_flops(device))
    steps_per_s = row["timed_batches"] / row["seconds"]
    compiled = trainer.compile_report(final=True) or {}
    result = {
        "backend": "model-ceiling",
        "method": trainer.method.name,
        "batch_size": batch_size,
        "variant": VARIANT[trainer.compile],
        "compile": trainer.compile,
        "precision": trainer.rt.precision,
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
    return result


def free_device_memory(device: torch.device) -> None:
    """Between rows: what the last row's trainer left behind, collected (and the CUDA cache emptied)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_modes(value: str, cuda: bool) -> tuple[str, ...]:
    """``--compile``: a comma list of off / on / cudagraphs; auto = off,on (and cudagraphs on a GPU)."""
    if value == "auto":
        return ("off", "on", "cudagraphs") if cuda else ("off", "on")
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    bad = [m for m in modes if m not in VARIANT]
    if bad or not modes:
        raise click.BadParameter(
            f"{value!r}: give a comma list of off, on, cudagraphs (or auto)", param_hint="--compile"
        )
    if "cudagraphs" in modes and not cuda:
        raise click.BadParameter("cudagraphs needs a GPU; on the CPU use off,on", param_hint="--compile")
    return modes


@click.command()
@click.option(
    "--methods",
    "--method",
    "methods",
    default="simclr,byol",
    show_default=True,
    help="Comma list of methods (simclr, mocov2plus, byol, barlow).",
)
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(2))
@click.option(
    "--compile",
    "compile_",
    default="auto",
    show_default=True,
    help="Comma list of --compile modes, one row each: off, on, cudagraphs (auto: off,on and, on a GPU, cudagraphs).",
)
@click.option("--warmup", default=None, type=click.IntRange(0), help="untimed steps first, at least 4 [10; --quick 4]")
@click.option(
    "--min-steps", "min_batches", default=None, type=click.IntRange(1), help="timed steps at least [50; --quick 5]"
)
@click.option("--min-seconds", default=None, type=float, help="timed seconds at least [10; --quick 1]")
@click.option("--max-steps", "max_batches", default=None, type=click.IntRange(1), help="timed steps at most")
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(8))
@click.option("--device", default="auto", show_default=True, help="auto | cuda | cpu (auto: cuda when available)")
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(1),
    help="torch.set_num_threads for the CPU's intra-op (OpenMP) threads [torch's default: every core].",
)
@click.option(
    "--quick", is_flag=True, help="small CPU-friendly run (batch 16, lower minimums; marked quick in the JSON)"
)
@out_dir_option
def main(
    methods,
    backbone,
    batch_size,
    compile_,
    warmup,
    min_batches,
    min_seconds,
    max_batches,
    image_size,
    device,
    threads,
    quick,
    out_dir,
):
    """Training throughput of methods with no data loading (the model ceiling), eager and compiled."""
    from bench.common import pick_device
    from models.engine.compiling import cache_dir

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(pick_device(device or "auto"))
    timing = timing_settings(quick, warmup, min_batches, min_seconds)
    timing["warmup"] = max(timing["warmup"], 4)
    if quick:
        batch_size = min(batch_size, 16)
    modes = compile_modes(compile_, device.type == "cuda")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        built = {name: build_method(name, backbone=backbone) for name in names}  # every name checked first
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--methods/--backbone") from None
    configs = {m.name: dataclasses.asdict(m.cfg) for m in built.values()}
    del built
    peak = measure_matmul_flops(device)
    rows = []
    for name in names:
        flops = None
        eager = None
        for mode in modes:
            click.echo(f"  {name} --compile {mode} ...", err=True)
            if mode != "off":
                torch._dynamo.reset()  # compile this row afresh (the on-disk cache may still serve it)
            torch.manual_seed(0)
            row = measure_model_ceiling(
                build_method(name, backbone=backbone),
                batch_size,
                device,
                compile=mode,
                warmup=timing["warmup"],
                min_batches=timing["min_batches"],
                min_seconds=timing["min_seconds"],
                max_batches=max_batches,
                image_size=image_size,
                peak_flops=peak,
                flops_per_step=flops,
            )
            free_device_memory(device)
            flops = row["flops_per_step"]
            eager = row if mode == "off" else eager
            row["speedup"] = round(row["samples_per_s"] / eager["samples_per_s"], 3) if eager else None
            rows.append(row)
    after = measure_matmul_flops(device)
    if after > peak:  # the higher calibration of the two (before and after every row)
        for row in rows:
            row["peak_tflops"] = after / 1e12
            row["mfu"] = row["achieved_tflops"] * 1e12 / after
    settings = {
        "methods": names,
        "backbone": backbone,
        "batch_size": batch_size,
        "compile": list(modes),
        **timing,
        "max_batches": max_batches,
        "image_size": image_size,
        "device": str(device),
        "precision": rows[0]["precision"],
        "torch_threads": torch.get_num_threads(),
        "channels_last": device.type == "cuda",
        "inductor_cache_dir": cache_dir(),
        "method_configs": configs,
    }
    path = write_results("model", settings, rows, out_dir)
    print_table(
        rows,
        [
            "method",
            "variant",
            "batch_size",
            "samples_per_s",
            "speedup",
            "mfu",
            "compile_s",
            "peak_gpu_mb",
            "peak_pss_mb",
            "timed_batches",
            "seconds",
        ],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
