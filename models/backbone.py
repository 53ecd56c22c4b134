"""Backbones: torchvision ResNets with the CIFAR stem (3×3 stride-1 conv1, no max-pool, no fc).

The AdaInf release (a solo-learn fork) replaces conv1 by a 3×3 stride-1 convolution and the max-pool by
an identity so that 32×32 images keep a 4×4 map at layer4.  (The release pads conv1 by 2, a solo-learn
quirk that grows the map to 34×34; we use the usual padding 1.)  The classifier is removed, so the module
returns pooled features: 512-d for ResNet-18, 2048-d for ResNet-50.
"""
from __future__ import annotations

import torch.nn as nn
import torchvision

BACKBONES = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
}


def build_backbone(name: str = "resnet18", cifar_stem: bool = True, zero_init_residual: bool = False) -> nn.Module:
    """A randomly initialised ResNet returning (B, feat_dim) features; ``module.feat_dim`` holds the width."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    factory, feat_dim = BACKBONES[name]
    net = factory(weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.feat_dim = feat_dim
    return net
