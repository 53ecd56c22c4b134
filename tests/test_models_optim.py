"""models/optim.py: LARS (its exclusions, clipping, the multi-tensor and compiled updates against the per-tensor
loop, inductor's cache reused), the learning-rate scaling and the warm-up cosine schedule."""

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


# ---------------------------------------------------------------- the multi-tensor LARS against the loop it replaced
class ReferenceLARS(torch.optim.Optimizer):
    """The per-tensor LARS this project used before the multi-tensor one (models/optim.py at 42194e0), kept
    verbatim as the oracle: solo-learn's LARS, one Python iteration and several small kernels per tensor."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip_lr=True, exclude_bias_norm=True):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            clip_lr=clip_lr,
            exclude_bias_norm=exclude_bias_norm,
            eps=1e-8,
            lars=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["lars"] and not (group["exclude_bias_norm"] and p.ndim <= 1):
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(d_p)
                    trust = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                    if group["clip_lr"]:
                        trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
                    ok = (p_norm > 0) & (g_norm > 0)
                    d_p = torch.where(ok, (d_p + wd * p) * trust, d_p)
                elif not group["lars"] and wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                if mom != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(mom).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-lr)


def _reference_for(method, opt: LARS) -> ReferenceLARS:
    """A ReferenceLARS over ``method`` with the groups, learning rates and settings of ``opt``."""
    groups = [
        {**g, "lr": o["lr"], "weight_decay": o["weight_decay"]} for g, o in zip(method.param_groups(), opt.param_groups)
    ]
    d = opt.defaults
    return ReferenceLARS(groups, lr=d["lr"], momentum=d["momentum"], weight_decay=d["weight_decay"], eta=d["eta"])


def test_multi_tensor_lars_trains_bitwise_like_the_per_tensor_loop():
    """10 real SimCLR steps (convnet, fp32, the warm-up + cosine schedule) with each optimizer from the same
    start: the same parameters and momentum buffers, bit for bit (eager, the CPU)."""
    import copy

    torch.manual_seed(0)
    a = build_method("simclr", backbone="convnet", proj_hidden_dim=64, proj_output_dim=32)
    b = copy.deepcopy(a)
    new = build_optimizer(a, batch_size=256)
    old = _reference_for(b, new)
    scheds = [build_scheduler(o, total_steps=10, warmup_steps=3) for o in (new, old)]
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        x = torch.randn(8, 3, 8, 8, generator=g)
        views, labels = [x, x + 0.3 * torch.randn(x.shape, generator=g)], torch.arange(8) % 10
        for m, o, s in ((a, new, scheds[0]), (b, old, scheds[1])):
            out = m.training_step(views, labels)
            o.zero_grad(set_to_none=True)
            out["loss"].backward()
            o.step()
            s.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    bufs = [
        (new.state[p]["momentum_buffer"], old.state[q]["momentum_buffer"])
        for p, q in zip(a.parameters(), b.parameters())
    ]
    assert all(torch.equal(x, y) for x, y in bufs)


def toy_lars_params():
    """A LARS group with a conv weight, a zero matrix (|w| = 0: the raw gradient) and a bias (excluded), and a
    plain group with weight decay (lars=False), as two identical parameter sets."""

    def make():
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(8, 4, 3, 3)), nn.Parameter(torch.zeros(6, 5)), nn.Parameter(torch.randn(8))]
        ps.append(nn.Parameter(torch.randn(10, 8)))
        return ps, [{"params": ps[:3]}, {"params": ps[3:], "lars": False, "weight_decay": 1e-3}]

    return make(), make()


def toy_steps(new, old, new_ps, old_ps, steps=10):
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p, q in zip(new_ps, old_ps):
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad.clone(), grad.clone()
        for o in (new, old):
            for group in o.param_groups:
                group["lr"] = 0.3 * (step + 1) / steps  # a schedule: a new lr every step
        new.step()
        old.step()


def test_multi_tensor_lars_covers_every_branch_of_the_loop():
    (new_ps, new_groups), (old_ps, old_groups) = toy_lars_params()
    new = LARS(new_groups, lr=0.3, weight_decay=1e-4)
    old = ReferenceLARS(old_groups, lr=0.3, weight_decay=1e-4)
    toy_steps(new, old, new_ps, old_ps)
    assert all(torch.equal(p, q) for p, q in zip(new_ps, old_ps))
    # the reference's state loads into the new optimizer (checkpoints of either resume with the other)
    fresh = LARS(toy_lars_params()[0][1], lr=0.3, weight_decay=1e-4)
    fresh.load_state_dict(old.state_dict())
    assert torch.equal(fresh.state_dict()["state"][0]["momentum_buffer"], old.state[old_ps[0]]["momentum_buffer"])


@pytest.mark.compile
def test_compiled_lars_matches_the_per_tensor_loop_within_1e_6_and_compiles_once():
    """The compiled update (the lr as a tensor, one graph for every group) against the reference: 10 steps with
    a new lr each, every parameter within 1e-6 of its largest magnitude (fp32), and no recompilation."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compiled here, whatever compiled lars_update before in this process
    (new_ps, new_groups), (old_ps, old_groups) = toy_lars_params()
    new = LARS(new_groups, lr=0.3, weight_decay=1e-4).compile()
    old = ReferenceLARS(old_groups, lr=0.3, weight_decay=1e-4)
    graphs = counters["stats"]["unique_graphs"]
    toy_steps(new, old, new_ps, old_ps)
    assert counters["stats"]["unique_graphs"] - graphs == 1
    with torch.no_grad():
        for p, q in zip(new_ps, old_ps):
            assert float((p - q).abs().max()) <= 1e-6 * float(q.abs().max()), (p - q).abs().max()
    assert not torch.equal(new_ps[1], torch.zeros(6, 5))  # the zero matrix moved by its raw gradient


