"""Train a contrastive model on a weighted mixture of real and generated images (AdaInf, ICLR 2024).

    python train.py --shards shards/cifar10-train:10 --shards shards/edm:1 --eval-shards shards/cifar10-test \\
        --train-labels shards/cifar10-train --method simclr --aug adainf --steps 100000 --batch-size 512
    python train.py --demo                                   # built-in demo mixture, a few minutes on CPU
    python train.py --resume runs/NAME                       # continue after an interruption
    python train.py --eval-only --checkpoint runs/NAME/ckpt-last.pt
    torchrun --nproc_per_node 8 train.py ...                 # DDP (NCCL on GPU, gloo on CPU)

Reads top to bottom: settings, input checks, distributed setup, device and precision, data and inflation
policy, model (new or resumed), compile, DDP wrap, the loop, evaluation. The data comes from `loaders/`,
the model from `models/`; device, precision, compile and DDP are decided here and nowhere else.

Run directory (``--out``, default ``runs/<method>-<timestamp>``): ``config.yaml`` (the resolved settings,
the inflation decision, the mixture), ``metrics.jsonl`` (one JSON object per line: ``kind`` train / eval /
final), TensorBoard events under ``tb/``, ``ckpt-last.pt`` (and ``ckpt-STEP.pt`` with ``--keep-every``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import random
import signal
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from loaders.recipe import AUG_CHOICES, AUG_KNOBS, resolve_recipe

METHODS = ("simclr", "mocov2plus", "byol", "barlow")
CKPT_LAST = "ckpt-last.pt"


def _opt(default, help, **extra):
    """A settings field with its command-line help (and optional click extras such as choices)."""
    return field(default=default, metadata={"help": help, **extra})


# ----------------------------------------------------------------------------------------------------
# Settings: one frozen dataclass; every field is a command-line option of the same name.
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    # data
    shards: tuple[str, ...] = _opt((), "Training shard set as DIR[:WEIGHT] or a mixture YAML; repeat for more sources.")
    eval_shards: tuple[str, ...] = _opt((), "Labelled test shard set(s) for kNN / linear-probe accuracy; repeat.")
    train_labels: tuple[str, ...] = _opt((), "Labelled real shard set(s) giving kNN / linear-probe training "
                                             "features (no augmentation). Default: the labelled real --shards.")
    inflation: str = _opt("auto", "How to weight generated data (loaders.policy): none, vanilla, adainf or auto.",
                          choices=("none", "vanilla", "adainf", "auto"))
    aug: str = _opt("auto", "Augmentation preset, 'default' / 'adainf' for the method's family, or 'auto' "
                            "(the inflation policy's choice).", choices=AUG_CHOICES)
    crop_min_scale: float | None = _opt(None, "RandomResizedCrop minimum area (overrides the policy/preset).")
    jitter_strength: float | None = _opt(None, "Colour-jitter strength multiplier (overrides the policy/preset).")
    jitter_p: float | None = _opt(None, "Colour-jitter probability (overrides the policy/preset).")
    image_size: int = _opt(32, "Side of the training crops and evaluation images (shard images are resized).")
    num_threads: int = _opt(2, "DALI CPU threads per process.")
    on_corrupt: str = _opt("error", "What the loader does with an undecodable sample.", choices=("error", "skip"))
    # model and optimisation
    method: str = _opt("simclr", "Contrastive method.", choices=METHODS)
    backbone: str = _opt("resnet18", "Backbone (CIFAR stem for resnet18).", choices=("resnet18", "resnet50", "convnet"))
    steps: int | None = _opt(None, "Optimisation steps (default 100000 unless --epochs is given).")
    epochs: int | None = _opt(None, "Train for this many epochs of the mixture instead of --steps.")
    batch_size: int = _opt(512, "Global batch size (split evenly over the DDP ranks).")
    lr: float | None = _opt(None, "Learning rate per 256 samples (scaled by batch/256). Default: the method's.")
    optimizer: str | None = _opt(None, "Optimizer. Default: the method's (LARS for simclr/byol/barlow, SGD for "
                                       "mocov2plus).", choices=("lars", "sgd"))
    weight_decay: float | None = _opt(None, "Weight decay. Default: the method's.")
    warmup_steps: int = _opt(1000, "Linear warm-up steps before the cosine decay (at most a tenth of the run).")
    seed: int = _opt(0, "Seed for the model, the epoch plans and the augmentation.")
    # system
    device: str = _opt("auto", "cuda, cpu or auto (cuda when available).", choices=("auto", "cuda", "cpu"))
    precision: str = _opt("auto", "auto (bf16 autocast on GPU, fp32 on CPU), bf16, fp16 or fp32.",
                          choices=("auto", "bf16", "fp16", "fp32"))
    compile: bool = _opt(False, "torch.compile the training step.")
    channels_last: bool = _opt(True, "channels_last memory format on GPU.")
    # evaluation
    eval_every: int = _opt(5000, "Steps between kNN / online-probe evaluations on --eval-shards (0: end only).")
    knn_k: int = _opt(200, "Neighbours for the kNN monitor.")
    knn_t: float = _opt(0.1, "Temperature of the kNN vote.")
    knn_train_limit: int = _opt(0, "Cap on labelled training images for kNN and the linear probe (0: all).")
    eval_limit: int = _opt(0, "Cap on test images for evaluation (0: all).")
    eval_batch_size: int = _opt(512, "Batch size for feature extraction.")
    probe_epochs: int = _opt(100, "Epochs of the offline linear probe on frozen features at the end (0: skip).")
    # run
    out: str | None = _opt(None, "Run directory (default runs/<method>-<timestamp>).")
    log_every: int = _opt(50, "Steps between log lines, metrics records and progress updates.")
    ckpt_every: int = _opt(1000, "Steps between writes of ckpt-last.pt (0: only at the end and on a signal).")
    keep_every: int = _opt(0, "Also keep ckpt-STEP.pt every this many steps (0: never).")
    resume: str | None = _opt(None, "Continue a run: its directory or a checkpoint file.")
    eval_only: bool = _opt(False, "Only evaluate --checkpoint (kNN and offline linear probe), then exit.")
    checkpoint: str | None = _opt(None, "Checkpoint for --eval-only.")
    demo: bool = _opt(False, "Build the demo mixture (if missing) and train on it with small defaults.")
    demo_data: str = _opt("runs/demo-data", "Where --demo builds / finds its shard sets.")
    progress: bool = _opt(True, "Show a tqdm progress bar.")
    compare_random: bool = _opt(False, "After training, evaluate a randomly initialised backbone the same way "
                                       "and print both (what training has to beat; on by default with --demo).")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # YAML / JSON give lists for tuples
                object.__setattr__(self, f.name, value := tuple(value))
            if not _is_instance(value, hints[f.name]):
                raise TypeError(f"setting {f.name}={value!r}: expected {_type_name(hints[f.name])}")
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ValueError(f"setting {f.name}={value!r}: expected one of {', '.join(choices)}")

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        """Settings from a saved dict; an unknown key or a wrong type is an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _is_instance(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, tuple) and all(_is_instance(v, typing.get_args(tp)[0]) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# Defaults of --demo for every option the user did not give: a few minutes on a 2-core CPU.
# On a GPU the demo keeps 32x32 crops and runs longer; on a CPU it trains at 16x16 (a quarter of the FLOPs).
DEMO_DEFAULTS = dict(method="simclr", batch_size=128, steps=300, warmup_steps=30, eval_every=0, log_every=10,
                     ckpt_every=100, knn_k=50, knn_train_limit=2000, eval_limit=1000, probe_epochs=30,
                     eval_batch_size=256, inflation="adainf", aug="auto")
# On a CPU a ResNet-18 cannot learn in minutes: the demo trains the small convnet backbone instead
# (measured here: 500 steps in about 2 minutes on 2 cores; kNN 57% vs 25% and linear probe 75% vs 46% for
# the randomly initialised backbone).
DEMO_CPU_DEFAULTS = dict(backbone="convnet", batch_size=128, steps=500, warmup_steps=50, log_every=10, ckpt_every=100)
# Settings that may differ from the checkpoint's when resuming (everything else must match).
RESUME_MAY_CHANGE = ("steps", "epochs", "device", "num_threads", "compile", "eval_every", "log_every", "compare_random",
                     "ckpt_every", "keep_every", "progress", "resume", "out", "eval_limit", "knn_train_limit",
                     "probe_epochs", "eval_batch_size", "on_corrupt")


# ----------------------------------------------------------------------------------------------------
# Small helpers: run directory, metrics, checkpoints, signals
# ----------------------------------------------------------------------------------------------------
class Metrics:
    """metrics.jsonl (one JSON object per line) and TensorBoard scalars, written by rank 0 only."""

    def __init__(self, run_dir: Path | None, keep_until_step: int | None = None):
        self.file = self.tb = None
        if run_dir is None:
            return
        path = run_dir / "metrics.jsonl"
        if keep_until_step is not None and path.exists():  # resume: drop records past the checkpoint
            from shards.manifest import atomic_write_text

            kept = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= keep_until_step
                    and json.loads(ln).get("kind") != "final"]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))
        self.file = open(path, "a", buffering=1)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=keep_until_step)

    def write(self, kind: str, step: int, **values) -> None:
        if self.file is None:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.file.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.tb.close()
            self.file = self.tb = None


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save to a temporary file in the same directory, fsync, then rename: never half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """Load a checkpoint file, or DIR/ckpt-last.pt for a run directory; a bad path is one clear line."""
    p = Path(path)
    if p.is_dir():
        p = p / CKPT_LAST
    if not p.is_file():
        raise click.UsageError(f"{p}: no checkpoint here; give a run directory with {CKPT_LAST} or a .pt file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise click.ClickException(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "settings" not in ckpt or "model" not in ckpt:
        raise click.ClickException(f"{p}: not a train.py checkpoint (no settings/model)")
    return p, ckpt


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopFlag:
    """SIGINT / SIGTERM set a flag the loop checks; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class NonFiniteLoss(click.ClickException):
    exit_code = 3


class Interrupted(click.ClickException):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# ----------------------------------------------------------------------------------------------------
# Input checks: everything that can be wrong with the command line, before any work starts
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What the settings resolve to before touching a device: mixture, augmentation, policy decision."""

    mixture: typing.Any
    aug: typing.Any
    decision: typing.Any
    train_labels: tuple[str, ...]
    eval_shards: tuple[str, ...]
    epoch_size: int


def plan_data(s: Settings, world_size: int = 1) -> Plan:
    from loaders.mixture import parse_shards_args
    from shards.manifest import Manifest, ShardError

    if not s.shards:
        raise click.UsageError("no training data: give --shards DIR[:WEIGHT] (repeatable) or --demo")
    try:
        mixture = parse_shards_args(list(s.shards))
        eval_manifests = [(d, Manifest.load(d)) for d in s.eval_shards]
        label_dirs = s.train_labels or tuple(str(src.path) for src in mixture.sources
                                             if src.manifest.kind == "real" and src.manifest.labelled)
        label_manifests = [(d, Manifest.load(d)) for d in label_dirs]
    except ShardError as e:
        raise click.UsageError(str(e)) from None
    for src in mixture.sources:
        if src.manifest.count == 0:
            raise click.UsageError(f"{src.path}: shard set is empty; pack images into it with `python -m shards pack`")
    for d, m in eval_manifests + label_manifests:
        if not m.labelled:
            which = "--eval-shards" if (d, m) in eval_manifests else "--train-labels"
            raise click.UsageError(f"{which} {d}: shard set has no labels ({m.kind}); give a labelled real set")
    if eval_manifests and not label_manifests:
        raise click.UsageError("evaluation needs labelled training features: give --train-labels DIR "
                               "(a labelled real shard set)")

    explicit = {k: getattr(s, k) for k in AUG_KNOBS}
    try:
        recipe = resolve_recipe(mixture, aug=s.aug, inflation=s.inflation, method=s.method, overrides=explicit,
                                size=s.image_size)
    except (ValueError, ShardError) as e:
        raise click.UsageError(str(e)) from None
    mixture, aug, decision = recipe.mixture, recipe.aug, recipe.decision

    epoch_size = int(round(sum(src.manifest.count * src.weight for src in mixture.sources)))
    if s.batch_size % world_size:
        raise click.UsageError(f"--batch-size {s.batch_size} does not split over {world_size} processes; "
                               f"use a multiple of {world_size}")
    if s.batch_size > epoch_size:
        raise click.UsageError(f"--batch-size {s.batch_size} is larger than an epoch of the mixture "
                               f"({epoch_size} samples); lower --batch-size or add data")
    if s.batch_size < 2:
        raise click.UsageError(f"--batch-size {s.batch_size}: contrastive losses need at least 2 samples")
    return Plan(mixture, aug, decision, tuple(str(d) for d, _ in label_manifests),
                tuple(str(d) for d, _ in eval_manifests), epoch_size)


def _check_settings(s: Settings) -> None:
    positive = ("batch_size", "log_every", "knn_k", "eval_batch_size", "num_threads", "image_size")
    for name in positive:
        if getattr(s, name) < 1:
            raise click.UsageError(f"--{name.replace('_', '-')} {getattr(s, name)}: must be at least 1")
    for name in ("steps", "epochs"):
        v = getattr(s, name)
        if v is not None and v < 1:
            raise click.UsageError(f"--{name} {v}: must be at least 1")
    if s.steps is not None and s.epochs is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    if s.device == "cuda":
        if not torch.cuda.is_available():
            raise click.UsageError("--device cuda: no CUDA device is visible; use --device cpu or auto")


# ----------------------------------------------------------------------------------------------------
# Distributed setup, device and precision
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda:N" | "cpu"
    rank: int
    local_rank: int
    world_size: int
    precision: str  # "bf16" | "fp16" | "fp32"

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(s: Settings) -> Runtime:
    """rank / world size from torchrun's environment; NCCL on GPU, gloo on CPU."""
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = s.device == "cuda" or (s.device == "auto" and torch.cuda.is_available())
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo",
                                             device_id=torch.device(device) if use_cuda else None)
    precision = s.precision
    if precision == "auto":
        precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not use_cuda:
        raise click.UsageError(f"--precision {precision} needs a GPU; on CPU use --precision fp32 (or auto)")
    return Runtime(device, rank, local_rank, world_size, precision)


