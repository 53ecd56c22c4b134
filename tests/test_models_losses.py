"""models/losses.py: NT-Xent, MoCo, BYOL and Barlow Twins losses against hand-computed values and their properties."""

import math

import torch
import torch.nn.functional as F

from models.losses import barlow_loss, byol_loss, moco_loss, nt_xent


def test_nt_xent_matches_hand_computed_value():
    # two samples, two views, 2-d embeddings (already unit norm)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    t = 0.5
    emb = torch.cat([z1, z2])  # rows: a0, a1, b0, b1
    sim = emb @ emb.T / t
    partner = [2, 3, 0, 1]
    expected = 0.0
    for i in range(4):
        denom = sum(math.exp(sim[i, j]) for j in range(4) if j != i)
        expected += -math.log(math.exp(sim[i, partner[i]]) / denom)
    expected /= 4
    assert math.isclose(float(nt_xent(z1, z2, t)), expected, rel_tol=1e-6)
    # by symmetry two rows are -log(e^1.2 / (e^0 + e^1.2 + e^1.6)), the other two (b·b = 0.96 -> 1.92)
    # -log(e^1.2 / (e^1.2 + e^1.6 + e^1.92)): their mean, as a number
    assert math.isclose(float(nt_xent(z1, z2, t)), 1.2707138, rel_tol=1e-6)


def test_nt_xent_is_cross_entropy_over_the_other_embeddings():
    """An independent reference on a larger batch (any partner indexing or masking slip shows): for each of the
    2N normalised embeddings, cross-entropy of its partner among the 2N-1 others."""
    torch.manual_seed(0)
    n, t = 6, 0.3
    z1, z2 = torch.randn(n, 5), torch.randn(n, 5) * 4  # unnormalised: nt_xent normalises
    e = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (e @ e.T / t).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    assert torch.isclose(nt_xent(z1, z2, t), F.cross_entropy(logits, partner), rtol=1e-5)


def test_nt_xent_is_scale_invariant_and_minimal_for_aligned_views():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    aligned = nt_xent(z, 3 * z, 0.2)
    random = nt_xent(z, torch.randn(8, 16), 0.2)
    assert aligned < random
    assert torch.isclose(nt_xent(z, z, 0.2), aligned)


def test_moco_loss_is_cross_entropy_with_positive_first():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    queue = F.normalize(torch.randn(8, 32), dim=0)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert torch.isclose(moco_loss(q, k, queue, 0.2), expected)
    assert moco_loss(q, q, queue, 0.2) < moco_loss(q, -q, queue, 0.2)


def test_byol_loss_range_and_target_gets_no_gradient():
    p = torch.randn(5, 8, requires_grad=True)
    z = torch.randn(5, 8, requires_grad=True)
    assert torch.isclose(byol_loss(p, p), torch.tensor(0.0), atol=1e-6)
    assert torch.isclose(byol_loss(p, -p), torch.tensor(4.0))
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_barlow_loss_zero_for_identical_decorrelated_features():
    torch.manual_seed(0)
    n, d = 64, 8
    x = torch.randn(n, d)
    q, _ = torch.linalg.qr(x - x.mean(0))  # centred, orthonormal columns
    z = q * 5.0 + 3.0  # any per-column affine map is standardised away
    assert float(barlow_loss(z, z)) < 1e-3
    # correlated columns cost lamb * scale per off-diagonal squared correlation
    correlated = torch.cat([q[:, :1], q[:, :1]], dim=1) * 10.0
    loss = float(barlow_loss(correlated, correlated, lamb=0.0051, scale=0.1))
    assert math.isclose(loss, 0.1 * 0.0051 * 2, rel_tol=1e-3)
    assert float(barlow_loss(z, torch.randn(n, d))) > 0.5
