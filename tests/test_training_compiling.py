"""``--compile``: the setting, compiled against eager for every method, and train.py compiled (the compile time in
the log, checkpoints without wrapper keys, resume bitwise within a mode and across modes, the cache reused).

Compiling on a CPU costs tens of seconds per graph; the tests that compile use the tiny ``convnet``, 8×8 crops and
batches of 16, and are marked ``compile`` (``pytest -m "not compile"`` skips them). Inductor's on-disk cache
(``models.training.compiling.cache_dir()``) makes a second run of the suite faster; the results do not depend on it.
The compiled LARS against the per-tensor loop it replaced, and a second process loading it from the cache, are
in ``tests/test_models_optim.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from trainargs import train_args

import train
from models import build_method, build_optimizer
from models.training import read_records
from models.training.compiling import StepClock, compile_method, resolve_compile
from models.training.settings import Settings
from shards.base.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# A compiled step's loss against the eager one, step by step (fp32, CPU): inductor fuses and reorders the
# reductions, so the two differ in the last bits (measured: ≤ 6e-6 relative over 4 steps, the first step's
# gradients ≤ 1e-5), never by more; the state after 4 steps within STATE_RTOL (see the test).
LOSS_RTOL = 1e-4
STATE_RTOL = 1e-2


# ---------------------------------------------------------------- the setting
def test_compile_setting_resolves_per_device_and_refuses_what_cannot_work():
    assert resolve_compile("auto", cuda=False) == "off" and resolve_compile("auto", cuda=True) == "on"
    assert resolve_compile("on", cuda=False) == "on" and resolve_compile("off", cuda=True) == "off"
    assert resolve_compile("cudagraphs", cuda=True) == "cudagraphs"
    assert resolve_compile(True, cuda=False) == "on" and resolve_compile(False, cuda=True) == "off"
    with pytest.raises(ConfigError, match="needs a GPU"):
        resolve_compile("cudagraphs", cuda=False)
    with pytest.raises(ConfigError, match="DDP"):
        resolve_compile("cudagraphs", cuda=True, distributed=True)
    assert Settings().compile == "auto"
    # configs and checkpoints written when --compile was a boolean flag still load
    assert Settings.from_dict({"compile": True}).compile == "on"
    assert Settings.from_dict({"compile": False}).compile == "off"
    with pytest.raises(ConfigError, match="compile"):
        Settings(compile="fast")


def test_step_clock_reports_the_first_steps_beyond_a_steady_one():
    clock = StepClock(n=4)
    clock.times = [5.0, 1.5, 0.5, 0.5]
    report = clock.report()
    assert report["compile_s"] == pytest.approx(5.5) and report["first_step_s"] == 5.0
    assert report["steady_step_s"] == 0.5 and report["steps_timed"] == 4 and not clock.timing
    short = StepClock(n=4)
    short.times = [3.0, 1.0]  # a run shorter than the clock: everything it took, compile time unknown
    assert short.report()["compile_s"] is None and short.report()["first_steps_s"] == 4.0


# ---------------------------------------------------------------- compiled against eager, per method
SMALL = {
    "mocov2plus": dict(proj_hidden_dim=64, proj_output_dim=32, queue_size=32),
    "byol": dict(proj_hidden_dim=64, proj_output_dim=32, pred_hidden_dim=64),
    "barlow": dict(proj_hidden_dim=64, proj_output_dim=64),
}


def _batches(n=4, batch=16, size=8):  # train.py's test shapes below: the backbone's kernels are compiled once
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, size, size, generator=g)
        labels = torch.arange(batch) % 10
        labels[::3] = -1  # generated samples: no probe label
        out.append(([x + 0.3 * torch.randn(x.shape, generator=g), x + 0.3 * torch.randn(x.shape, generator=g)], labels))
    return out


def _train(method, mode: str, batches) -> tuple[list[dict], torch.Tensor]:
    """(each step's scalar outputs, the first step's gradients as one vector)"""
    opt = build_optimizer(method, batch_size=256)
    model = compile_method(method, mode)
    outs, grads = [], None
    for step, (views, labels) in enumerate(batches):
        out = model(views, labels)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if grads is None:
            grads = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
        opt.step()
        method.on_train_step_end(step, 100)
        outs.append({k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0})
    return outs, grads


@pytest.mark.compile
@pytest.mark.parametrize("name", sorted(SMALL))
def test_compiled_forward_and_loss_give_the_eager_losses(name):
    """4 steps from the same start, eager and through ``torch.compile`` (forward, loss, backward; the optimizer and
    the EMA as in both): the same losses and logged figures within ``LOSS_RTOL``, and the same state after.
    SimCLR is checked through train.py below (compiled step, compiled LARS)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compiled by inductor here, not code some earlier test compiled
    torch.manual_seed(0)
    eager = build_method(name, backbone="convnet", **SMALL[name])
    compiled = copy.deepcopy(eager)
    batches = _batches()
    want, want_grads = _train(eager, "off", batches)
    graphs = counters["stats"]["unique_graphs"]
    got, got_grads = _train(compiled, "on", batches)
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile (nothing fell back to eager silently)
    # the first backward, from the same parameters: every gradient as one vector (measured ≤ 1e-5 relative)
    assert float((got_grads - want_grads).norm() / want_grads.norm()) <= LOSS_RTOL
    for step, (w, g) in enumerate(zip(want, got)):
        assert g["loss"] == pytest.approx(w["loss"], rel=LOSS_RTOL), step
        assert g["ssl_loss"] == pytest.approx(w["ssl_loss"], rel=LOSS_RTOL), step
        assert g["probe_correct"] == w["probe_correct"] and g["probe_count"] == w["probe_count"], step
    # the state after (parameters, queue, EMA targets, BN statistics) as one vector, looser: the steps amplify the
    # last-bit differences (most in Barlow Twins at batch 8, an ill-conditioned 64×64 correlation: 1.1e-3)
    diff = total = 0.0
    for (key, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        if a.is_floating_point():
            diff, total = diff + float((a - b).pow(2).sum()), total + float(a.pow(2).sum())
        else:
            assert torch.equal(a, b), key  # queue pointer, BN batch counts
    assert (diff / total) ** 0.5 <= STATE_RTOL


# ---------------------------------------------------------------- train.py compiled
DEMO = (24, 24, 40)


def _args(data, out, steps=4, **extra):
    return train_args(data, out, steps, backbone="convnet", probe_epochs=1, **extra)


def _run(args):
    result = CliRunner().invoke(train.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_records(out, "train")}


@pytest.fixture(scope="module")
def runs(demo_sets, tmp_path_factory):
    """SimCLR convnet, 4 steps (an epoch of 3 steps and one more), ckpt-2.pt kept: eager and compiled."""
    torch._dynamo.reset()
    data = demo_sets(*DEMO)
    root = tmp_path_factory.mktemp("compile-runs")
    out = {}
    for mode in ("off", "on"):
        out[mode] = root / mode
        out[f"{mode}-log"] = _run(_args(data, out[mode], compile=mode, keep_every=2, ckpt_every=2)).output
    return out


@pytest.mark.compile
def test_compiled_train_run_matches_eager_and_logs_its_compile_time(runs):
    eager, compiled = _losses(runs["off"]), _losses(runs["on"])
    assert sorted(compiled) == [1, 2, 3, 4]
    for step in compiled:  # SimCLR: the compiled step and the compiled LARS against eager
        assert compiled[step] == pytest.approx(eager[step], rel=LOSS_RTOL), step
    cfg = yaml.safe_load((runs["on"] / "config.yaml").read_text())
    assert cfg["settings"]["compile"] == "on" and cfg["resolved"]["compile"] == "on"
    assert yaml.safe_load((runs["off"] / "config.yaml").read_text())["resolved"]["compile"] == "off"
    (record,) = read_records(runs["on"], "compile")  # once, after the clock's 4 steps
    assert record["step"] == 4 and record["mode"] == "on" and record["compile_s"] > 0
    assert record["first_step_s"] > record["steady_step_s"] > 0 and Path(record["cache_dir"]).is_dir()
    assert record["fx_graph_cache_hits"] + record["fx_graph_cache_misses"] >= 2  # the step's graphs and LARS's
    assert "--compile on: compiling took" in runs["on-log"] and "inductor cache" in runs["on-log"]
    assert not read_records(runs["off"], "compile") and "compiling took" not in runs["off-log"]


@pytest.mark.compile
def test_checkpoints_of_a_compiled_run_hold_the_plain_method(runs):
    ckpt = torch.load(runs["on"] / "ckpt-last.pt", map_location="cpu", weights_only=False)
    plain = build_method("simclr", backbone="convnet").state_dict()
    assert list(ckpt["model"]) == list(plain)  # no "_orig_mod." (compile) or "module." (DDP) prefix
    assert all(ckpt["model"][k].shape == v.shape for k, v in plain.items())


@pytest.mark.compile
@pytest.mark.parametrize("mode", ["off", "on"])
def test_resume_within_a_mode_is_bitwise(runs, tmp_path, mode):
    """Resuming ckpt-2.pt (inside epoch 0) in the mode it was written in: steps 3 and 4 give exactly the
    uninterrupted run's losses; a compiled resume reports its (shorter) compile time too."""
    resumed = tmp_path / "resumed"
    log = _run(["--resume", str(runs[mode] / "ckpt-2.pt"), "--out", str(resumed), "--no-progress"]).output
    want, got = _losses(runs[mode]), _losses(resumed)
    assert sorted(got) == [3, 4] and all(got[s] == want[s] for s in got), (got, want)
    if mode == "on":
        (record,) = read_records(resumed, "compile")  # the resumed run is 2 steps: reported at its end
        assert record["step"] == 4 and record["compile_s"] is None and record["first_steps_s"] > 0
        assert "--compile on: the first 2 step(s), compiling included" in log


@pytest.mark.compile
def test_resume_across_modes(runs, tmp_path):
    """A compiled run's checkpoint resumes eagerly and an eager one compiled (--compile may change on resume):
    the same losses within LOSS_RTOL."""
    for written, resumed_as in (("on", "off"), ("off", "on")):
        out = tmp_path / f"{written}-to-{resumed_as}"
        _run(["--resume", str(runs[written] / "ckpt-2.pt"), "--out", str(out), "--compile", resumed_as])
        want, got = _losses(runs[written]), _losses(out)
        assert sorted(got) == [3, 4]
        assert [got[s] for s in (3, 4)] == pytest.approx([want[s] for s in (3, 4)], rel=LOSS_RTOL)
        assert yaml.safe_load((out / "config.yaml").read_text())["resolved"]["compile"] == resumed_as


def test_a_checkpoint_with_wrapper_prefixes_loads_as_the_plain_method(tmp_path):
    """A state_dict saved from a DDP or compiled wrapper elsewhere (``module._orig_mod.`` keys) reads back plain."""
    from models.training.checkpoint import load_checkpoint, save_checkpoint

    method = build_method("simclr", backbone="convnet")
    wrapped = torch.compile(method)
    assert all(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    state = {f"module.{k}": v for k, v in wrapped.state_dict().items()}
    save_checkpoint(tmp_path / "w.pt", {"settings": {}, "model": state})
    _, ckpt = load_checkpoint(tmp_path / "w.pt")
    fresh = build_method("simclr", backbone="convnet")
    fresh.load_state_dict(ckpt["model"])  # strict: every key matches
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), method.state_dict().values()))