def autocast_context(rt: Runtime):
    """One autocast context for the loop (a null context in fp32) — precision costs the loop no branches."""
    if rt.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if rt.precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log(rt: Runtime | None, msg: str) -> None:
    if rt is None or rt.master:
        click.echo(msg, err=True)


# ----------------------------------------------------------------------------------------------------
# Evaluation: online probe and kNN at intervals, offline linear probe at the end
# ----------------------------------------------------------------------------------------------------
def extract(backbone, dirs, s: Settings, device: str, limit: int):
    from loaders.pipeline import EvalLoader
    from models.evaluation import extract_features

    loader = EvalLoader(list(dirs), s.eval_batch_size, device, size=s.image_size, num_threads=s.num_threads,
                        limit=limit)  # a fixed random subset: test sets are often packed in class order
    return extract_features(backbone, loader, device)


def evaluate(method, plan: Plan, s: Settings, device: str, *, probe_epochs: int = 0, autocast=None) -> dict:
    """kNN accuracy (and the online probe's, and optionally an offline linear probe's) on the eval shards."""
    from models.evaluation import knn_accuracy, linear_probe

    was_training = method.training
    method.eval()
    try:
        with torch.no_grad(), (autocast or contextlib.nullcontext()):
            train_f, train_y = extract(method.backbone, plan.train_labels, s, device, s.knn_train_limit)
            test_f, test_y = extract(method.backbone, plan.eval_shards, s, device, s.eval_limit)
        train_f, test_f = train_f.float(), test_f.float()
        result = {"knn_acc": float(knn_accuracy(train_f, train_y, test_f, test_y, k=s.knn_k, T=s.knn_t)),
                  "eval_samples": int(len(test_y)), "knn_train_samples": int(len(train_y))}
        with torch.no_grad():
            logits = method.probe(test_f.to(next(method.probe.parameters()).dtype))
            result["online_probe_acc"] = float((logits.argmax(1) == test_y.to(logits.device)).float().mean())
        if probe_epochs:
            result["linear_probe_acc"] = float(linear_probe(train_f, train_y, test_f, test_y,
                                                            epochs=probe_epochs, seed=s.seed))
    finally:
        method.train(was_training)
    return result


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
def _default_out(s: Settings) -> str:
    return str(Path("runs") / f"{s.method}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")


