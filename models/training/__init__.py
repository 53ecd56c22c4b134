"""The training engine that ``train.py`` and ``bench/`` share; ``train.py`` reads as its walk-through.

Modules: ``settings`` (Settings, the CLI options), ``runtime`` (device, precision, DDP, RNG), ``data``
(DataPlan: inputs checked, recipe resolved, loaders), ``trainer`` (step / fit), ``evaluation`` (kNN, online
and offline probes), ``checkpoint`` (atomic save / load), ``metrics`` (metrics.jsonl, TensorBoard,
progress), ``rundir`` (the run directory, never clobbered), ``compiling`` (``--compile``).
"""

from __future__ import annotations

from models import METHODS, build_method
from models.training.checkpoint import CheckpointError, save_checkpoint
from models.training.data import DataPlan, plan_data, plan_eval
from models.training.evaluation import Evaluator, format_result
from models.training.metrics import Progress, read_records
from models.training.rundir import RunDir
from models.training.runtime import Runtime, seed_everything, setup_runtime
from models.training.trainer import Interrupted, NonFiniteLoss, Trainer


def build_method_for(settings, num_classes: int):
    """The method of ``settings`` (a Settings) with its optimisation overrides (lr, optimizer, weight decay)."""
    from shards.base.errors import ConfigError

    overrides = {
        k: getattr(settings, k) for k in ("lr", "optimizer", "weight_decay") if getattr(settings, k) is not None
    }
    try:
        return build_method(settings.method, num_classes=num_classes, backbone=settings.backbone, **overrides)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def aug_family(method: str) -> str:
    """The augmentation family the method declares (its no-inflation and AdaInf presets)."""
    return METHODS[method].aug_family


__all__ = [
    "CheckpointError",
    "DataPlan",
    "Evaluator",
    "Interrupted",
    "NonFiniteLoss",
    "Progress",
    "RunDir",
    "Runtime",
    "Trainer",
    "aug_family",
    "build_method_for",
    "format_result",
    "plan_data",
    "plan_eval",
    "read_records",
    "save_checkpoint",
    "seed_everything",
    "setup_runtime",
]
