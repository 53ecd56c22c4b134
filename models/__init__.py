"""Backbones, heads, losses, contrastive methods, optimizers and evaluation; ``models.training`` trains them.

Backbones, heads, losses and methods never choose a device, a precision, compilation or DDP: the training
engine (``models.training``, the only part of ``models`` that knows ``loaders``) does.

    method = build_method("simclr", num_classes=10, backbone="resnet18", temperature=0.5)
    opt = build_optimizer(method, batch_size=512)          # lr, optimizer and wd from method.cfg
    sched = build_scheduler(opt, total_steps, warmup_steps)
"""

from __future__ import annotations

from models.backbone import BACKBONES, build_backbone
from models.methods import METHODS, Method
from models.methods.base import make_config
from models.optim import LARS, build_optimizer, build_scheduler, warmup_cosine

ALIASES = {"moco": "mocov2plus", "mocov2": "mocov2plus", "barlow_twins": "barlow", "barlowtwins": "barlow"}


def method_class(name: str) -> type[Method]:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in METHODS:
        choices = sorted(METHODS) + sorted(ALIASES)
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(choices)}")
    return METHODS[key]


def build_method(name: str, num_classes: int = 10, backbone: str = "resnet18", **overrides) -> Method:
    """The method ``name`` with its release defaults, overridden by ``overrides`` (unknown key or wrong
    type: ValueError).  ``method.cfg`` is the resolved frozen config."""
    cls = method_class(name)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    cfg = make_config(cls.Config, num_classes=num_classes, backbone=backbone, **overrides)
    return cls(cfg)


__all__ = [
    "BACKBONES",
    "LARS",
    "METHODS",
    "Method",
    "build_backbone",
    "build_method",
    "build_optimizer",
    "build_scheduler",
    "method_class",
    "warmup_cosine",
]
