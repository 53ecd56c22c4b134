"""SimCLR (Chen et al. 2020): NT-Xent between the projections of two views.

Release defaults (AdaInf, CIFAR): projector 512→2048→ReLU→256 (no BatchNorm), temperature 0.2, LARS with
lr 0.2 per 256 (0.4 at batch 512), eta 0.02, clip_lr, weight decay 1e-4, probe lr 0.05 per 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.heads import mlp
from models.losses import nt_xent
from models.methods.base import Method, MethodConfig


@dataclass(frozen=True)
class SimCLRConfig(MethodConfig):
    optimizer: str = "lars"
    lr: float = 0.2
    probe_lr: float = 0.05
    weight_decay: float = 1e-4
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    temperature: float = 0.2


class SimCLR(Method):
    Config = SimCLRConfig
    name = "simclr"
    aug_family = "symmetric"  # its augmentation presets (loaders.recipe.augment), as the release's config

    def __init__(self, cfg: SimCLRConfig):
        super().__init__(cfg)
        self.projector = mlp(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim, batch_norm=False)

    def ssl_loss(self, feats: list[torch.Tensor], views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        z = [self.projector(f) for f in feats]
        # more than two views: every ordered pair of views, averaged
        pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
        loss = sum(nt_xent(z[i], z[j], self.cfg.temperature) for i, j in pairs) / len(pairs)
        return loss, {}