CACHE_PROBE = """
import json
from models.training.compiling import cache_dir, cache_stats
from models.optim import LARS
from test_models_optim import ReferenceLARS, toy_lars_params, toy_steps
(new_ps, new_groups), (old_ps, old_groups) = toy_lars_params()
new = LARS(new_groups, lr=0.3, weight_decay=1e-4).compile()
toy_steps(new, ReferenceLARS(old_groups, lr=0.3, weight_decay=1e-4), new_ps, old_ps, steps=2)
print(json.dumps({"dir": cache_dir(), **cache_stats()}))
"""


@pytest.mark.compile
def test_a_second_process_loads_the_compiled_update_from_inductors_cache():
    """The update of the test above, compiled here (or already, by that test) into this session's inductor cache
    directory: a fresh process compiling the same update only loads it from there."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from models.training.compiling import cache_dir

    torch._dynamo.reset()  # through inductor and its cache here, not code compiled before in this process
    (new_ps, new_groups), (old_ps, old_groups) = toy_lars_params()
    new = LARS(new_groups, lr=0.3, weight_decay=1e-4).compile()
    toy_steps(new, ReferenceLARS(old_groups, lr=0.3, weight_decay=1e-4), new_ps, old_ps, steps=2)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}", "TORCHINDUCTOR_CACHE_DIR": cache_dir()}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # CPU kernels are compiled for a thread count: same key
    done = subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["dir"] == cache_dir()
    assert stats["fx_graph_cache_misses"] == 0 and stats["fx_graph_cache_hits"] >= 1, stats


def test_sgd_uses_multi_tensor_kernels():
    moco = build_method("moco", proj_hidden_dim=64, proj_output_dim=32, queue_size=64, backbone="convnet")
    sgd = build_optimizer(moco, batch_size=256)
    assert sgd.defaults["foreach"] is True and not sgd.defaults["fused"]  # on a GPU: fused
