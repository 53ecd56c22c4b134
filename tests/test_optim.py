import pytest
import torch
import torch.nn as nn

from models import build_method, build_optimizer, build_scheduler, warmup_cosine
from models.optim import LARS


def _toy_groups():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    bn = nn.BatchNorm1d(3)
    return lin, bn


def test_lars_adapts_weights_and_skips_bias_and_norm():
    lin, bn = _toy_groups()
    params = [lin.weight, lin.bias, bn.weight, bn.bias]
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    before = [p.detach().clone() for p in params]
    lr, wd, eta = 0.1, 1e-4, 0.02
    opt = LARS(params, lr=lr, momentum=0.0, weight_decay=wd, eta=eta, clip_lr=False)
    opt.step()
    w, g = before[0], torch.full_like(before[0], 0.5)
    trust = eta * w.norm() / (g.norm() + wd * w.norm() + 1e-8)
    assert torch.allclose(lin.weight, w - lr * trust * (g + wd * w), atol=1e-7)
    for p, b in zip(params[1:], before[1:]):  # plain SGD, no weight decay
        assert torch.allclose(p, b - lr * 0.5, atol=1e-7)


def test_lars_clip_lr_and_non_lars_groups():
    lin, _ = _toy_groups()
    lin.weight.grad = torch.full_like(lin.weight, 1e-6)  # tiny gradient: huge trust ratio, clipped to 1
    w = lin.weight.detach().clone()
    LARS([lin.weight], lr=0.1, momentum=0.0, weight_decay=0.0, eta=0.02, clip_lr=True).step()
    assert torch.allclose(lin.weight, w - 0.1 * 1e-6, atol=1e-9)
    # a group with lars=False (the probe) is plain SGD with its own weight decay, even for matrices
    lin.weight.grad = torch.full_like(lin.weight, 0.5)
    w = lin.weight.detach().clone()
    LARS([{"params": [lin.weight], "lars": False, "weight_decay": 0.0}], lr=0.1, momentum=0.0).step()
    assert torch.allclose(lin.weight, w - 0.05, atol=1e-7)


def test_lars_momentum_matches_sgd_for_excluded_params():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(a.detach().clone())
    la = LARS([a], lr=0.1, momentum=0.9, weight_decay=0.1)
    sb = torch.optim.SGD([b], lr=0.1, momentum=0.9)
    for _ in range(3):
        a.grad = torch.ones(5)
        b.grad = torch.ones(5)
        la.step()
        sb.step()
    assert torch.allclose(a, b)


def test_build_optimizer_scales_lr_and_sets_probe_group():
    method = build_method("simclr", proj_hidden_dim=64, proj_output_dim=32)
    opt = build_optimizer(method, batch_size=512)
    assert isinstance(opt, LARS)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["ssl"]["lr"] == pytest.approx(0.4)  # 0.2 per 256 at batch 512
    assert by_name["ssl"]["weight_decay"] == pytest.approx(1e-4)
    assert by_name["ssl_no_decay"]["weight_decay"] == 0.0
    assert by_name["probe"]["lr"] == pytest.approx(0.1) and by_name["probe"]["weight_decay"] == 0.0
    assert by_name["probe"]["lars"] and opt.defaults["eta"] == 0.02  # adapted as the release's LARS does
    plain = build_optimizer(
        build_method("simclr", proj_hidden_dim=64, proj_output_dim=32, probe_lars=False), batch_size=512
    )
    assert not {g["name"]: g for g in plain.param_groups}["probe"]["lars"]
    moco = build_method("moco", proj_hidden_dim=64, proj_output_dim=32, queue_size=64)
    sgd = build_optimizer(moco, batch_size=512)
    assert type(sgd) is torch.optim.SGD
    assert [g["name"] for g in sgd.param_groups] == ["ssl", "probe"]  # the release decays biases under SGD
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="lars, sgd"):
        build_optimizer(method, name="adam")


def test_warmup_cosine_key_steps():
    total, warmup, base = 100, 10, 0.4
    assert warmup_cosine(0, total, warmup, base) == pytest.approx(base / 11)
    assert warmup_cosine(9, total, warmup, base) == pytest.approx(base * 10 / 11)
    assert warmup_cosine(10, total, warmup, base) == pytest.approx(base)
    assert warmup_cosine(55, total, warmup, base) == pytest.approx(base / 2)
    assert warmup_cosine(100, total, warmup, base) == pytest.approx(0.0)
    assert warmup_cosine(200, total, warmup, base, final_lr=0.01) == pytest.approx(0.01)
    assert warmup_cosine(55, total, warmup, base, final_lr=0.1) == pytest.approx(0.25)
    lrs = [warmup_cosine(s, total, warmup, base) for s in range(total)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(0, total, 0, base) == pytest.approx(base)


def test_scheduler_applies_to_every_group_and_resumes():
    method = build_method("simclr", proj_hidden_dim=32, proj_output_dim=16)
    opt = build_optimizer(method, batch_size=256)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4)
    base = [g["lr"] for g in opt.param_groups]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [b / 5 for b in [g["initial_lr"] for g in opt.param_groups]]
    )
    for _ in range(7):
        opt.step()
        sched.step()
    expected = [warmup_cosine(7, 20, 4, g["initial_lr"]) for g in opt.param_groups]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected)
    state = sched.state_dict()
    opt2 = build_optimizer(method, batch_size=256)
    sched2 = build_scheduler(opt2, total_steps=20, warmup_steps=4)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
    assert base[0] != base[-1]  # the probe group keeps its own lr


def test_probe_weight_is_lars_adapted_like_the_release_and_its_bias_is_not():
    """solo-learn's LARS (the release's): d = eta*|w|/(|g| + wd*|w|) clipped at lr, times (g + wd*w), for every
    parameter that is not 1-D, the classifier's weight (weight decay 0) included."""
    torch.manual_seed(0)
    method = build_method("simclr", proj_hidden_dim=16, proj_output_dim=8, backbone="convnet")
    opt = build_optimizer(method, batch_size=256)
    group = next(g for g in opt.param_groups if g["name"] == "probe")
    w, b = method.probe.weight, method.probe.bias
    for p in method.parameters():
        p.grad = None
    w.grad, b.grad = torch.randn_like(w) * 10, torch.randn_like(b)
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    opt.step()
    lr, eta = group["lr"], group["eta"]
    trust = min(eta * w0.norm() / (gw.norm() + 1e-8) / lr, 1.0)
    assert torch.allclose(w, w0 - lr * trust * gw, atol=1e-7)
    assert trust < 1.0  # the adaptation changed the step
    assert torch.allclose(b, b0 - lr * gb, atol=1e-7)
