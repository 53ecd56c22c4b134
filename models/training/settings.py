"""The run's settings: one frozen dataclass whose fields are the command-line options of ``train.py``.

Defaults live only as field defaults; ``click_options`` turns every field into an option of the same name
(choices from the registries: methods from ``models.METHODS``, backbones from ``models.BACKBONES``,
inflation modes and augmentation presets from ``loaders``); ``from_dict`` / ``from_yaml`` read saved
settings (a previous run's ``config.yaml``) where an unknown key or a wrong type is an error, as in
nanoGPT's configurator.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import click

from loaders.recipe.policy import DEFAULT_MODE, INFLATION_MODES
from loaders.recipe.resolve import AUG_CHOICES
from models import METHODS
from models.backbone import BACKBONES
from models.training.compiling import COMPILE_CHOICES
from shards.base.errors import ConfigError
from shards.base.host import LOADER_DEVICES, LOADER_THREADS
from shards.read.reader import ON_CORRUPT

DEFAULT_STEPS = 100_000  # the release's budget for every CIFAR setting (scripts/pretrain/cifar/*.yaml)


def _opt(default, help, **extra):
    """A settings field with its command-line help (and optional click extras such as choices)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    # data
    shards: tuple[str, ...] = _opt(
        (),
        "Training shard set as DIR[:WEIGHT] or URL[:WEIGHT] (s3://, gs://, http(s)://: staged into --cache-dir) or a "
        "mixture YAML; repeat for more sources.",
    )
    eval_shards: tuple[str, ...] = _opt((), "Labelled test shard set(s) (DIR or URL) for kNN / linear-probe accuracy.")
    train_labels: tuple[str, ...] = _opt(
        (),
        "Labelled real shard set(s) giving kNN / linear-probe training "
        "features (no augmentation). Default: the labelled real --shards.",
    )
    inflation: str = _opt(
        DEFAULT_MODE,
        "How to weight generated data and weaken augmentation (loaders.recipe.policy): "
        "adainf = the release's recipe (real x10, the method's AdaInf preset; "
        "the no-inflation recipe when no generated set is given), none, vanilla, "
        "or auto (this project's extrapolation beyond the paper).",
        choices=INFLATION_MODES,
    )
    aug: str = _opt(
        "auto",
        "Augmentation: 'auto' (the inflation policy's choice), 'baseline' / 'adainf' (the "
        "method's family presets) or a preset name.",
        choices=AUG_CHOICES,
    )
    crop_min_scale: float | None = _opt(None, "RandomResizedCrop minimum area (overrides the policy/preset).")
    jitter_strength: float | None = _opt(None, "Colour-jitter strength multiplier (overrides the policy/preset).")
    jitter_p: float | None = _opt(None, "Colour-jitter probability (overrides the policy/preset).")
    image_size: int = _opt(32, "Side of the training crops and evaluation images (shard images are resized).")
    num_threads: int = _opt(LOADER_THREADS, "DALI CPU threads per process.")
    loader_device: str = _opt(
        "auto",
        "Where the DALI pipeline runs: gpu (mixed decoder, GPU ops), cpu (CPU "
        "threads, batches copied to the GPU), auto (gpu when the model is on a GPU).",
        choices=LOADER_DEVICES,
    )
    on_corrupt: str = _opt(
        "error", "What the loaders do with an undecodable sample (training and evaluation).", choices=ON_CORRUPT
    )
    cache_dir: str | None = _opt(
        None, "Node-local cache for remote shard sets (default $ADAINF_CACHE_DIR or ~/.cache/adainf-loader)."
    )
    storage_option: tuple[str, ...] = _opt(
        (),
        "fsspec storage option KEY=VALUE for remote shard sets (repeatable; saved with the run's settings: give "
        "secrets through the environment or a profile, never here).",
    )
    # model and optimisation
    method: str = _opt("simclr", "Contrastive method.", choices=tuple(METHODS))
    backbone: str = _opt("resnet18", "Backbone (CIFAR stem for the ResNets).", choices=tuple(BACKBONES))
    steps: int | None = _opt(None, f"Optimisation steps (default {DEFAULT_STEPS} unless --epochs is given).")
    epochs: int | None = _opt(None, "Train for this many epochs of the mixture instead of --steps.")
    batch_size: int = _opt(512, "Global batch size (split evenly over the DDP ranks).")
    lr: float | None = _opt(None, "Learning rate per 256 samples (scaled by batch/256). Default: the method's.")
    optimizer: str | None = _opt(
        None,
        "Optimizer. Default: the method's (LARS for simclr/byol/barlow, SGD for mocov2plus).",
        choices=("lars", "sgd"),
    )
    weight_decay: float | None = _opt(None, "Weight decay. Default: the method's.")
    warmup_steps: int = _opt(1000, "Linear warm-up steps before the cosine decay (at most a tenth of the run).")
    seed: int = _opt(0, "Seed for the model, the epoch plans and the augmentation.")
    # system
    device: str = _opt("auto", "cuda, cpu or auto (cuda when available).", choices=("auto", "cuda", "cpu"))
    precision: str = _opt(
        "auto",
        "auto (bf16 autocast on GPU, fp32 on CPU), bf16, fp16 or fp32.",
        choices=("auto", "bf16", "fp16", "fp32"),
    )
    compile: str = _opt(
        "auto",
        "torch.compile the step (the method's forward and loss, LARS's update) and the loader's colour stage "
        "(auto: on with a GPU, off on the CPU, where compiling takes tens of seconds; cudagraphs: on plus CUDA "
        "graphs for the step, one GPU without DDP). A saved true/false reads as on/off.",
        choices=COMPILE_CHOICES,
    )
    channels_last: bool = _opt(True, "channels_last memory format on GPU.")
    sync_batchnorm: bool = _opt(
        True,
        "Share BatchNorm statistics across DDP ranks (the release's "
        "sync_batchnorm: True); --no-sync-batchnorm keeps them per rank.",
    )
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
    allow_data_change: bool = _opt(
        False,
        "With --resume: continue although a source's count or content changed "
        "since the checkpoint (the epoch plan then differs).",
    )
    eval_only: bool = _opt(False, "Only evaluate --checkpoint (kNN and offline linear probe), then exit.")
    checkpoint: str | None = _opt(None, "Checkpoint for --eval-only.")
    demo: bool = _opt(False, "Build the demo mixture (if missing) and train on it with small defaults.")
    demo_data: str = _opt("runs/demo-data", "Where --demo builds / finds its shard sets.")
    progress: bool = _opt(True, "Progress bar on a terminal (elsewhere: a plain line every --log-every steps).")
    compare_random: bool = _opt(
        False,
        "After training, evaluate a randomly initialised backbone the same way "
        "and print both (what training has to beat; on by default with --demo).",
    )

    def __post_init__(self):
        if isinstance(self.compile, bool):  # configs and checkpoints written when --compile was a flag
            object.__setattr__(self, "compile", "on" if self.compile else "off")
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # YAML / JSON give lists for tuples
                object.__setattr__(self, f.name, value := tuple(value))
            if not _is_instance(value, hints[f.name]):
                raise ConfigError(f"setting {f.name}={value!r}: expected {_type_name(hints[f.name])}")
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ConfigError(f"setting {f.name}={value!r}: expected one of {', '.join(choices)}")

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        """Settings from a saved dict; an unknown key or a wrong type is a ConfigError."""
        d = dict(d)
        if d.pop("jitter_impl", "exact") != "exact":  # retired: the colour stage is torchvision's exact jitter, fast
            raise ConfigError(
                "jitter_impl: fused is gone (the exact colour jitter now runs as fast); remove the key to train with it"
            )
        unknown = sorted(set(d) - set(names()))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: see `python train.py --help`")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Checks no single field can make: ranges, and options that exclude each other."""
        for name in ("batch_size", "log_every", "knn_k", "eval_batch_size", "num_threads", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)}: must be at least 1")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name} {v}: must be at least 1")
        for name in (
            "warmup_steps",
            "eval_every",
            "ckpt_every",
            "keep_every",
            "knn_train_limit",
            "eval_limit",
            "probe_epochs",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)}: must be 0 or more")
        for name in ("lr", "weight_decay", "crop_min_scale", "jitter_strength", "jitter_p"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ConfigError(f"--{_flag(name)} {v}: must be a finite number")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give --steps or --epochs, not both")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size {self.batch_size}: contrastive losses need at least 2 samples")


