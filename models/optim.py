"""Optimizers and the learning-rate schedule.

``LARS`` follows solo-learn's wrapper: SGD with momentum where each weight's step is scaled by the trust
ratio ``eta * |w| / (|g| + wd * |w|)`` (clipped at 1 relative to the group lr with ``clip_lr``); biases and
norm parameters (ndim <= 1) get neither adaptation nor weight decay when ``exclude_bias_norm``; groups
with ``lars=False`` (the online probe, the no-decay group) are plain SGD.  No host synchronisation.
Both optimizers run multi-tensor kernels, not a Python loop of small kernels per parameter: LARS's update is
written with ``torch._foreach_*`` (and can be compiled, ``LARS.compile``), SGD is PyTorch's fused kernel on a
GPU and its ``foreach`` one on the CPU.

Learning rates are given per 256 samples and scaled linearly by ``batch_size / 256``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.optim.lr_scheduler import LambdaLR


class LARS(torch.optim.Optimizer):
    """LARS as solo-learn's (see the module docstring), computed as multi-tensor (``torch._foreach_*``) kernels.

    Per group, the parameters with a gradient split into the LARS-adapted ones (trust ratio and weight decay)
    and the rest (plain SGD: the group's weight decay when ``lars=False``, none for excluded biases and norm
    parameters of a LARS group); every norm, trust ratio, direction, momentum and parameter update is one
    multi-tensor operation over the group instead of a Python loop of small kernels per tensor.  Eager, the
    arithmetic is the per-tensor loop's, operation for operation (bitwise the same parameters on the CPU,
    tested against that loop).  ``compile()`` runs the update through ``torch.compile``; the learning rate then
    enters as a 0-d tensor on the parameters' device, refreshed from ``group["lr"]`` each step, so the schedule
    causes no recompilation or CUDA-graph re-capture.  The state is ``momentum_buffer`` per parameter, as
    before, so checkpoints of either implementation load into the other.
    """

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
        self._update = lars_update
        self.compiled = False
        self._static = False  # CUDA graphs: buffers and the lr tensors at fixed addresses
        self._lr: dict[tuple[int, torch.device], torch.Tensor] = {}  # per (group, device): the lr as a 0-d tensor

    @staticmethod
    def adapts(group: dict, p: torch.Tensor) -> bool:
        """Whether ``p`` in ``group`` gets the LARS trust ratio and weight decay."""
        return bool(group["lars"]) and not (group["exclude_bias_norm"] and p.ndim <= 1)

    def compile(self, **options) -> LARS:
        """Run the update through ``torch.compile(**options)`` from the next step on (one graph for all groups;
        static shapes unless ``dynamic`` is given: the parameters' shapes are fixed). With
        ``mode="reduce-overhead"`` (CUDA graphs) parameters, buffers and lr tensors are marked as static
        addresses, so that the graphs may update them in place."""
        options.setdefault("dynamic", False)
        self._update = torch.compile(lars_update, **options)
        self.compiled = True
        self._static = options.get("mode") == "reduce-overhead"
        if self._static:
            for group in self.param_groups:
                for p in group["params"]:
                    torch._dynamo.mark_static_address(p)
        return self

    def _new_state(self, t: torch.Tensor) -> torch.Tensor:
        """``t``, marked as a static address under CUDA graphs (a buffer loaded from a checkpoint included)."""
        if self._static and not hasattr(t, "_dynamo_static_input_type"):
            torch._dynamo.mark_static_address(t)
        return t

    def _lr_tensor(self, i: int, group: dict, device: torch.device) -> torch.Tensor:
        key = (i, device)
        t = self._lr.get(key)
        if t is None:
            t = self._lr[key] = self._new_state(torch.zeros((), dtype=torch.float32, device=device))
        t.fill_(group["lr"])
        return t

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = []
        for i, group in enumerate(self.param_groups):
            with_grad = [p for p in group["params"] if p.grad is not None]
            if not with_grad:
                continue
            adapted = [p for p in with_grad if self.adapts(group, p)]
            plain = [p for p in with_grad if not self.adapts(group, p)]
            bufs = []
            if group["momentum"] != 0:
                for p in adapted + plain:
                    state = self.state[p]
                    if "momentum_buffer" not in state:  # zeros: the first update makes it d exactly
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    bufs.append(self._new_state(state["momentum_buffer"]))
            lr = self._lr_tensor(i, group, with_grad[0].device) if self.compiled else float(group["lr"])
            groups.append(
                LarsGroup(
                    adapted,
                    [p.grad for p in adapted],
                    plain,
                    [p.grad for p in plain],
                    bufs,
                    lr,
                    weight_decay=float(group["weight_decay"]),
                    momentum=float(group["momentum"]),
                    eta=float(group["eta"]),
                    eps=float(group["eps"]),
                    clip_lr=bool(group["clip_lr"]),
                    plain_decay=not group["lars"],
                )
            )
        self._update(groups)
        return loss


class LarsGroup(NamedTuple):
    """One group's step: ``adapted`` parameters get the trust ratio ``eta |w| / (|g| + wd |w| + eps)`` (divided
    by ``lr`` and clipped at 1 with ``clip_lr``) applied to ``g + wd w``, except where ``|w|`` or ``|g|`` is 0
    (solo-learn: then the raw gradient); ``plain`` ones SGD directions, ``g + wd w`` when ``plain_decay`` else
    ``g``. ``bufs``: the momentum buffers of ``adapted + plain`` (empty when ``momentum`` is 0). ``lr``: a float,
    or a 0-d tensor when compiled."""

    adapted: list[torch.Tensor]
    adapted_grads: list[torch.Tensor]
    plain: list[torch.Tensor]
    plain_grads: list[torch.Tensor]
    bufs: list[torch.Tensor]
    lr: float | torch.Tensor
    weight_decay: float
    momentum: float
    eta: float
    eps: float
    clip_lr: bool
    plain_decay: bool


def lars_update(groups: list[LarsGroup]) -> None:
    """One LARS step of every group, in place, with multi-tensor operations (compiled: one graph)."""
    for g in groups:
        _lars_group_update(g)


def _lars_group_update(g: LarsGroup) -> None:
    lr, wd = g.lr, g.weight_decay
    dirs: list[torch.Tensor] = []
    if g.adapted:
        p_norm = torch.stack(torch._foreach_norm(g.adapted))
        g_norm = torch.stack(torch._foreach_norm(g.adapted_grads))
        trust = g.eta * p_norm / (g_norm + wd * p_norm + g.eps)
        if g.clip_lr and torch.is_tensor(lr):
            trust = torch.where(lr > 0, torch.clamp(trust / lr, max=1.0), torch.ones_like(trust))
        elif g.clip_lr:
            trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
        ok = (p_norm > 0) & (g_norm > 0)
        scale = torch.where(ok, trust, torch.ones_like(trust))
        decay = torch.where(ok, torch.full_like(trust, wd), torch.zeros_like(trust))
        dirs = list(torch._foreach_add(g.adapted_grads, torch._foreach_mul(g.adapted, decay.unbind(0))))
        torch._foreach_mul_(dirs, scale.unbind(0))
    if g.plain:
        decayed = g.plain_decay and wd != 0
        dirs += list(torch._foreach_add(g.plain_grads, g.plain, alpha=wd)) if decayed else list(g.plain_grads)
    if g.momentum != 0:
        torch._foreach_mul_(g.bufs, g.momentum)
        torch._foreach_add_(g.bufs, dirs)
        dirs = g.bufs
    if torch.is_tensor(lr):
        torch._foreach_add_(g.adapted + g.plain, torch._foreach_mul(dirs, -lr))
    else:  # the per-tensor loop's p.add_(d, alpha=-lr), bitwise
        torch._foreach_add_(g.adapted + g.plain, dirs, alpha=-lr)


LR_REFERENCE_BATCH = 256  # learning rates are given per this many samples (the release's linear scaling rule)


def scaled_lr(lr_per_256: float, batch_size: int) -> float:
    """The learning rate a global batch of ``batch_size`` trains with: ``lr_per_256 * batch_size / 256``."""
    return lr_per_256 * batch_size / LR_REFERENCE_BATCH


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
    lr = scaled_lr(cfg.lr if lr is None else lr, batch_size)
    probe_lr = scaled_lr(cfg.probe_lr if probe_lr is None else probe_lr, batch_size)
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
    if name == "sgd":  # multi-tensor kernels: fused on a GPU, foreach on the CPU
        fused = all(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=wd, fused=fused, foreach=not fused)
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