def _build_method(s: Settings, num_classes: int):
    from models import build_method

    overrides = {k: getattr(s, k) for k in ("lr", "optimizer", "weight_decay") if getattr(s, k) is not None}
    try:
        return build_method(s.method, num_classes=num_classes, backbone=s.backbone, **overrides)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _num_classes(plan: Plan) -> int:
    from shards.manifest import Manifest

    counts = [len(Manifest.load(d).classes) for d in plan.train_labels + plan.eval_shards]
    if plan.mixture is not None:
        counts += [len(src.manifest.classes) for src in plan.mixture.sources]
    return max([c for c in counts if c] or [10])


def train_step(model, method, optimizer, scheduler, scaler, autocast, views, labels, step: int, total: int) -> dict:
    """One optimisation step (forward under autocast, scaled backward, optimizer, schedule, EMA); returns the
    method's outputs. ``model`` is the method itself or its DDP / compiled wrapper. The benchmarks call this too."""
    with autocast:
        out = model(views, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    method.on_train_step_end(step, total)
    return out


def train(s: Settings, resume_ckpt: dict | None = None, resume_path: Path | None = None) -> dict:
    """Train (or continue) a run; returns the final metrics. Errors the user can fix are click errors."""
    from loaders.pipeline import TrainLoader
    from models import build_optimizer, build_scheduler
    from tqdm import tqdm

    _check_settings(s)
    rt = setup_runtime(s)
    plan = plan_data(s, rt.world_size)  # every check on the input happens before any work starts
    autocast = autocast_context(rt)

    # -- data --------------------------------------------------------------------------------------
    _seed_everything(s.seed + rt.rank)
    loader = TrainLoader(plan.mixture, plan.aug, s.batch_size // rt.world_size, seed=s.seed,
                         device="cuda" if rt.is_cuda else "cpu", rank=rt.rank, world_size=rt.world_size,
                         num_threads=s.num_threads, channels_last=rt.is_cuda and s.channels_last,
                         drop_last=True, on_corrupt=s.on_corrupt)
    steps_per_epoch = loader.steps_per_epoch
    if steps_per_epoch < 1:
        raise click.UsageError(f"--batch-size {s.batch_size} leaves no full batch in an epoch of "
                               f"{plan.epoch_size} samples; lower it")
    total_steps = s.epochs * steps_per_epoch if s.epochs else (s.steps or 100_000)
    warmup = min(s.warmup_steps, total_steps // 10)

    # -- model, new or resumed ---------------------------------------------------------------------
    method = _build_method(s, _num_classes(plan))
    method.to(rt.device)
    if rt.is_cuda and s.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, batch_size=s.batch_size)
    scheduler = build_scheduler(optimizer, total_steps, warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
    step = 0
    if resume_ckpt is not None:
        method.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        scaler.load_state_dict(resume_ckpt["scaler"])
        loader.load_state_dict(resume_ckpt["loader"])
        rng = resume_ckpt["rng"]
        set_rng_state(rng[rt.rank] if len(rng) == rt.world_size else rng[0])
        step = int(resume_ckpt["step"])
    epoch, in_epoch = loader.state_dict()["epoch"], loader.state_dict()["step"]  # the sampler position

    # -- compile, DDP wrap -------------------------------------------------------------------------
    model = method  # forward(views, labels) is the training step
    if s.compile:
        model = torch.compile(model)
    if rt.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.is_cuda else None)

    # -- run directory -----------------------------------------------------------------------------
    run_dir = Path(s.out)
    resolved = {
        "device": rt.device, "precision": rt.precision, "world_size": rt.world_size,
        "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "epoch_size": plan.epoch_size,
        "warmup_steps": warmup, "per_rank_batch_size": s.batch_size // rt.world_size,
        "lr": method.cfg.lr * s.batch_size / 256, "lr_per_256": method.cfg.lr,
        "optimizer": method.cfg.optimizer, "weight_decay": method.cfg.weight_decay,
        "method_config": dataclasses.asdict(method.cfg),
        "inflation": plan.decision.to_dict(), "augmentation": _aug_dict(plan.aug),
        "mixture": [{"name": src.name, "path": str(src.path), "kind": src.manifest.kind,
                     "count": src.manifest.count, "weight": src.weight, "fid": src.manifest.fid}
                    for src in plan.mixture.sources],
        "train_labels": list(plan.train_labels), "eval_shards": list(plan.eval_shards),
    }
    if rt.master:
        import yaml
        from shards.manifest import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump({"settings": s.to_dict(), "resolved": resolved},
                                                                  sort_keys=False))
        _log(rt, plan.decision.describe())
        _log(rt, f"{s.method}/{s.backbone} on {rt.device} x{rt.world_size} ({rt.precision}), "
                 f"{total_steps} steps of batch {s.batch_size} ({steps_per_epoch} steps/epoch of "
                 f"{plan.epoch_size} samples), lr {resolved['lr']:.4g}; run directory {run_dir}"
                 + (f"; resumed at step {step}" if step else ""))
    metrics = Metrics(run_dir if rt.master else None, keep_until_step=step if resume_ckpt else None)

    def checkpoint(name: str) -> Path:
        rngs = [rng_state()]
        if rt.distributed:
            rngs = [None] * rt.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        path = run_dir / name
        if rt.master:
            save_checkpoint(path, {
                "settings": s.to_dict(), "resolved": resolved, "step": step, "model": method.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "loader": loader.state_dict(), "rng": rngs,
            })
        return path

    def any_rank(flag: bool) -> bool:
        if not rt.distributed:
            return flag
        t = torch.tensor([float(flag)], device=rt.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    last_good = resume_path

    def check_finite(upto: int) -> None:
        if any_rank(bool(nonfinite.item())):
            where = f"the last good checkpoint {last_good} is kept" if last_good else "no checkpoint was written yet"
            bar.close()
            metrics.close()
            when = f"at step {upto}" if upto == last_checked + 1 else f"between steps {last_checked + 1} and {upto}"
            raise NonFiniteLoss(f"loss became NaN/inf {when}; stopped, "
                                f"{where}; lower --lr or check the data")

    # -- the loop ----------------------------------------------------------------------------------
    method.train()
    nonfinite = torch.zeros((), dtype=torch.bool, device=rt.device)
    sums: dict[str, torch.Tensor] = {}
    interval_steps, wait_time, last_checked = 0, 0.0, step
    bar = tqdm(total=total_steps, initial=step, disable=not (rt.master and s.progress), unit="step",
               dynamic_ncols=True, file=sys.stderr)
    final: dict = {}
    stopping = False  # in DDP, the ranks agree on a stop at a log step (a collective), never alone
    with StopFlag() as stop:
        t_interval = t_step_end = time.perf_counter()
        while step < total_steps and not stopping:
            for batch in loader.epoch(epoch, start_step=in_epoch):
                wait_time += time.perf_counter() - t_step_end
                out = train_step(model, method, optimizer, scheduler, scaler, autocast, batch.views,
                                 batch.labels.to(rt.device, non_blocking=True), step, total_steps)
                step += 1
                loss = out["loss"].detach()
                nonfinite |= ~torch.isfinite(loss)
                for k, v in out.items():
                    if torch.is_tensor(v) and v.ndim == 0 and k not in ("probe_correct", "probe_count"):
                        sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
                interval_steps += 1
                bar.update(1)
                if not rt.distributed:
                    stopping = bool(stop.signum)
                t_step_end = time.perf_counter()

                if step % s.log_every == 0 or step == total_steps:
                    if rt.is_cuda:
                        torch.cuda.synchronize()
                    check_finite(step)
                    last_checked = step
                    now = time.perf_counter()
                    record = {k: v.item() / interval_steps for k, v in sums.items()}
                    record.update(epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                                  samples_per_s=interval_steps * s.batch_size / max(now - t_interval, 1e-9),
                                  data_wait=wait_time / max(now - t_interval, 1e-9))
                    metrics.write("train", step, **record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.3g}",
                                    sps=f"{record['samples_per_s']:.0f}", wait=f"{record['data_wait']:.0%}")
                    sums, interval_steps, wait_time = {}, 0, 0.0
                    if rt.distributed:
                        stopping = any_rank(bool(stop.signum))
                    t_interval = t_step_end = time.perf_counter()

                ckpt_due = s.ckpt_every and step % s.ckpt_every == 0
                keep_due = s.keep_every and step % s.keep_every == 0
                if ckpt_due or keep_due or step == total_steps or stopping:
                    t_ckpt = time.perf_counter()
                    check_finite(step)
                    last_checked = step
                    if keep_due:
                        checkpoint(f"ckpt-{step}.pt")
                    last_good = checkpoint(CKPT_LAST)
                    t_step_end = time.perf_counter()
                    t_interval += t_step_end - t_ckpt  # nor is writing checkpoints
                if (s.eval_every and step % s.eval_every == 0 and step < total_steps and plan.eval_shards):
                    t_eval = time.perf_counter()
                    if rt.master:
                        result = evaluate(method, plan, s, rt.device, autocast=autocast)
                        metrics.write("eval", step, **result)
                        bar.write(f"step {step}: kNN {result['knn_acc']:.2%}, online probe "
                                  f"{result['online_probe_acc']:.2%}", file=sys.stderr)
                    if rt.distributed:
                        torch.distributed.barrier()
                    t_step_end = time.perf_counter()
                    t_interval += t_step_end - t_eval  # evaluation time is not training time
                if step >= total_steps or stopping:
                    break
            else:  # the epoch's plan is exhausted
                epoch, in_epoch = epoch + 1, 0
        bar.close()
        if stopping:
            metrics.close()
            name = signal.Signals(stop.signum or signal.SIGTERM).name
            raise Interrupted(f"{name} at step {step}: checkpoint saved to {last_good}; continue with "
                              f"`python train.py --resume {run_dir}`", stop.signum or signal.SIGTERM)

    # -- final evaluation --------------------------------------------------------------------------
    if plan.eval_shards and rt.master:
        final = evaluate(method, plan, s, rt.device, probe_epochs=s.probe_epochs, autocast=autocast)
        metrics.write("final", step, **final)
        _log(rt, _format_final(final, step))
    if rt.distributed:
        torch.distributed.barrier()
    metrics.close()
    return final