def names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Settings))


def read_yaml(path: str | Path) -> dict:
    """The settings mapping of a YAML file: plain ``{name: value}``, or a run's ``config.yaml``
    (``{settings: {...}, resolved: {...}}``, of which only ``settings`` is read)."""
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"--config {p}: cannot read it ({e.strerror}); check the path") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(doc, dict) and isinstance(doc.get("settings"), dict):  # a run's config.yaml: its recipe,
        doc = {k: v for k, v in doc["settings"].items() if k not in RUN_IDENTITY}  # not its directory or state
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {p}: expected a mapping of settings (name: value), e.g. a run's config.yaml")
    unknown = sorted(set(doc) - set(names()))
    if unknown:
        raise ConfigError(f"--config {p}: unknown setting(s) {', '.join(unknown)}; see `python train.py --help`")
    return doc


# Settings of a run's config.yaml that name that run, not its recipe: not taken by --config.
RUN_IDENTITY = ("out", "resume", "eval_only", "checkpoint", "allow_data_change")
# Defaults of --demo for every option the user did not give: a few minutes on a 2-core CPU.
DEMO_DEFAULTS = dict(
    method="simclr",
    batch_size=128,
    steps=300,
    warmup_steps=30,
    eval_every=0,
    log_every=10,
    ckpt_every=100,
    knn_k=50,
    knn_train_limit=2000,
    eval_limit=1000,
    probe_epochs=30,
    eval_batch_size=256,
    inflation="adainf",
    aug="auto",
)
# On a CPU a ResNet-18 cannot learn in minutes: the demo trains the small convnet backbone instead.
DEMO_CPU_DEFAULTS = dict(backbone="convnet", batch_size=128, steps=500, warmup_steps=50, log_every=10, ckpt_every=100)
# Settings that may differ from the checkpoint's when resuming (everything else must match).
RESUME_MAY_CHANGE = (
    "cache_dir",
    "storage_option",
    "steps",
    "epochs",
    "device",
    "loader_device",
    "num_threads",
    "compile",
    "eval_every",
    "log_every",
    "compare_random",
    "ckpt_every",
    "keep_every",
    "progress",
    "resume",
    "out",
    "eval_limit",
    "knn_train_limit",
    "probe_epochs",
    "eval_batch_size",
    "on_corrupt",
    "allow_data_change",
)


# ----------------------------------------------------------------------------------------------------
# Types and the command line
# ----------------------------------------------------------------------------------------------------
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


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _click_option(f: dataclasses.Field, hint):
    name = "--" + _flag(f.name)
    kwargs = {"help": f.metadata["help"], "show_default": f.default not in (None, ())}
    if typing.get_origin(hint) is tuple:
        return click.option(name, f.name, multiple=True, type=str, **kwargs)
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if base is bool:
        return click.option(f"{name}/--no-{_flag(f.name)}", f.name, default=f.default, **kwargs)
    choices = f.metadata.get("choices")
    return click.option(name, f.name, type=click.Choice(choices) if choices else base, default=f.default, **kwargs)


def click_options(fn):
    """Decorate a click command with one option per Settings field (same name, type, default and help)."""
    hints = typing.get_type_hints(Settings)
    for f in reversed(dataclasses.fields(Settings)):
        fn = _click_option(f, hints[f.name])(fn)
    return fn
