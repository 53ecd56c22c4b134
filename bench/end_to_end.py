"""End to end: the training step fed by the loader against the model ceiling measured in the same process, the run
built by the engine exactly as train.py builds it (``Settings`` → ``setup_runtime`` → ``plan_data`` →
``DataPlan.train_loader`` → ``Trainer``), each step ``Trainer.step``, the loader's ``batches()``. What
``data_wait_fraction`` means on a GPU and on a CPU: bench/README.md ("End to end").
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, replace

import click

from bench import harness
from shards.base import host

VARIANT = {"off": "eager", "on": "compiled", "cudagraphs": "compiled+cudagraphs"}


@dataclass(frozen=True)
class EndToEndConfig:
    method: str = "simclr"
    backbone: str = "resnet18"
    batch_size: int = 512
    device: str = "cuda"
    precision: str = "auto"  # train.py's rule: bf16 autocast on a GPU, fp32 on the CPU
    channels_last: bool = True
    compile: str = "auto"  # train.py's --compile: on with a GPU, off on the CPU
    num_threads: int = host.LOADER_THREADS
    inflation: str = "adainf"
    aug: str = "auto"
    seed: int = 0
    loader_devices: tuple[str, ...] = ("auto",)  # one end-to-end row each


def build(shards: list[str], cfg: EndToEndConfig):
    """(trainer, a function making the loader for a loader device, what the run resolved to), as train.py builds
    a run (the release's 100k-step schedule: only its shape matters here)."""
    from models.training import (
        Trainer,
        aug_family,
        build_method_for,
        plan_data,
        seed_everything,
        setup_runtime,
    )
    from models.training.settings import Settings

    fields = {k: v for k, v in asdict(cfg).items() if k != "loader_devices"}
    settings = Settings(shards=tuple(shards), progress=False, **fields)
    runtime = setup_runtime(settings.device, settings.precision)
    data = plan_data(settings, runtime.world_size, aug_family(settings.method))

    def loader_for(loader_device: str):
        return data.train_loader(settings.replace(loader_device=loader_device), runtime)

    seed_everything(settings.seed)
    trainer = Trainer(
        settings, runtime, loader_for(cfg.loader_devices[0]), build_method_for(settings, data.num_classes)
    )
    trainer.method.train()
    resolved = {
        "device": runtime.device,
        "precision": runtime.precision,
        "channels_last": runtime.is_cuda and settings.channels_last,
    }
    resolved.update(epoch_size=data.epoch_size, steps_per_epoch=trainer.loader.steps_per_epoch, aug=data.aug.to_dict())
    resolved.update(
        weights=[x.weight for x in data.mixture.sources], sources=[str(x.path) for x in data.mixture.sources]
    )
    return trainer, loader_for, resolved


def timed_steps(trainer, batches, device: str, timing: harness.Timing) -> dict:
    """The rule over ``Trainer.step`` fed by ``batches``, with the data wait: on a GPU the device's idle share
    between steps (CUDA events around each step: 1 − Σ step time ÷ (last end − first start)); on a CPU the
    host's share of time blocked in ``next(batches)`` (``wall_wait_fraction``, reported on both)."""
    import torch

    cuda, calls, events, wait = device.startswith("cuda"), [0], [], [0.0]

    def event():
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def step() -> int:
        record = calls[0] >= timing.warmup
        calls[0] += 1
        t0 = time.perf_counter()
        batch = next(batches)
        wait[0] += time.perf_counter() - t0 if record else 0.0
        start = event() if record and cuda else None
        trainer.step(batch.views, batch.labels)
        if start is not None:
            events.append((start, event()))
        return int(batch.views[0].shape[0])

    row = harness.timed(step, timing, sync=harness.device_sync(device))
    wall = wait[0] / row["seconds"] if row["seconds"] > 0 else None
    busy = None
    if events:
        span = events[0][0].elapsed_time(events[-1][1])
        busy = min(sum(s.elapsed_time(e) for s, e in events) / span, 1.0) if span > 0 else None
    row["data_wait_fraction"] = round(1 - busy, 4) if busy is not None else round(wall, 4)
    row["wall_wait_fraction"] = round(wall, 4)
    return row


def resident(batch, device: str):
    """An endless iterator over one batch already on the device (the model ceiling's input)."""
    import torch

    fixed = type("Resident", (), {"views": [v.clone() for v in batch.views], "labels": batch.labels.clone().to(device)})
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    while True:
        yield fixed


def run(shards: list[str], cfg: EndToEndConfig, timing: harness.Timing) -> tuple[list[dict], dict]:
    """The model ceiling once, then one end-to-end row per loader device, in one process."""
    trainer, loader_for, resolved = build(shards, cfg)
    device = resolved["device"]
    common = {"method": cfg.method, "backbone": cfg.backbone, "batch_size": cfg.batch_size}
    common.update(precision=resolved["precision"], device=device, compile=trainer.compile)
    common["variant"] = VARIANT[trainer.compile]
    if trainer.compile != "off":  # compiling falls in the ceiling's warm-up (StepClock times the first steps)
        timing = replace(timing, warmup=max(timing.warmup, 4))
    batches = trainer.loader.batches()
    click.echo("  model ceiling: steps on resident tensors", err=True)
    ceiling = timed_steps(trainer, resident(next(batches), device), device, timing)
    batches.close()
    compiled = trainer.compile_report(final=True) or {}
    ceiling.update(compile_s=compiled.get("compile_s"), first_step_s=compiled.get("first_step_s"))
    rows = [{"backend": "model-ceiling", **common, **ceiling, "data_wait_fraction": None, "wall_wait_fraction": None}]
    for i, loader_device in enumerate(cfg.loader_devices):
        loader = trainer.loader if i == 0 else loader_for(loader_device)
        click.echo(f"  end to end, DALI pipeline on the {loader.loader_device}", err=True)
        row = timed_steps(trainer, loader.batches(), device, timing)
        row.update(loader=f"dali-{loader.loader_device}", loader_device=loader.loader_device)
        ratio = round(row["samples_per_s"] / ceiling["samples_per_s"], 4)
        rows.append(
            {"backend": "end-to-end", **common, **row, "num_threads": cfg.num_threads, "ratio_to_ceiling": ratio}
        )
        del loader
    return rows, resolved


@harness.command("end-to-end")
@harness.shards_option("the training mixture, as for train.py [the demo mixture real:10 generated:1]")
@click.option("--method", default="simclr", show_default=True)
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--batch-size", type=click.IntRange(2), help="[512 on a GPU; 32 on the CPU]")
@harness.timing_options(noun="steps")
@harness.device_option
@click.option("--loader-device", default="both", show_default=True, type=click.Choice([*host.LOADER_DEVICES, "both"]))
@click.option("--precision", default="auto", show_default=True, help="as train.py --precision")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--compile", "compile_", default="auto", type=click.Choice(["auto", "on", "off", "cudagraphs"]))
@click.option(
    "--num-threads", type=click.IntRange(1), default=host.LOADER_THREADS, show_default=True, help="DALI threads"
)
@click.option("--inflation", default="adainf", show_default=True, help="as train.py --inflation")
@click.option("--aug", default="auto", show_default=True, help="as train.py --aug")
@click.option("--seed", type=int, default=0, show_default=True)
def main(shards, batch_size, timing, device, loader_device, compile_, out_dir, **o):
    """The real train step fed by the loader: samples/s, ratio to the model ceiling, data-wait fraction.

    --loader-device both: a row for the GPU pipeline and one for the CPU pipeline feeding the GPU (on a CPU: cpu)."""
    device = host.resolve_device(device)
    gpu = device.startswith("cuda")
    both = ("gpu", "cpu") if gpu else ("cpu",)
    devices = both if loader_device == "both" else (loader_device,)
    cfg = EndToEndConfig(batch_size=batch_size or (512 if gpu else 32), device=device.split(":")[0], **o)
    cfg = replace(cfg, compile=compile_, loader_devices=devices)
    shards = harness.resolve_shards(shards)
    with contextlib.redirect_stdout(sys.stderr):  # the engine's log lines stay off the table
        rows, resolved = run(shards, cfg, timing)
    settings = {**asdict(cfg), "shards": shards, **timing.settings(), "resolved": resolved}
    columns = "backend loader_device device precision batch_size samples_per_s timed_batches data_wait_fraction"
    harness.finish("end-to-end", settings, rows, columns + " ratio_to_ceiling peak_pss_mb", out_dir)
