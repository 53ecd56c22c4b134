"""train.py end to end on CPU: tiny demo shards (24 real + 24 generated, 40 test), 8×8 crops, batch 16.

An epoch of ``real:1 + generated:1`` is 48 samples = 3 steps of 16, so step 3 is an epoch boundary.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import train
from models.methods.simclr import SimCLR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from shards.demo import make_demo

    root = tmp_path_factory.mktemp("train-data")
    make_demo(root, n_real=24, n_generated=24, n_test=40, seed=0, shard_size=16)
    return {name: root / name for name in ("real", "generated", "test")}


def base_args(data, out, steps=6, **extra):
    args = ["--shards", f"{data['real']}:1", "--shards", f"{data['generated']}:1", "--eval-shards",
            str(data["test"]), "--train-labels", str(data["real"]), "--steps", str(steps), "--batch-size", "16",
            "--image-size", "8", "--log-every", "1", "--eval-every", "0", "--probe-epochs", "2", "--knn-k", "5",
            "--eval-batch-size", "32", "--no-progress", "--device", "cpu", "--out", str(out)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}"] + ([] if v is None else [str(v)])
    return args


def run(args):
    result = CliRunner().invoke(train.main, args, catch_exceptions=False)
    return result


def records(out, kind="train"):
    lines = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in lines if r["kind"] == kind]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """6 uninterrupted steps, keeping ckpt-3.pt (the end of epoch 0), with an eval at step 4."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    result = run(base_args(data, out, keep_every=3, eval_every=4, ckpt_every=2))
    assert result.exit_code == 0, result.output
    return out, result


def test_run_writes_config_metrics_checkpoint_and_events(straight):
    out, result = straight
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["settings"]["method"] == "simclr" and cfg["settings"]["steps"] == 6
    assert cfg["resolved"]["total_steps"] == 6 and cfg["resolved"]["steps_per_epoch"] == 3
    assert cfg["resolved"]["inflation"]["weights"] == {"demo-real": 1.0, "demo-generated": 1.0}
    assert cfg["resolved"]["lr"] == pytest.approx(0.2 * 16 / 256)
    train_recs = records(out)
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in train_recs] == [0, 0, 0, 1, 1, 1]
    for r in train_recs:
        assert all(k in r for k in ("loss", "ssl_loss", "probe_loss", "probe_acc", "lr", "samples_per_s", "data_wait"))
        assert 0 <= r["data_wait"] <= 1 and r["samples_per_s"] > 0
    assert train_recs[-1]["lr"] == pytest.approx(0.0)  # cosine to 0 at the last step
    (ev,) = records(out, "eval")
    assert ev["step"] == 4 and ev["eval_samples"] == 40 and ev["knn_train_samples"] == 24
    (final,) = records(out, "final")
    for k in ("knn_acc", "online_probe_acc", "linear_probe_acc"):
        assert 0.0 <= final[k] <= 1.0
    assert "final accuracy at step 6" in result.output
    ckpt = torch.load(out / "ckpt-last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 6 and ckpt["settings"]["batch_size"] == 16
    assert (ckpt["loader"]["epoch"], ckpt["loader"]["step"]) == (2, 0)  # the next batch: epoch 2 starts
    assert torch.load(out / "ckpt-3.pt", map_location="cpu", weights_only=False)["step"] == 3
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert not list(out.glob(".*.tmp"))


def test_resume_at_epoch_boundary_matches_uninterrupted_run(straight, tmp_path):
    out, _ = straight
    resumed = tmp_path / "resumed"
    result = run(["--resume", str(out / "ckpt-3.pt"), "--out", str(resumed), "--no-progress"])
    assert result.exit_code == 0, result.output
    want = {r["step"]: r["loss"] for r in records(out)}
    got = {r["step"]: r["loss"] for r in records(resumed)}
    assert sorted(got) == [4, 5, 6]
    for step, loss in got.items():
        assert loss == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
    assert yaml.safe_load((resumed / "config.yaml").read_text())["settings"]["resume"].endswith("ckpt-3.pt")


def _interrupt_at(monkeypatch, at_step: int):
    """Send SIGINT to ourselves after optimizer step ``at_step`` (1-based), as a user's Ctrl-C would."""
    original = SimCLR.on_train_step_end

    def hook(self, step, total):
        original(self, step, total)
        if step + 1 == at_step:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SimCLR, "on_train_step_end", hook)


