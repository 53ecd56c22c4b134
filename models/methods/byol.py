"""BYOL (Grill et al. 2020): an online projector + predictor regress the momentum target's projection.

Release defaults (AdaInf, CIFAR): projector 512→4096(BN,ReLU)→256, predictor 256→4096(BN,ReLU)→256,
momentum 0.99→1.0 (cosine), LARS lr 0.5 per 256 (1.0 at batch 512), eta 0.02, clip_lr, weight decay 1e-5,
probe lr 0.05 per 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.heads import mlp
from models.losses import byol_loss
from models.methods.momentum import MomentumConfig, MomentumMethod


@dataclass(frozen=True)
class BYOLConfig(MomentumConfig):
    optimizer: str = "lars"
    lr: float = 0.5
    probe_lr: float = 0.05
    weight_decay: float = 1e-5
    base_tau: float = 0.99
    final_tau: float = 1.0
    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096


class BYOL(MomentumMethod):
    Config = BYOLConfig
    name = "byol"
    aug_family = "asymmetric"  # its augmentation presets (loaders.recipe.augment), as the release's config

    def __init__(self, cfg: BYOLConfig):
        super().__init__(cfg)
        self.projector = mlp(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.momentum_projector = self.add_momentum_pair("projector")
        self.predictor = mlp(cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim)

    def ssl_loss(self, feats: list[torch.Tensor], views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        p = [self.predictor(self.projector(f)) for f in feats]
        with torch.no_grad():
            z_t = [self.momentum_projector(f) for f in self.momentum_forward(views)]
        # every view predicts every other view's target (two views: the symmetric BYOL loss)
        pairs = [(i, j) for i in range(len(p)) for j in range(len(p)) if i != j]
        loss = sum(byol_loss(p[i], z_t[j]) for i, j in pairs) / len(pairs) * 2
        return loss, {}