# ---------------------------------------------------------------- on a GPU (pytest -m gpu; skipped without CUDA)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["simclr", "byol", "mocov2plus"])
def test_compiled_and_cuda_graph_steps_give_the_eager_losses_on_the_gpu(name):
    """The engine's step (bench.model.build_trainer: Trainer as train.py builds it, fp32 with TF32) eager, compiled
    and with CUDA graphs, 6 steps on fixed views: the same losses within 1e-2 (TF32), and no CUDA graph skipped."""
    from torch._dynamo.utils import counters

    from bench.model import build_trainer

    views = [torch.randn(64, 3, 32, 32, device="cuda") for _ in range(2)]
    labels = torch.arange(64, device="cuda") % 10
    losses = {}
    for mode in ("off", "on", "cudagraphs"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        method = build_method(name, backbone="convnet", **({"queue_size": 256} if name == "mocov2plus" else {}))
        trainer = build_trainer(method, 64, "cuda", compile=mode, dtype=torch.float32)
        skips = counters["inductor"]["cudagraph_skips"]
        losses[mode] = [float(trainer.step(views, labels)["loss"]) for _ in range(6)]
        if mode == "cudagraphs":
            assert counters["inductor"]["cudagraph_skips"] == skips, (
                "inductor skipped a CUDA graph (TORCH_LOGS=perf_hints)"
            )
        assert (trainer.compile_report(final=True) is None) == (mode == "off")
    for mode in ("on", "cudagraphs"):
        assert losses[mode] == pytest.approx(losses["off"], rel=1e-2), (mode, losses)