def test_sigint_saves_checkpoint_and_resume_continues_identically(straight, tmp_path, monkeypatch):
    out, _ = straight
    run_dir = tmp_path / "interrupted"
    _interrupt_at(monkeypatch, 3)
    result = CliRunner().invoke(train.main, base_args(data_of(out), run_dir, ckpt_every=0))
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert "SIGINT at step 3: checkpoint saved" in result.output and "Traceback" not in result.output
    assert torch.load(run_dir / "ckpt-last.pt", map_location="cpu", weights_only=False)["step"] == 3
    monkeypatch.undo()
    result = run(["--resume", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    want = [r["loss"] for r in records(out)]
    got = [r["loss"] for r in records(run_dir)]  # same directory: steps 1-3 before, 4-6 after the resume
    assert [r["step"] for r in records(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert len(records(run_dir, "final")) == 1


def test_resume_inside_an_epoch_matches_uninterrupted_run(straight, tmp_path):
    out, _ = straight
    resumed = tmp_path / "resumed-mid"
    # step 4 is inside epoch 1: the loader must replay the augmentation draws of the uninterrupted run
    first = tmp_path / "first"
    assert run(base_args(data_of(out), first, keep_every=4, ckpt_every=0)).exit_code == 0
    result = run(["--resume", str(first / "ckpt-4.pt"), "--out", str(resumed), "--no-progress"])
    assert result.exit_code == 0, result.output
    want = {r["step"]: r["loss"] for r in records(out)}
    got = {r["step"]: r["loss"] for r in records(resumed)}
    assert [got[s] for s in (5, 6)] == pytest.approx([want[5], want[6]], rel=1e-5, abs=1e-6)


def data_of(out: Path) -> dict:
    shards = yaml.safe_load((out / "config.yaml").read_text())["settings"]["shards"]
    real, gen = (Path(s.rsplit(":", 1)[0]) for s in shards)
    return {"real": real, "generated": gen, "test": real.parent / "test"}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    original = SimCLR.ssl_loss
    calls = {"n": 0}

    def poisoned(self, feats, views):
        calls["n"] += 1
        loss, extra = original(self, feats, views)
        return (loss * float("nan") if calls["n"] >= 4 else loss), extra

    monkeypatch.setattr(SimCLR, "ssl_loss", poisoned)
    out = tmp_path / "nan"
    result = CliRunner().invoke(train.main, base_args(data, out, steps=6, ckpt_every=2, log_every=3))
    assert result.exit_code == 3, result.output
    assert "loss became NaN/inf at step 4" in result.output
    assert "Traceback" not in result.output
    ckpt = torch.load(out / "ckpt-last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [r["step"] for r in records(out)] == [3]  # the step-3 record was finite; step 4 never logged


def test_eval_only_on_checkpoint(straight):
    out, _ = straight
    result = run(["--eval-only", "--checkpoint", str(out / "ckpt-3.pt"), "--probe-epochs", "2", "--knn-k", "5",
                  "--image-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "final accuracy at step 3 on 40 test images" in result.output
    (rec,) = records(out, "eval_only")
    assert rec["step"] == 3 and rec["checkpoint"].endswith("ckpt-3.pt")
    assert 0 <= rec["knn_acc"] <= 1 and 0 <= rec["linear_probe_acc"] <= 1


@pytest.mark.parametrize("case", ["missing", "empty", "unlabelled-eval", "batch-too-large", "unknown-method",
                                  "steps-and-epochs", "resume-clash"])
def test_bad_input_is_one_line_and_nonzero_exit(case, data, tmp_path, straight):
    out = tmp_path / "bad"
    args = base_args(data, out)
    expect = {
        "missing": (["--shards", str(tmp_path / "nope")], "no such directory"),
        "empty": (["--shards", str(tmp_path)], "no manifest.json here"),
        "unlabelled-eval": (["--eval-shards", str(data["generated"])], "has no labels"),
        "batch-too-large": (["--batch-size", "64"], "larger than an epoch"),
        "unknown-method": (["--method", "swav"], "'swav' is not one of"),
        "steps-and-epochs": (["--epochs", "2"], "--steps or --epochs, not both"),
        "resume-clash": (["--resume", str(straight[0]), "--method", "byol"], "differs from the checkpoint"),
    }[case]
    if case == "missing" or case == "empty":
        args = [a for a in args]  # replace both --shards with the bad one
        i = args.index("--shards")
        del args[i:i + 4]
    args += expect[0]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    error_lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(error_lines) == 1 and expect[1] in error_lines[0], result.output
    assert not out.exists()  # no work started, nothing written


def test_settings_reject_unknown_keys_and_wrong_types():
    s = train.Settings(shards=("a:1",), steps=3)
    assert train.Settings.from_dict(s.to_dict()) == s
    with pytest.raises(TypeError, match="unknown setting"):
        train.Settings.from_dict({**s.to_dict(), "stepz": 3})
    with pytest.raises(TypeError, match="steps='3'"):
        train.Settings.from_dict({**s.to_dict(), "steps": "3"})
    with pytest.raises(ValueError, match="method='swav'"):
        train.Settings(method="swav")


def test_torchrun_two_gloo_processes(data, tmp_path):
    """DDP on CPU: 2 ranks × 8 samples, each reading its half of the epoch plan; rank 0 writes the run."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), *base_args(data, out, steps=2, ckpt_every=1), "--num-threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["resolved"]["world_size"] == 2 and cfg["resolved"]["per_rank_batch_size"] == 8
    assert cfg["resolved"]["steps_per_epoch"] == 3  # 48 samples / 2 ranks = 24 per rank = 3 batches of 8
    assert [r["step"] for r in records(out)] == [1, 2]
    ckpt = torch.load(out / "ckpt-last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2
    assert len(records(out, "final")) == 1
