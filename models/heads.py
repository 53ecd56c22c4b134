"""Projection and prediction heads (MLPs) used by the methods."""

from __future__ import annotations

import torch.nn as nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True) -> nn.Sequential:
    """``num_layers`` linear layers; every hidden layer is Linear → (BatchNorm1d) → ReLU, the last is Linear.

    SimCLR / MoCo v2+ projectors: ``mlp(512, 2048, 256, batch_norm=False)``; BYOL projector and predictor:
    ``mlp(d, 4096, 256)``; Barlow Twins: ``mlp(512, 2048, 2048, num_layers=3)``.
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
