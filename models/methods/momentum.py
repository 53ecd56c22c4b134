"""The second base of momentum methods (MoCo v2+, BYOL): target copies updated by EMA after each step.

A subclass builds its online heads, then calls ``add_momentum_pair(online)`` which returns a frozen copy;
the backbone pair is registered here.  ``on_train_step_end(step, total)`` moves every target towards its
online module with tau(step) (no state: resuming at a step gives the same tau), on the cosine schedule
``tau(step) = final - (final - base) * (cos(pi * step / total) + 1) / 2``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from models.methods.base import Method, MethodConfig


def momentum_tau(step: int, total_steps: int, base_tau: float, final_tau: float) -> float:
    """Cosine increase of the EMA momentum from ``base_tau`` (step 0) to ``final_tau`` (step total)."""
    if total_steps <= 0:
        return final_tau
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * progress) + 1) / 2


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@dataclass(frozen=True)
class MomentumConfig(MethodConfig):
    base_tau: float = 0.99
    final_tau: float = 1.0


class MomentumMethod(Method):
    Config = MomentumConfig

    def __init__(self, cfg: MomentumConfig):
        super().__init__(cfg)
        self._pairs: list[tuple[str, str]] = []
        self.momentum_backbone = self.add_momentum_pair("backbone")
        # tau of the next EMA update, for logging (the schedule itself is a function of the step)
        self.register_buffer("tau", torch.tensor(cfg.base_tau, dtype=torch.float32))

    def add_momentum_pair(self, online_name: str) -> nn.Module:
        """A frozen copy of ``self.<online_name>``; assign it to ``self.momentum_<online_name>``."""
        self._pairs.append((online_name, f"momentum_{online_name}"))
        return frozen_copy(getattr(self, online_name))

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, a), getattr(self, b)) for a, b in self._pairs]

    @torch.no_grad()
    def momentum_forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.momentum_backbone(v) for v in views]

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        """``target = tau * target + (1 - tau) * online`` for every pair: one multi-tensor ``_foreach_lerp_``."""
        online, target = [], []
        for a, b in self.momentum_pairs:
            online += list(a.parameters())
            target += list(b.parameters())
        torch._foreach_lerp_(target, online, 1.0 - tau)

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """EMA update with tau(step), ``step`` being the 0-based index of the optimizer step just taken."""
        self.ema_update(momentum_tau(step, total_steps, self.cfg.base_tau, self.cfg.final_tau))
        self.tau.fill_(momentum_tau(step + 1, total_steps, self.cfg.base_tau, self.cfg.final_tau))

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict:
        out = super().training_step(views, labels)
        out["tau"] = self.tau.detach().float()
        return out