def _aug_dict(aug) -> dict:
    if dataclasses.is_dataclass(aug):
        return json.loads(json.dumps(dataclasses.asdict(aug), default=str))
    return {"repr": repr(aug)}


def _format_final(result: dict, step: int) -> str:
    parts = [f"kNN {result['knn_acc']:.2%}", f"online probe {result['online_probe_acc']:.2%}"]
    if "linear_probe_acc" in result:
        parts.append(f"offline linear probe {result['linear_probe_acc']:.2%}")
    return f"final accuracy at step {step} on {result['eval_samples']} test images: " + ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# Evaluation only, and the demo
# ----------------------------------------------------------------------------------------------------
def eval_checkpoint(s: Settings, given: set[str]) -> dict:
    """kNN and offline linear probe of a checkpoint's backbone on --eval-shards (default: the run's)."""
    from models import build_method

    if not s.checkpoint:
        raise click.UsageError("--eval-only needs --checkpoint PATH (a .pt file or a run directory)")
    path, ckpt = load_checkpoint(s.checkpoint)
    run = ckpt.get("resolved", {})
    eval_shards = s.eval_shards if "eval_shards" in given else tuple(run.get("eval_shards", ()))
    labels = s.train_labels if "train_labels" in given else tuple(run.get("train_labels", ()))
    plan = _eval_plan(eval_shards, labels)
    saved = Settings.from_dict(ckpt["settings"])
    # evaluation knobs: the run's own (crop size, kNN k, limits ...) unless given on this command line
    s = dataclasses.replace(saved, **{k: getattr(s, k) for k in given if k not in ("eval_only", "resume")},
                            eval_only=True, resume=None)
    rt = setup_runtime(s)
    cfg = dict(run.get("method_config") or {})
    method = build_method(saved.method, **cfg) if cfg else _build_method(saved, _num_classes(plan))
    method.load_state_dict(ckpt["model"])
    method.to(rt.device)
    result = evaluate(method, plan, s, rt.device, probe_epochs=s.probe_epochs, autocast=autocast_context(rt))
    result["checkpoint"] = str(path)
    if rt.master:
        metrics = Metrics(path.parent)
        metrics.write("eval_only", int(ckpt["step"]), **result)
        metrics.close()
        _log(rt, _format_final(result, int(ckpt["step"])))
    return result


