"""End to end: the real training step fed by the real loader, against the model ceiling of the same run.

    python -m bench.end_to_end --quick                          # demo mixture, CPU or GPU
    python -m bench.end_to_end --shards data/cifar10-train:10 --shards data/edm:1 --batch-size 512 --device cuda

The run is built by the training engine that ``train.py`` uses (``models.engine``: ``Settings`` →
``setup_runtime`` → ``plan_data`` → ``DataPlan.train_loader`` → ``Trainer``), and each step is
``Trainer.step``: autocast forward, ``zero_grad``, (scaled) backward, optimizer and scheduler step,
``on_train_step_end``.

Measurements in one process, same model, optimizer, batch size and step code, each timed by
``bench.common.timed`` (warm-up, then at least 50 steps and 10 s; the counts are in every row):

* ``model-ceiling`` — the step on one batch of views already on the device (cloned from the loader's
  first batch), repeated: the most the GPU can do with this model. With ``--compile`` (``auto``: on with a
  GPU, as train.py) the ceiling is the compiled step's and the fed step is the same compiled step, so
  ``ratio_to_ceiling`` compares compiled with compiled; its warm-up (at least 4 steps) absorbs compiling,
  reported as ``compile_s``.
* ``end-to-end`` — the step fed by the loader, one row per ``--loader-device``: on a GPU machine by default
  both the GPU pipeline (``mixed`` decoder, GPU ops) and the CPU pipeline (``--num-threads`` threads, batches
  copied to the GPU), so the first GPU run shows which is faster and whether the CPU path alone keeps up.

``data_wait_fraction`` is the share of the timed interval in which the device waited for data: on the
GPU, from CUDA events recorded around each step (idle gaps between one step's end and the next step's
start on the device timeline, divided by the interval from the first start to the last end); on the CPU,
from wall-clock time spent in ``next(loader)``. ``wall_wait_fraction`` (host time blocked on the loader)
is reported on both. ``ratio_to_ceiling`` = end-to-end samples/s ÷ model-ceiling samples/s.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass

import click

from bench.common import (
    device_sync,
    out_dir_option,
    pick_device,
    print_table,
    resolve_shards,
    timed,
    timing_kwargs,
    timing_settings,
    write_results,
)


@dataclass(frozen=True)
class EndToEndConfig:
    method: str = "simclr"
    backbone: str = "resnet18"
    batch_size: int = 512
    device: str = "cuda"
    precision: str = "auto"  # train.py's rule: bf16 autocast on GPU, fp32 on CPU
    channels_last: bool = True
    compile: str = "auto"  # train.py's --compile: on with a GPU, off on the CPU
    num_threads: int = 2
    inflation: str = "adainf"
    aug: str = "auto"
    seed: int = 0
    loader_devices: tuple[str, ...] = ("auto",)  # one end-to-end row each


def build(shards: list[str], cfg: EndToEndConfig):
    """(trainer, a function making the loader for a loader device, resolved) from the training engine, exactly
    as train.py builds a run (the schedule is the release's 100k steps: only its shape matters here)."""
    from models.engine import Settings, Trainer, aug_family, build_method_for, plan_data, seed_everything, setup_runtime

    s = Settings(
        shards=tuple(shards),
        method=cfg.method,
        backbone=cfg.backbone,
        batch_size=cfg.batch_size,
        device=cfg.device,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        num_threads=cfg.num_threads,
        inflation=cfg.inflation,
        aug=cfg.aug,
        seed=cfg.seed,
        progress=False,
    )
    rt = setup_runtime(s.device, s.precision)
    data = plan_data(s, rt.world_size, aug_family(s.method))

    def loader_for(loader_device: str):
        return data.train_loader(s.replace(loader_device=loader_device), rt)

    seed_everything(s.seed)
    trainer = Trainer(s, rt, loader_for(cfg.loader_devices[0]), build_method_for(s, data.num_classes))
    trainer.method.train()
    resolved = {
        "device": rt.device,
        "precision": rt.precision,
        "channels_last": rt.is_cuda and s.channels_last,
        "epoch_size": data.epoch_size,
        "steps_per_epoch": trainer.loader.steps_per_epoch,
        "weights": [src.weight for src in data.mixture.sources],
        "sources": [str(src.path) for src in data.mixture.sources],
        "aug": data.aug.to_dict(),
    }
    return trainer, loader_for, resolved


class StepTimer:
    """Per-step waiting on the host (wall clock) and busy time on the device timeline (CUDA events)."""

    def __init__(self, device: str, skip: int):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch
        self.skip = skip  # the warm-up calls: not recorded
        self.calls = 0
        self.events: list[tuple] = []
        self.wait_s = 0.0

    def step(self, trainer, batches) -> int:
        """Take the next batch and train on it; returns its sample count."""
        record = self.calls >= self.skip
        self.calls += 1
        t0 = time.perf_counter()
        batch = next(batches)
        if record:
            self.wait_s += time.perf_counter() - t0
        start = self._event() if record else None
        trainer.step(batch.views, batch.labels)
        if record and self.cuda:
            self.events.append((start, self._event()))
        return int(batch.views[0].shape[0])

    def _event(self):
        if not self.cuda:
            return None
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def device_busy_fraction(self) -> float | None:
        """Σ step time ÷ (last end − first start) on the device timeline (call after synchronising)."""
        if not self.events:
            return None
        busy = sum(s.elapsed_time(e) for s, e in self.events)
        span = self.events[0][0].elapsed_time(self.events[-1][1])
        return min(busy / span, 1.0) if span > 0 else None


def timed_steps(trainer, batches, device: str, timing: dict) -> dict:
    """``bench.common.timed`` over training steps fed by ``batches``, plus the data-wait fractions:
    ``data_wait_fraction`` is the device's idle share between steps on a GPU (CUDA events), the host's share
    of time blocked on ``next(batches)`` on a CPU; ``wall_wait_fraction`` is the latter on both."""
    timer = StepTimer(device, skip=timing["warmup"])
    row = timed(lambda: timer.step(trainer, batches), sync=device_sync(device), **timing_kwargs(timing))
    busy = timer.device_busy_fraction()
    wall = timer.wait_s / row["seconds"] if row["seconds"] > 0 else None
    row["data_wait_fraction"] = round(1 - busy, 4) if busy is not None else round(wall, 4)
    row["wall_wait_fraction"] = round(wall, 4)
    return row


def resident(batch, device: str):
    """An endless iterator over one batch already on the device (the model ceiling's input)."""
    import torch

    views = [v.clone() for v in batch.views]
    fixed = type("Resident", (), {"views": views, "labels": batch.labels.clone().to(device)})
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    while True:
        yield fixed


def run(shards: list[str], cfg: EndToEndConfig, timing: dict) -> tuple[list[dict], dict]:
    """The model ceiling once, then one end-to-end measurement per loader device, in one process."""
    trainer, loader_for, resolved = build(shards, cfg)
    device = resolved["device"]
    common = {
        "method": cfg.method,
        "backbone": cfg.backbone,
        "batch_size": cfg.batch_size,
        "precision": resolved["precision"],
        "device": device,
        "compile": trainer.compile,
        "variant": {"off": "eager", "on": "compiled", "cudagraphs": "compiled+cudagraphs"}[trainer.compile],
    }
    if trainer.compile != "off":  # the ceiling's warm-up absorbs compiling (StepClock times the first 4 steps)
        timing = {**timing, "warmup": max(timing["warmup"], 4)}
    first = next(trainer.loader.batches())
    click.echo(f"  model ceiling: steps on resident tensors ({timing})", err=True)
    ceiling = timed_steps(trainer, resident(first, device), device, timing)
    compiled = trainer.compile_report(final=True) or {}
    ceiling.update(compile_s=compiled.get("compile_s"), first_step_s=compiled.get("first_step_s"))
    rows = [{"backend": "model-ceiling", **common, **ceiling, "data_wait_fraction": None, "wall_wait_fraction": None}]
    for i, loader_device in enumerate(cfg.loader_devices):
        loader = trainer.loader if i == 0 else loader_for(loader_device)
        click.echo(f"  end to end, DALI pipeline on the {loader.loader_device}", err=True)
        e2e = timed_steps(trainer, loader.batches(), device, timing)
        rows.append(
            {
                "backend": "end-to-end",
                **common,
                **e2e,
                "loader": f"dali-{loader.loader_device}",
                "loader_device": loader.loader_device,
                "num_threads": cfg.num_threads,
                "ratio_to_ceiling": round(e2e["samples_per_s"] / ceiling["samples_per_s"], 4),
            }
        )
        del loader
    return rows, resolved


@click.command("end-to-end")
@click.option(
    "--shards",
    "shards",
    multiple=True,
    metavar="DIR[:W]",
    help="Training mixture as for train.py (default: the demo mixture real:10 generated:1).",
)
@click.option("--method", default="simclr", show_default=True)
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--batch-size", type=int, default=None, help="[512 on GPU; 32 on CPU]")
@click.option("--warmup", default=None, type=click.IntRange(0), help="Untimed steps first [10; --quick 2].")
@click.option(
    "--min-steps",
    "min_batches",
    default=None,
    type=click.IntRange(1),
    help="Timed steps at least, per measurement [50; --quick 5].",
)
@click.option(
    "--min-seconds", default=None, type=float, help="Timed seconds at least, per measurement [10; --quick 1]."
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option(
    "--loader-device",
    "loader_device",
    default="both",
    show_default=True,
    type=click.Choice(["auto", "cpu", "gpu", "both"]),
    help="Where the DALI pipeline runs; both = one row for the GPU pipeline and one for the CPU pipeline "
    "copying to the GPU (on a CPU machine: cpu only).",
)
@click.option(
    "--precision", default="auto", show_default=True, help="auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32."
)
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option(
    "--compile",
    "compile_",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "on", "off", "cudagraphs"]),
    help="As train.py --compile (auto: on with a GPU, off on the CPU); the ceiling and the fed step both use it.",
)
@click.option("--num-threads", type=int, default=2, show_default=True, help="DALI CPU threads.")
@click.option("--inflation", default="adainf", show_default=True, help="As train.py --inflation.")
@click.option("--aug", default="auto", show_default=True, help="As train.py --aug.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Lower minimums (marked quick in the JSON): minutes on a CPU.")
@out_dir_option
def main(
    shards,
    method,
    backbone,
    batch_size,
    warmup,
    min_batches,
    min_seconds,
    device,
    loader_device,
    precision,
    channels_last,
    compile_,
    num_threads,
    inflation,
    aug,
    seed,
    quick,
    out_dir,
):
    """The real train step fed by the loader: samples/s, ratio to the model ceiling, data-wait fraction."""
    device = pick_device(device)
    gpu = device.startswith("cuda")
    timing = timing_settings(quick, warmup, min_batches, min_seconds)
    devices = (
        ("gpu", "cpu") if loader_device == "both" and gpu else ("cpu",) if loader_device == "both" else (loader_device,)
    )
    cfg = EndToEndConfig(
        method=method,
        backbone=backbone,
        batch_size=batch_size or (512 if gpu else 32),
        device=device.split(":")[0],
        precision=precision,
        channels_last=channels_last,
        compile=compile_,
        num_threads=num_threads,
        inflation=inflation,
        aug=aug,
        seed=seed,
        loader_devices=devices,
    )
    from shards.errors import UserError

    try:
        shards = resolve_shards(shards)
        with contextlib.redirect_stdout(sys.stderr):  # the engine's log lines stay off the table
            rows, resolved = run(shards, cfg, timing)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    print_table(
        rows,
        [
            "backend",
            "loader_device",
            "device",
            "precision",
            "batch_size",
            "samples_per_s",
            "timed_batches",
            "data_wait_fraction",
            "ratio_to_ceiling",
            "peak_pss_mb",
        ],
    )
    path = write_results("end-to-end", {**asdict(cfg), "shards": shards, **timing, "resolved": resolved}, rows, out_dir)
    click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
