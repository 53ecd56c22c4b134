"""Backbones: torchvision ResNets with the CIFAR stem (3×3 stride-1 conv1, no max-pool, no fc).

The AdaInf release (a solo-learn fork) replaces conv1 by a 3×3 stride-1 convolution and the max-pool by
an identity so that 32×32 images keep a 4×4 map at layer4.  (The release pads conv1 by 2, a solo-learn
quirk that grows the map to 34×34; we use the usual padding 1.)  The classifier is removed, so the module
returns pooled features: 512-d for ResNet-18, 2048-d for ResNet-50.

``convnet`` is a small VGG-style network (airbench-like: conv-BN-ReLU stages with max-pooling, 256-d
features, about 1/30 of ResNet-18's FLOPs at 32×32) for CPU demos and tests, where a ResNet-18 cannot
train in minutes. It is not a paper setting.
"""

from __future__ import annotations

import torch.nn as nn
import torchvision


class ConvNet(nn.Module):
    """conv3×3-BN-ReLU stages of ``widths`` channels, 2×2 max-pool between stages, global average pool."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.net(x)


def _convnet(weights=None, zero_init_residual=False) -> nn.Module:
    return ConvNet()


BACKBONES = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
    "convnet": (_convnet, 256),
}


def build_backbone(name: str = "resnet18", cifar_stem: bool = True, zero_init_residual: bool = False) -> nn.Module:
    """A randomly initialised ResNet returning (B, feat_dim) features; ``module.feat_dim`` holds the width."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    factory, feat_dim = BACKBONES[name]
    net = factory(weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem and hasattr(net, "conv1"):
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.feat_dim = feat_dim
    return net
