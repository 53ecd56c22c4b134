"""Barlow Twins (Zbontar et al. 2021): push the cross-correlation of two views' embeddings to identity.

Release defaults (AdaInf, CIFAR): projector 512→2048→2048→2048 (BN, ReLU on the hidden layers),
lambda 0.0051, loss scale 0.1, LARS lr 0.15 per 256 (0.3 at batch 512), eta 0.02, clip_lr, weight decay
1e-4, probe lr 0.05 per 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.heads import mlp
from models.losses import barlow_loss
from models.methods.base import Method, MethodConfig


@dataclass(frozen=True)
class BarlowTwinsConfig(MethodConfig):
    optimizer: str = "lars"
    lr: float = 0.15
    probe_lr: float = 0.05
    weight_decay: float = 1e-4
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    lamb: float = 0.0051
    scale_loss: float = 0.1


class BarlowTwins(Method):
    Config = BarlowTwinsConfig
    name = "barlow"
    aug_family = "asymmetric"  # its augmentation presets (loaders.recipe.augment), as the release's config

    def __init__(self, cfg: BarlowTwinsConfig):
        super().__init__(cfg)
        self.projector = mlp(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim, num_layers=3)

    def ssl_loss(self, feats: list[torch.Tensor], views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        z = [self.projector(f) for f in feats]
        pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
        loss = sum(barlow_loss(z[i], z[j], self.cfg.lamb, self.cfg.scale_loss) for i, j in pairs) / len(pairs)
        return loss, {}
