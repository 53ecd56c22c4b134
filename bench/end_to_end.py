"""End to end: the real training step fed by the real loader, against the model ceiling of the same run.

    python -m bench.end_to_end --quick                          # demo mixture, CPU or GPU
    python -m bench.end_to_end --shards shards/cifar10-train:10 --shards shards/edm:1 --batch-size 512 --steps 200

The run is built by the training engine that ``train.py`` uses (``models.engine``: ``Settings`` →
``setup_runtime`` → ``plan_data`` → ``DataPlan.train_loader`` → ``Trainer``), and each step is
``Trainer.step``: autocast forward, ``zero_grad``, (scaled) backward, optimizer and scheduler step,
``on_train_step_end``.

Two measurements in one process, same model, optimizer, batch size and step code:

* ``model-ceiling`` — the step on one batch of views already on the device (cloned from the loader's
  first batch), repeated: the most the GPU can do with this model.
* ``end-to-end`` — the step fed by the loader.

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

from bench.common import RssSampler, peak_rss_mb, pick_device, print_table, resolve_shards, write_results


@dataclass(frozen=True)
class EndToEndConfig:
    method: str = "simclr"
    backbone: str = "resnet18"
    batch_size: int = 512
    steps: int = 100  # timed steps per measurement
    warmup: int = 10  # untimed steps first (cudnn autotuning, DALI prefetch, allocator)
    device: str = "cuda"
    precision: str = "auto"  # train.py's rule: bf16 autocast on GPU, fp32 on CPU
    channels_last: bool = True
    compile: bool = False
    num_threads: int = 2
    inflation: str = "adainf"
    aug: str = "auto"
    seed: int = 0
    loader_device: str = "auto"


def build(shards: list[str], cfg: EndToEndConfig):
    """(trainer, loader, resolved) from the training engine, exactly as train.py builds a run (the schedule is
    the release's 100k steps: only its shape matters here)."""
    from models.engine import Settings, Trainer, aug_family, build_method_for, plan_data, seed_everything, setup_runtime

    s = Settings(shards=tuple(shards), method=cfg.method, backbone=cfg.backbone, batch_size=cfg.batch_size,
                 device=cfg.device, precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile,
                 num_threads=cfg.num_threads, inflation=cfg.inflation, aug=cfg.aug, seed=cfg.seed, progress=False,
                 loader_device=cfg.loader_device)
    rt = setup_runtime(s.device, s.precision)
    data = plan_data(s, rt.world_size, aug_family(s.method))
    loader = data.train_loader(s, rt)
    seed_everything(s.seed)
    trainer = Trainer(s, rt, loader, build_method_for(s, data.num_classes))
    trainer.method.train()
    resolved = {"device": rt.device, "precision": rt.precision, "channels_last": rt.is_cuda and s.channels_last,
                "epoch_size": data.epoch_size, "steps_per_epoch": loader.steps_per_epoch,
                "weights": [src.weight for src in data.mixture.sources],
                "sources": [str(src.path) for src in data.mixture.sources], "aug": data.aug.to_dict()}
    return trainer, loader, resolved


class StepTimer:
    """Per-step timing: CUDA events on the device timeline, wall clock on the host."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch
        self.events: list[tuple] = []
        self.wait_s = 0.0

    def start(self):
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return None

    def end(self, start):
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            self.events.append((start, ev))

    def device_busy_fraction(self) -> float | None:
        """Σ step time ÷ (last end − first start) on the device timeline (call after synchronising)."""
        if not self.events:
            return None
        busy = sum(s.elapsed_time(e) for s, e in self.events)
        span = self.events[0][0].elapsed_time(self.events[-1][1])
        return min(busy / span, 1.0) if span > 0 else None


def timed_steps(trainer, batches, steps: int, warmup: int, device: str) -> dict:
    """Run warmup + steps training steps on ``batches`` (an iterator of loader Batches or a fixed batch)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        batch = next(batches)
        trainer.step(batch.views, batch.labels)
    sync()
    timer = StepTimer(device)
    rss = RssSampler()
    samples = 0
    t0 = t_end = time.perf_counter()
    for i in range(steps):
        batch = next(batches)
        t_got = time.perf_counter()
        timer.wait_s += t_got - t_end
        ev = timer.start()
        trainer.step(batch.views, batch.labels)
        timer.end(ev)
        samples += int(batch.views[0].shape[0])
        t_end = time.perf_counter()
        if i % 10 == 0:
            rss.sample()
    sync()
    seconds = time.perf_counter() - t0
    busy = timer.device_busy_fraction()
    wall_wait = timer.wait_s / seconds if seconds > 0 else None
    return {"samples_per_s": round(samples / seconds, 1), "steps_per_s": round(steps / seconds, 3),
            "timed_steps": steps, "seconds": round(seconds, 3),
            "data_wait_fraction": round(1 - busy, 4) if busy is not None else round(wall_wait, 4),
            "wall_wait_fraction": round(wall_wait, 4), "rss_tree_peak_mb": rss.peak_mb}


def resident(batch, device: str):
    """An endless iterator over one batch already on the device (the model ceiling's input)."""
    import torch

    views = [v.clone() for v in batch.views]
    fixed = type("Resident", (), {"views": views, "labels": batch.labels.clone().to(device)})
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    while True:
        yield fixed


def run(shards: list[str], cfg: EndToEndConfig) -> tuple[list[dict], dict]:
    trainer, loader, resolved = build(shards, cfg)
    batches = loader.batches()
    first = next(batches)
    common = {"method": cfg.method, "batch_size": cfg.batch_size, "precision": resolved["precision"],
              "device": resolved["device"]}
    click.echo(f"  model ceiling: {cfg.warmup} + {cfg.steps} steps on resident tensors", err=True)
    ceiling = timed_steps(trainer, resident(first, resolved["device"]), cfg.steps, cfg.warmup, resolved["device"])
    click.echo(f"  end to end: {cfg.warmup} + {cfg.steps} steps fed by the loader", err=True)
    e2e = timed_steps(trainer, batches, cfg.steps, cfg.warmup, resolved["device"])
    ceiling_row = {"backend": "model-ceiling", **common, **ceiling, "data_wait_fraction": None,
                   "wall_wait_fraction": None, "peak_rss_mb": peak_rss_mb()}
    e2e_row = {"backend": "end-to-end", **common, **e2e, "peak_rss_mb": peak_rss_mb(),
               "loader": "dali-gpu" if resolved["device"].startswith("cuda") else "dali-cpu",
               "ratio_to_ceiling": round(e2e["samples_per_s"] / ceiling["samples_per_s"], 4)}
    del batches, loader
    return [ceiling_row, e2e_row], resolved


@click.command("end-to-end")
@click.option("--shards", "shards", multiple=True, metavar="DIR[:W]",
              help="Training mixture as for train.py (default: the demo mixture real:10 generated:1).")
@click.option("--method", default="simclr", show_default=True)
@click.option("--backbone", default="resnet18", show_default=True)
@click.option("--batch-size", type=int, default=None, help="[512 on GPU; 32 on CPU]")
@click.option("--steps", type=int, default=None, help="Timed steps per measurement [100; --quick 20 GPU / 3 CPU].")
@click.option("--warmup", type=int, default=None, help="Untimed steps first [10; --quick 5 GPU / 1 CPU].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--precision", default="auto", show_default=True, help="auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the step, as train.py --compile.")
@click.option("--num-threads", type=int, default=2, show_default=True, help="DALI CPU threads.")
@click.option("--inflation", default="adainf", show_default=True, help="As train.py --inflation.")
@click.option("--aug", default="auto", show_default=True, help="As train.py --aug.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Few steps: minutes on a CPU.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None, help="Where the JSON goes [bench/results].")
def main(shards, method, backbone, batch_size, steps, warmup, device, precision, channels_last, compile_,
         num_threads, inflation, aug, seed, quick, out_dir):
    """The real train step fed by the loader: samples/s, ratio to the model ceiling, data-wait fraction."""
    device = pick_device(device)
    gpu = device.startswith("cuda")
    if steps is None:
        steps = (20 if gpu else 3) if quick else 100
    if warmup is None:
        warmup = (5 if gpu else 1) if quick else 10
    if steps < 1 or warmup < 0:
        raise click.BadParameter("--steps must be >= 1 and --warmup >= 0")
    cfg = EndToEndConfig(method=method, backbone=backbone, batch_size=batch_size or (512 if gpu else 32),
                         steps=steps, warmup=warmup, device=device.split(":")[0], precision=precision,
                         channels_last=channels_last, compile=compile_, num_threads=num_threads,
                         inflation=inflation, aug=aug, seed=seed)
    from shards.errors import UserError

    try:
        shards = resolve_shards(shards)
        with contextlib.redirect_stdout(sys.stderr):  # train.py's log lines stay off the table
            rows, resolved = run(shards, cfg)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    print_table(rows, ["backend", "device", "precision", "batch_size", "samples_per_s", "steps_per_s",
                       "data_wait_fraction", "ratio_to_ceiling", "peak_rss_mb"])
    path = write_results("end-to-end", {**asdict(cfg), "shards": shards, "quick": quick, "resolved": resolved}, rows,
                         out_dir)
    click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