def _eval_plan(eval_shards, train_labels) -> Plan:
    from shards.manifest import Manifest, ShardError

    if not eval_shards:
        raise click.UsageError("no evaluation data: give --eval-shards DIR (a labelled test shard set)")
    if not train_labels:
        raise click.UsageError("no labelled training features: give --train-labels DIR")
    for opt, dirs in (("--eval-shards", eval_shards), ("--train-labels", train_labels)):
        for d in dirs:
            try:
                m = Manifest.load(d)
            except ShardError as e:
                raise click.UsageError(str(e)) from None
            if not m.labelled:
                raise click.UsageError(f"{opt} {d}: shard set has no labels ({m.kind}); give a labelled real set")
    return Plan(None, None, None, tuple(map(str, train_labels)), tuple(map(str, eval_shards)), 0)


def demo_settings(s: Settings, given: set[str]) -> Settings:
    """Build the demo mixture if missing and point the settings at it; DEMO_DEFAULTS fill what was not given."""
    from shards.demo import make_demo

    data = Path(s.demo_data)
    parts = {name: data / name for name in ("real", "generated", "test")}
    if not all((p / "manifest.json").is_file() for p in parts.values()):
        click.echo(f"building the demo mixture in {data} ...", err=True)
        make_demo(data)
    defaults = dict(DEMO_DEFAULTS)
    if s.device == "cpu" or not torch.cuda.is_available():
        defaults.update(DEMO_CPU_DEFAULTS)
    changes = {k: v for k, v in defaults.items() if k not in given}
    if "shards" not in given:
        changes["shards"] = (str(parts["real"]), str(parts["generated"]))
    if "eval_shards" not in given:
        changes["eval_shards"] = (str(parts["test"]),)
    if "train_labels" not in given:
        changes["train_labels"] = (str(parts["real"]),)
    if "out" not in given:
        changes["out"] = str(Path("runs") / f"demo-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    return dataclasses.replace(s, **changes)


def random_init_baseline(s: Settings) -> dict:
    """The same evaluation on a randomly initialised backbone (same seed): what training has to beat."""
    plan = _eval_plan(s.eval_shards, s.train_labels)
    rt = setup_runtime(s)
    torch.manual_seed(s.seed)
    method = _build_method(s, _num_classes(plan)).to(rt.device)
    return evaluate(method, plan, s, rt.device, probe_epochs=s.probe_epochs, autocast=autocast_context(rt))


# ----------------------------------------------------------------------------------------------------
# Command line: one click option per Settings field
# ----------------------------------------------------------------------------------------------------
def _click_option(f: dataclasses.Field, hint):
    name = "--" + f.name.replace("_", "-")
    kwargs = {"help": f.metadata["help"], "show_default": f.default not in (None, ())}
    choices = f.metadata.get("choices")
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not tuple else hint
    if typing.get_origin(hint) is tuple:
        return click.option(name, f.name, multiple=True, type=str, **kwargs)
    if base is bool:
        return click.option(f"{name}/--no-{f.name.replace('_', '-')}", f.name, default=f.default, **kwargs)
    ctype = click.Choice(choices) if choices else base
    return click.option(name, f.name, type=ctype, default=f.default, **kwargs)


def settings_options(fn):
    hints = typing.get_type_hints(Settings)
    for f in reversed(dataclasses.fields(Settings)):
        fn = _click_option(f, hints[f.name])(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@settings_options
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Train a contrastive model on a weighted mixture of real and generated shards (AdaInf)."""
    given = {k for k in options
             if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
    try:
        s = Settings(**options)
    except (TypeError, ValueError) as e:
        raise click.UsageError(str(e)) from None

    if s.eval_only:
        eval_checkpoint(s, given)
        return

    resume_ckpt = resume_path = None
    if s.resume:
        resume_path, resume_ckpt = load_checkpoint(s.resume)
        saved = Settings.from_dict(resume_ckpt["settings"])
        clash = [k for k in sorted(given) if k not in RESUME_MAY_CHANGE and getattr(s, k) != getattr(saved, k)]
        if clash:
            k = clash[0]
            raise click.UsageError(f"--{k.replace('_', '-')} {getattr(s, k)!r} differs from the checkpoint's "
                                   f"{getattr(saved, k)!r}; a resumed run keeps its settings (may change: "
                                   f"{', '.join(RESUME_MAY_CHANGE)})")
        keep = {k: getattr(s, k) for k in given if k in RESUME_MAY_CHANGE and k != "resume"}
        keep.setdefault("out", str(resume_path.parent))  # the run the checkpoint belongs to
        if "steps" in keep and "epochs" not in keep:
            keep["epochs"] = None
        if "epochs" in keep and "steps" not in keep:
            keep["steps"] = None
        s = dataclasses.replace(saved, **keep, resume=str(resume_path), demo=False)
    elif s.demo:
        s = demo_settings(s, given)
    if s.out is None:
        s = dataclasses.replace(s, out=_default_out(s))

    from shards.manifest import ShardError

    try:
        final = train(s, resume_ckpt, resume_path)
    except ShardError as e:  # a damaged shard found mid-run, a loader state that does not fit, ...
        raise click.ClickException(str(e)) from None

    if (s.demo or s.compare_random) and final and int(os.environ.get("RANK", 0)) == 0:
        click.echo("measuring a randomly initialised backbone for comparison ...", err=True)
        base = random_init_baseline(s)
        metrics = Metrics(Path(s.out))
        metrics.write("baseline_random_init", 0, **base)
        metrics.close()
        click.echo(f"{'backbone':<22}{'kNN':>8}{'linear probe':>14}")
        for name, r in (("random init", base), (f"trained ({s.steps} steps)", final)):
            click.echo(f"{name:<22}{r['knn_acc']:>8.2%}{r.get('linear_probe_acc', float('nan')):>14.2%}")


if __name__ == "__main__":
    main()
