"""models/methods: the registry and the release's defaults, each method's loss falls, the online probe, MoCo's
queue, BYOL's momentum, parameter groups. The backbone: test_models_backbone.py."""

import dataclasses

import pytest
import torch
import torch.nn as nn

from models import METHODS, build_method, build_optimizer
from models.methods import BYOL, BarlowTwins, MoCoV2Plus, SimCLR, momentum_tau


def _views(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    return [x + 0.3 * torch.randn(x.shape, generator=g), x + 0.3 * torch.randn(x.shape, generator=g)]


# ---------------------------------------------------------------- registry and configs
def test_registry_aliases_defaults_and_errors():
    assert set(METHODS) == {"simclr", "mocov2plus", "byol", "barlow"}
    assert isinstance(build_method("moco", queue_size=64), MoCoV2Plus)
    assert isinstance(build_method("barlow_twins", proj_hidden_dim=64, proj_output_dim=64), BarlowTwins)
    with pytest.raises(ValueError, match="simclr"):
        build_method("swav")
    with pytest.raises(ValueError, match="temperature"):
        build_method("simclr", temprature=0.5)
    with pytest.raises(ValueError, match="temperature must be float"):
        build_method("simclr", temperature="hot")
    m = build_method("simclr", num_classes=100, temperature=1)
    assert m.cfg.temperature == 1.0 and isinstance(m.cfg.temperature, float)
    assert m.num_classes == 100 and m.probe.out_features == 100 and m.feat_dim == 512
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.cfg.lr = 1.0  # frozen


def test_release_defaults():
    s = SimCLR.Config()
    assert (s.optimizer, s.lr, s.weight_decay, s.lars_eta, s.temperature) == ("lars", 0.2, 1e-4, 0.02, 0.2)
    assert (s.proj_hidden_dim, s.proj_output_dim) == (2048, 256)
    mo = MoCoV2Plus.Config()
    assert (mo.optimizer, mo.lr, mo.queue_size, mo.base_tau, mo.final_tau) == ("sgd", 0.15, 32768, 0.99, 0.999)
    b = BYOL.Config()
    assert (b.optimizer, b.lr, b.weight_decay, b.base_tau, b.final_tau) == ("lars", 0.5, 1e-5, 0.99, 1.0)
    assert (b.proj_hidden_dim, b.pred_hidden_dim, b.proj_output_dim) == (4096, 4096, 256)
    bt = BarlowTwins.Config()
    assert (bt.lr, bt.lamb, bt.scale_loss, bt.proj_output_dim) == (0.15, 0.0051, 0.1, 2048)
    byol = build_method("byol")
    assert [type(m) for m in byol.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert byol.predictor[0].in_features == 256 and byol.predictor[0].out_features == 4096
    simclr = build_method("simclr")
    assert [type(m) for m in simclr.projector] == [nn.Linear, nn.ReLU, nn.Linear]
    barlow = build_method("barlow")
    assert sum(isinstance(m, nn.BatchNorm1d) for m in barlow.projector) == 2
    assert barlow.projector[-1].out_features == 2048


# ---------------------------------------------------------------- training
SMALL = {
    "simclr": dict(proj_hidden_dim=128, proj_output_dim=64),
    "mocov2plus": dict(proj_hidden_dim=128, proj_output_dim=64, queue_size=32),
    "byol": dict(proj_hidden_dim=128, proj_output_dim=64, pred_hidden_dim=128),
    "barlow": dict(proj_hidden_dim=128, proj_output_dim=128),
}


@pytest.mark.parametrize("name", ["simclr", "byol", "barlow"])
def test_loss_falls_on_a_fixed_batch(name):
    torch.manual_seed(0)
    method = build_method(name, **SMALL[name])
    opt = build_optimizer(method, batch_size=256, lr=0.5)
    views = _views(size=8)
    labels = torch.arange(16) % 10
    labels[::4] = -1
    losses = []
    steps = 12
    for step in range(steps):
        out = method.training_step(views, labels)
        assert out["loss"].requires_grad and not out["ssl_loss"].requires_grad
        assert torch.isfinite(out["loss"])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_train_step_end(step, steps)
        losses.append(float(out["ssl_loss"]))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    assert int(out["probe_count"]) == 2 * 12  # 12 labelled samples, two views


def test_moco_loss_falls():
    # A repeated batch would fill the queue with its own keys (negatives equal to positives), so MoCo
    # cycles through four batches with a queue of two; the queue is filled first so that the first loss
    # is measured against real keys, not the random initial queue.  With 12 steps the keys must follow
    # the encoder faster than the release's tau 0.99 (and tau 0 fails, as in the MoCo paper): tau 0.9.
    torch.manual_seed(0)
    method = build_method("mocov2plus", **SMALL["mocov2plus"], base_tau=0.9, final_tau=0.9)
    opt = build_optimizer(method, batch_size=256, lr=0.01)
    pool = [_views(size=8, seed=i) for i in range(4)]
    labels = torch.zeros(16, dtype=torch.long)
    with torch.no_grad():
        for views in pool[2:]:
            method.training_step(views, labels)
            method.enqueue_pending()
    losses = []
    for step in range(12):
        out = method.training_step(pool[step % 4], labels)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_train_step_end(step, 12)
        losses.append(float(out["ssl_loss"]))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_probe_ignores_unlabelled_samples():
    torch.manual_seed(0)
    method = build_method("simclr", **SMALL["simclr"])
    views = _views(n=8, size=8)
    out = method.training_step(views, torch.full((8,), -1))
    assert float(out["probe_loss"]) == 0.0 and torch.isfinite(out["loss"])
    assert int(out["probe_count"]) == 0 and float(out["online_probe_acc_train_views"]) == 0.0
    out["loss"].backward()
    assert method.probe.weight.grad is None or float(method.probe.weight.grad.abs().sum()) == 0.0
    # a -1 in a mixed batch changes nothing: loss and accuracy are those of the labelled half alone
    labels = torch.tensor([3, -1, 5, -1, 1, -1, 0, -1])
    method.eval()  # fixed BN so both calls see the same features
    with torch.no_grad():
        feats = [method.backbone(v) for v in views]
        logits = [method.probe(f[labels >= 0]) for f in feats]
        expected = sum(torch.nn.functional.cross_entropy(x, labels[labels >= 0]) for x in logits) / 2
        correct = sum(int((x.argmax(1) == labels[labels >= 0]).sum()) for x in logits)
        got = method.training_step(views, labels)
        method.probe.bias[1] += 1e3  # now every prediction is class 1: one right per view
        out = method.training_step(views, labels)
    assert torch.isclose(got["probe_loss"], expected, atol=1e-6)
    assert int(got["probe_count"]) == 8 and int(got["probe_correct"]) == correct
    assert float(got["online_probe_acc_train_views"]) == pytest.approx(correct / 8)
    assert int(out["probe_correct"]) == 2 and float(out["online_probe_acc_train_views"]) == pytest.approx(2 / 8)


def test_probe_gradient_stops_at_the_features():
    """The online probe learns from the features without training the backbone: the backbone's gradients
    from ``training_step``'s loss (ssl + probe, probe loss > 0) are those of the ssl loss alone."""
    torch.manual_seed(0)
    method = build_method("simclr", **SMALL["simclr"], backbone="convnet")
    views, labels = _views(n=8, size=8), torch.arange(8) % 4
    out = method.training_step(views, labels)
    assert float(out["probe_loss"]) > 0.1
    method.zero_grad()
    out["loss"].backward()
    full = [p.grad.clone() for p in method.backbone.parameters()]
    assert float(method.probe.weight.grad.abs().sum()) > 0  # the probe itself does learn
    method.zero_grad()
    method.ssl_loss(method.forward_views(views), views)[0].backward()
    ssl_only = [p.grad for p in method.backbone.parameters()]
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(full, ssl_only))


def test_moco_queue_is_a_buffer_and_updates():
    torch.manual_seed(0)
    method = build_method("mocov2plus", proj_hidden_dim=64, proj_output_dim=32, queue_size=24)
    state = method.state_dict()
    assert "queue" in state and "queue_ptr" in state and state["queue"].shape == (2, 32, 24)
    assert "queue" in dict(method.named_buffers()) and "queue" not in dict(method.named_parameters())
    before = method.queue.clone()
    views = _views(n=16, size=8)
    method.training_step(views, torch.zeros(16, dtype=torch.long))
    # the step's keys wait for the end of the step (after its backward and optimizer step), then join the queue
    assert int(method.queue_ptr) == 0 and torch.equal(method.queue, before)
    method.on_train_step_end(0, 10)
    assert int(method.queue_ptr) == 16
    assert not torch.equal(method.queue[:, :, :16], before[:, :, :16])
    assert torch.equal(method.queue[:, :, 16:], before[:, :, 16:])
    assert torch.allclose(method.queue[:, :, :16].norm(dim=1), torch.ones(2, 16), atol=1e-5)
    method.training_step(views, torch.zeros(16, dtype=torch.long))  # wraps around
    method.enqueue_pending()
    method.enqueue_pending()  # once only
    assert int(method.queue_ptr) == (32 % 24)
    assert not torch.equal(method.queue[:, :, :8], before[:, :, :8])


def test_byol_momentum_schedule_and_ema():
    assert momentum_tau(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert momentum_tau(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert momentum_tau(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    torch.manual_seed(0)
    method = build_method("byol", **SMALL["byol"])
    assert all(not p.requires_grad for p in method.momentum_backbone.parameters())
    online = dict(method.backbone.named_parameters())
    target = dict(method.momentum_backbone.named_parameters())
    assert all(torch.equal(online[k], target[k]) for k in online)  # starts as a copy
    opt = build_optimizer(method, batch_size=256)
    out = method.training_step(_views(n=8, size=8), torch.zeros(8, dtype=torch.long))
    out["loss"].backward()
    opt.step()
    w_online, w_before = online["conv1.weight"].detach().clone(), target["conv1.weight"].detach().clone()
    assert not torch.equal(w_online, w_before)
    method.on_train_step_end(0, 10)
    expected = 0.99 * w_before + 0.01 * w_online  # tau(0) = base_tau
    assert torch.allclose(target["conv1.weight"], expected, atol=1e-7)
    gap_before = (w_online - w_before).norm()
    assert (w_online - target["conv1.weight"]).norm() < gap_before  # moved toward online
    assert float(method.tau) == pytest.approx(momentum_tau(1, 10, 0.99, 1.0))
    method.on_train_step_end(9, 10)
    assert float(method.tau) == pytest.approx(1.0)
    # targets are never in the optimizer's groups
    ids = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not ids & {id(p) for p in method.momentum_backbone.parameters()}
    assert not ids & {id(p) for p in method.momentum_projector.parameters()}


def test_param_groups_cover_every_trainable_parameter_once():
    method = build_method("byol", **SMALL["byol"])
    groups = method.param_groups(exclude_bias_norm=True)
    names = [g["name"] for g in groups]
    assert names == ["ssl", "ssl_no_decay", "probe"]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim <= 1 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0 and groups[2]["weight_decay"] == 0.0
    assert not groups[1]["lars"] and groups[2]["lars"] and groups[2]["probe"]  # the release adapts the probe
    assert [g["name"] for g in method.param_groups(exclude_bias_norm=False)] == ["ssl", "probe"]


def test_forward_is_training_step():
    torch.manual_seed(0)
    method = build_method("barlow", **SMALL["barlow"]).eval()
    views, labels = _views(n=8, size=8), torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(method(views, labels)["loss"], method.training_step(views, labels)["loss"])
    with pytest.raises(ValueError, match="two views"):
        method.training_step(views[:1], labels)
