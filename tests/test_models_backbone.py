"""models/backbone.py: the CIFAR ResNet-18 stem and feature shape; ResNet-50 selectable."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models.backbone import build_backbone


def test_resnet18_cifar_stem_and_feature_shape():
    net = build_backbone("resnet18")
    assert net.feat_dim == 512
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    assert isinstance(net.maxpool, nn.Identity) and isinstance(net.fc, nn.Identity)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 512)
    # the stem keeps the resolution: 32x32 -> 4x4 at layer4
    x = net.layer1(net.relu(net.bn1(net.conv1(torch.randn(1, 3, 32, 32)))))
    assert x.shape[-2:] == (32, 32)


def test_resnet50_is_selectable():
    net = build_backbone("resnet50")
    assert net.feat_dim == 2048 and isinstance(net.maxpool, nn.Identity)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 2048)
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("vgg11")
