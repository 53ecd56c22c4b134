"""Self-supervised losses as pure tensor functions.

They gather across ranks only when ``torch.distributed`` is initialised, through torch's functional
collectives (``torch.distributed._functional_collectives``, what torch names in place of the deprecated
``torch.distributed.nn.functional``): differentiable, so gradients flow back to every rank's samples (an
all-gather's backward is a summing reduce-scatter, an all-reduce's a summing all-reduce).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

if dist.is_available():
    import torch.distributed._functional_collectives as funcol  # the differentiable collectives


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (with gradients); ``x`` itself when not distributed."""
    if not _distributed():
        return x
    return funcol.all_gather_single(x.contiguous(), 0, dist.group.WORLD)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks, without gradient (a step's counts and moments: the global batch's); ``x``
    itself when not distributed."""
    if not _distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent over the (global) batch: each of the 2N embeddings against its partner, with the
    other 2N-2 as negatives (the positive is in the denominator, the embedding itself is not)."""
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n_local = z1.shape[0]
    a1, a2 = gather(z1), gather(z2)
    n_all = a1.shape[0]
    keys = torch.cat([a1, a2])  # (2G, D)
    queries = torch.cat([z1, z2])  # (2N, D)
    logits = queries @ keys.T / temperature  # (2N, 2G)
    local = torch.arange(n_local, device=z1.device) + _rank() * n_local
    self_idx = torch.cat([local, local + n_all])
    pos_idx = torch.cat([local + n_all, local])
    rows = torch.arange(2 * n_local, device=z1.device)
    logits[rows, self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of MoCo: queries ``q`` (N, D) against their keys ``k`` (N, D) and the negatives in ``queue``
    (D, K).  ``q`` and ``k`` are L2-normalised here; ``k`` and ``queue`` carry no gradient."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.detach().float()
    logits = torch.cat([pos, neg], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)`` averaged over the batch; ``z`` (the target) is detached."""
    return 2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lamb: float = 0.0051, scale: float = 0.1) -> torch.Tensor:
    """Barlow Twins: ``scale * (sum_i (1 - C_ii)^2 + lamb * sum_{i≠j} C_ij^2)`` with C the cross-correlation
    of the batch-standardised embeddings (summed over ranks, then divided by the global batch)."""
    z1 = F.batch_norm(z1.float(), None, None, training=True)
    z2 = F.batch_norm(z2.float(), None, None, training=True)
    n = z1.shape[0]
    corr = z1.T @ z2
    if _distributed():
        corr = funcol.all_reduce(corr, "sum", dist.group.WORLD)
        n = n * dist.get_world_size()
    corr = corr / n
    on_diag = (torch.diagonal(corr) - 1).pow(2).sum()
    off_diag = corr.pow(2).sum() - torch.diagonal(corr).pow(2).sum()
    return scale * (on_diag + lamb * off_diag)
