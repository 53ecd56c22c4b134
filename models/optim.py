"""Optimizers and the learning-rate schedule.

``LARS`` follows solo-learn's wrapper: SGD with momentum where each weight's step is scaled by the trust
ratio ``eta * |w| / (|g| + wd * |w|)`` (clipped at 1 relative to the group lr with ``clip_lr``); biases and
norm parameters (ndim <= 1) get neither adaptation nor weight decay when ``exclude_bias_norm``; groups
with ``lars=False`` (the online probe, the no-decay group) are plain SGD.  No host synchronisation.

Learning rates are given per 256 samples and scaled linearly by ``batch_size / 256``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR


class LARS(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        clip_lr: bool = True,
        exclude_bias_norm: bool = True,
        eps: float = 1e-8,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, momentum >= 0, weight_decay >= 0, eta > 0; got "
                f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            clip_lr=clip_lr,
            exclude_bias_norm=exclude_bias_norm,
            eps=eps,
            lars=True,
        )
        super().__init__(params, defaults)

    @staticmethod
    def adapts(group: dict, p: torch.Tensor) -> bool:
        """Whether ``p`` in ``group`` gets the LARS trust ratio and weight decay."""
        return bool(group["lars"]) and not (group["exclude_bias_norm"] and p.ndim <= 1)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if self.adapts(group, p):
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(d_p)
                    trust = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                    if group["clip_lr"]:
                        trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
                    ok = (p_norm > 0) & (g_norm > 0)
                    # solo-learn: a zero weight or zero gradient leaves the raw gradient (no wd, no scaling)
                    d_p = torch.where(ok, (d_p + wd * p) * trust, d_p)
                elif not group["lars"] and wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                if mom != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(mom).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-lr)
        return loss


def build_optimizer(
    method,
    name: str | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 256,
    probe_lr: float | None = None,
    momentum: float | None = None,
    eta: float | None = None,
    clip_lr: bool | None = None,
    exclude_bias_norm: bool | None = None,
) -> torch.optim.Optimizer:
    """The method's optimizer with its release defaults (``method.cfg``) unless overridden.

    ``lr`` and ``probe_lr`` are per 256 samples and are multiplied by ``batch_size / 256`` (the global
    batch).  The probe is its own group: probe lr, no weight decay, never LARS-adapted.
    """
    cfg = method.cfg
    name = (name or cfg.optimizer).lower()
    scale = batch_size / 256
    lr = (cfg.lr if lr is None else lr) * scale
    probe_lr = (cfg.probe_lr if probe_lr is None else probe_lr) * scale
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    momentum = cfg.momentum if momentum is None else momentum
    exclude = cfg.exclude_bias_norm if exclude_bias_norm is None else exclude_bias_norm
    groups = method.param_groups(exclude_bias_norm=exclude)
    for g in groups:
        g["lr"] = probe_lr if g["probe"] else lr
        g.setdefault("weight_decay", wd)
    if name == "lars":
        return LARS(
            groups,
            lr=lr,
            momentum=momentum,
            weight_decay=wd,
            eta=cfg.lars_eta if eta is None else eta,
            clip_lr=cfg.lars_clip_lr if clip_lr is None else clip_lr,
            exclude_bias_norm=exclude,
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: lars, sgd")


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float, final_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps (``base_lr * (step + 1) / (warmup + 1)``, never 0), then a half
    cosine from ``base_lr`` at step ``warmup`` to ``final_lr`` at step ``total`` (held after)."""
    if step < warmup:
        return base_lr * (step + 1) / (warmup + 1)
    if total <= warmup:
        return final_lr
    progress = min((step - warmup) / (total - warmup), 1.0)
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class WarmupCosine:
    """The ``warmup_cosine`` factor (lr / base lr) as a picklable callable for ``LambdaLR``."""

    total: int
    warmup: int
    final_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.warmup, 1.0, self.final_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, final_lr_ratio: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` applying the warm-up + cosine factor to every group's lr (probe included, as in
    solo-learn).  Call ``scheduler.step()`` after each ``optimizer.step()``; its state_dict resumes it."""
    if total_steps <= 0 or warmup_steps < 0:
        raise ValueError(f"need total_steps > 0 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, final_lr_ratio))
