"""models/training/evaluation.py: the kNN classifier, the linear probe and feature extraction."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from models.backbone import build_backbone
from models.training.evaluation import extract_features, knn_accuracy, linear_probe


def _clusters(n_per_class, num_classes=5, dim=32, spread=0.3, seed=0):
    """Gaussian clusters around random centres: (features, labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_knn_separable_is_perfect_and_random_labels_are_chance():
    feats, labels = _clusters(60)
    train_x, train_y = feats[::3].clone(), labels[::3].clone()
    keep = torch.arange(len(labels)) % 3 != 0
    test_x, test_y = feats[keep], labels[keep]
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20, T=0.1, num_classes=5, chunk_size=7) == 1.0
    # random labels on random features: chance (10 classes -> ~0.1)
    torch.manual_seed(0)
    rx, ry = torch.randn(2000, 16), torch.randint(0, 10, (2000,))
    tx, ty = torch.randn(1000, 16), torch.randint(0, 10, (1000,))
    acc = knn_accuracy(rx, ry, tx, ty, k=200, T=0.1, num_classes=10)
    assert 0.05 < acc < 0.16


def test_knn_weighted_vote_hand_example():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # k=3: class 1 has two voters but class 0's neighbour is much closer; with T=0.01 the weight wins
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=3, T=0.01, num_classes=2) == 1.0
    # with a very high temperature the votes are nearly uniform: the majority (class 1) wins
    assert knn_accuracy(train, labels, query, torch.tensor([1]), k=3, T=100.0, num_classes=2) == 1.0
    # k larger than the training set is clamped
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=200, T=0.01, num_classes=2) == 1.0


def test_linear_probe_beats_chance_on_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 64, generator=g)
    y = torch.arange(4).repeat_interleave(100)
    x = centres[y] + 0.8 * torch.randn(len(y), 64, generator=g) + 5.0  # offset removed by standardising
    ty = torch.arange(4).repeat_interleave(50)
    tx = centres[ty] + 0.8 * torch.randn(len(ty), 64, generator=g) + 5.0
    acc = linear_probe(x, y, tx, ty, epochs=20, batch_size=64, num_classes=4)
    assert acc > 0.9
    # random labels: no better than chance on the test set
    acc_rand = linear_probe(x, torch.randint(0, 4, (400,), generator=g), tx, ty, epochs=5, num_classes=4)
    assert acc_rand < 0.5


def test_extract_features_drops_unlabelled_and_restores_mode():
    torch.manual_seed(0)
    net = build_backbone("resnet18")
    net.train()
    images = torch.randn(6, 3, 8, 8)
    batches = [
        (images[:3], torch.tensor([0, -1, 2])),
        SimpleNamespace(images=images[3:], labels=torch.tensor([-1, 4, 5])),
    ]
    feats, labels = extract_features(net, batches, "cpu")
    assert feats.shape == (4, 512) and feats.dtype == torch.float32
    assert labels.tolist() == [0, 2, 4, 5]
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        expected = net(images)[[0, 2, 4, 5]]
    assert torch.allclose(feats, expected, atol=1e-5)  # eval-mode BN: per-sample features
    all_feats, all_labels = extract_features(
        net, [SimpleNamespace(views=[images], labels=torch.tensor([-1] * 6))], "cpu", labelled_only=False
    )
    assert all_feats.shape == (6, 512) and all_labels.tolist() == [-1] * 6
    with pytest.raises(ValueError, match="no batch"):
        extract_features(net, [], "cpu")
    with pytest.raises(TypeError, match="images"):
        extract_features(nn.Identity(), [object()], "cpu")
