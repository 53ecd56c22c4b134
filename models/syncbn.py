"""Batch statistics shared across DDP ranks, as the release trains (``sync_batchnorm: True`` in every
``scripts/pretrain/cifar/*.yaml`` of PKU-ML/adainf).

On CUDA this is ``torch.nn.SyncBatchNorm`` (its fused kernels). PyTorch's SyncBatchNorm has no CPU
kernels (``aten::batch_norm_stats`` is CUDA-only) and DDP refuses it on CPU modules, so for CPU / gloo
runs — the tests, a CPU cluster — ``CpuSyncBatchNorm`` computes the same thing with a differentiable
all-reduce of per-channel sums: the batch mean and (biased) variance over every rank's samples normalise
the input, the running statistics get the unbiased variance, as ``torch.nn.SyncBatchNorm`` does.
Each rank contributes (count, mean, M2) through one differentiable all-gather, combined as a parallel
variance, so gradients flow back to every rank's samples.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the union of every rank's batch, for any input of shape (N, C, ...)."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import torch.distributed._functional_collectives as funcol  # differentiable; torch.distributed.nn's
        # all_gather is deprecated (a FutureWarning under torchrun)

        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        xf = x.float()
        count = xf.new_full((1,), x.numel() / c)
        local_mean = xf.mean(dims)
        local_m2 = ((xf - local_mean.view([1, c] + [1] * (x.dim() - 2))) ** 2).sum(dims)
        # one differentiable collective; the ranks' (count, mean, M2) combine as in Chan et al.'s parallel
        # variance (what torch.nn.SyncBatchNorm's batch_norm_gather_stats_with_counts does), which keeps
        # float32 precise when a rank's mean is far from zero
        stats = torch.cat([count, local_mean, local_m2])
        parts = funcol.all_gather_single(stats, 0, dist.group.WORLD).view(-1, stats.shape[0])
        counts, means, m2s = parts[:, :1], parts[:, 1 : c + 1], parts[:, c + 1 :]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = ((m2s + counts * (means - mean) ** 2).sum(0) / n).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """Every BatchNorm of ``module`` made to share statistics across ranks (parameters and buffers kept)."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
