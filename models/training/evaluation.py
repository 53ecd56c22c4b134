"""Evaluation of a backbone: feature extraction, weighted kNN and an offline linear probe (the functions), and
the run's :class:`Evaluator` (kNN monitor and online probe at intervals, offline linear probe at the end).

Accuracies are fractions in [0, 1]. Training features come from labelled real samples only:
``extract_features`` drops samples with label < 0 unless told otherwise. The loaders of the labelled training
features (``--train-labels``) and of the test sets (``--eval-shards``) are built once, when the ``Evaluator``
is made at start-up: opening them reads and checks every shard's index, so a damaged evaluation set stops the
run before training, not after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _images_labels(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from an ``(images, labels)`` pair or a batch object with ``images``/``views`` and
    ``labels`` (the first view is used)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    labels = getattr(batch, "labels", None)
    images = getattr(batch, "images", None)
    if images is None and getattr(batch, "views", None) is not None:
        images = batch.views[0]
    if images is None or labels is None:
        raise TypeError(
            f"cannot read images and labels from a {type(batch).__name__}; "
            "yield (images, labels) pairs or objects with .images (or .views) and .labels"
        )
    return images, labels


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    labelled_only: bool = True,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) long, on ``device``, of every batch of ``loader`` with the
    backbone in eval mode (its mode is restored).  ``labelled_only`` drops samples with label < 0."""
    device = torch.device(device)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            x, y = _images_labels(batch)
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(device, dtype=torch.long, non_blocking=True).reshape(-1)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                f = backbone(x)
            f = f.float()
            if labelled_only:
                keep = y >= 0
                f, y = f[keep], y[keep]
            feats.append(f)
            labels.append(y)
    finally:
        backbone.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batch")
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    T: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> float:
    """Weighted kNN (InstDisc / solo-learn): cosine similarity, the k nearest training samples vote for
    their class with weight exp(sim / T); accuracy of the top vote.  Test samples in chunks."""
    if train_feats.shape[0] == 0 or test_feats.shape[0] == 0:
        raise ValueError("knn_accuracy needs at least one training and one test sample")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_feats.float(), dim=1)
    train_labels = train_labels.to(train.device, torch.long)
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, test_feats.shape[0], chunk_size):
        q = F.normalize(test_feats[start : start + chunk_size].to(train.device).float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        weights = (sim / T).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        pred = votes.argmax(dim=1)
        correct += int((pred == test_labels[start : start + chunk_size].to(train.device)).sum())
    return correct / test_feats.shape[0]


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 512,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    num_classes: int | None = None,
    seed: int = 0,
) -> float:
    """Offline linear probe on precomputed frozen features: features standardised with the training
    mean/std (a BatchNorm without affine, frozen), one linear layer trained with SGD + cosine lr for
    ``epochs`` epochs of shuffled mini-batches; returns test accuracy."""
    if train_feats.shape[0] == 0:
        raise ValueError("linear_probe needs at least one training sample")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    device = train_feats.device
    x = train_feats.float()
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False) + 1e-6
    x = (x - mean) / std
    y = train_labels.to(device, torch.long)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layer = nn.Linear(x.shape[1], num_classes).to(device)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.01)
        layer.bias.zero_()
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen).to(device)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(layer(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        xt = (test_feats.to(device).float() - mean) / std
        pred = layer(xt).argmax(dim=1)
        return float((pred == test_labels.to(device)).float().mean())


class Evaluator:
    def __init__(self, plan, settings, runtime):
        self.settings, self.runtime = settings, runtime
        self.train_loader = plan.eval_loader(plan.train_labels, settings, runtime, settings.knn_train_limit)
        self.test_loader = plan.eval_loader(plan.eval_shards, settings, runtime, settings.eval_limit)

    def describe(self, probe_epochs: int = 0) -> str:
        """What an evaluation does, said before it starts (it can take a minute): ``evaluating on N test
        images (kNN over M labelled training images, offline linear probe of E epochs)…``."""
        probe = f", offline linear probe of {probe_epochs} epochs" if probe_epochs else ""
        return (
            f"evaluating on {self.test_loader.num_samples:,} test images (kNN over "
            f"{self.train_loader.num_samples:,} labelled training images{probe})…"
        )

    @property
    def corrupt_skipped(self) -> int:
        return self.train_loader.stats.corrupt + self.test_loader.stats.corrupt

    def __call__(self, method, probe_epochs: int = 0) -> dict:
        """kNN accuracy, the online probe's, and with ``probe_epochs`` an offline linear probe's."""
        settings, runtime = self.settings, self.runtime
        was_training = method.training
        method.eval()
        try:
            with torch.no_grad(), runtime.autocast():
                train_f, train_y = extract_features(method.backbone, self.train_loader, runtime.device)
                test_f, test_y = extract_features(method.backbone, self.test_loader, runtime.device)
            train_f, test_f = train_f.float(), test_f.float()
            result = {
                "knn_acc": float(knn_accuracy(train_f, train_y, test_f, test_y, k=settings.knn_k, T=settings.knn_t)),
                "eval_samples": int(len(test_y)),
                "knn_train_samples": int(len(train_y)),
            }
            with torch.no_grad():
                logits = method.probe(test_f.to(next(method.probe.parameters()).dtype))
                result["online_probe_acc"] = float((logits.argmax(1) == test_y.to(logits.device)).float().mean())
            if probe_epochs:
                result["linear_probe_acc"] = float(
                    linear_probe(train_f, train_y, test_f, test_y, epochs=probe_epochs, seed=settings.seed)
                )
            if self.corrupt_skipped:
                result["eval_corrupt_skipped"] = self.corrupt_skipped
        finally:
            method.train(was_training)
        return result


def format_result(result: dict, step: int, of: str | None = None) -> str:
    """The accuracies of one evaluation on the test set: ``final accuracy at step N on M test images: …``, or
    with ``of`` (``--eval-only``) ``evaluation of CHECKPOINT at step N on M test images: …``."""
    parts = [f"kNN {result['knn_acc']:.2%}", f"online probe {result['online_probe_acc']:.2%}"]
    if "linear_probe_acc" in result:
        parts.append(f"offline linear probe {result['linear_probe_acc']:.2%}")
    title = f"evaluation of {of}" if of else "final accuracy"
    return f"{title} at step {step} on {result['eval_samples']} test images: " + ", ".join(parts)
