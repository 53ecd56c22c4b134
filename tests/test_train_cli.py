"""train.py end to end on CPU: tiny demo shards (24 real + 24 generated, 40 test), 8×8 crops, batch 16.

An epoch of ``real:1 + generated:1`` is 48 samples = 3 steps of 16, so steps 3 and 6 are epoch boundaries.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from trainargs import train_args

import train
from loaders.batch.loader import TrainLoader
from models.methods import SimCLR
from models.training import read_records
from models.training.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


DEMO = (24, 24, 40)  # demo_sets(n_real, n_generated, n_test): shards of 16, seed 0
FEED_DELAY_S = 0.2  # the straight run's loader holds every batch back this long


@pytest.fixture(scope="module")
def data(demo_sets):
    """The tiny demo shared read-only by the session (tests/conftest.py); damaging tests use ``demo_copy``."""
    return demo_sets(*DEMO)


def base_args(data, out, steps=6, **extra):
    return train_args(data, out, steps, **extra)


def run(args):
    result = CliRunner().invoke(train.main, args, catch_exceptions=False)
    return result


def records(out, kind="train"):
    return read_records(out, kind)


def _delayed(batches):
    """``TrainLoader.batches`` whose every batch arrives ``FEED_DELAY_S`` late: a slow data feed."""

    def slow(self):
        it = batches(self)
        try:
            for b in it:
                time.sleep(FEED_DELAY_S)
                yield b
        finally:
            it.close()

    return slow


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """9 uninterrupted steps (3 epochs), keeping ckpt-3.pt and ckpt-6.pt (epoch ends), an eval at step 4; the
    loader is slowed down by ``FEED_DELAY_S`` per batch (timing only: batches and losses are unchanged)."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrainLoader, "batches", _delayed(TrainLoader.batches))
        result = run(base_args(data, out, steps=9, keep_every=3, eval_every=4, ckpt_every=2))
    assert result.exit_code == 0, result.output
    return out, result


def test_run_writes_config_metrics_checkpoint_and_events(straight):
    out, result = straight
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["settings"]["method"] == "simclr" and cfg["settings"]["steps"] == 9
    assert cfg["resolved"]["total_steps"] == 9 and cfg["resolved"]["steps_per_epoch"] == 3
    assert cfg["resolved"]["inflation"]["weights"] == {"demo-real": 1.0, "demo-generated": 1.0}
    assert cfg["resolved"]["lr"] == pytest.approx(0.2 * 16 / 256)
    train_recs = records(out)
    assert [r["step"] for r in train_recs] == list(range(1, 10))
    assert [r["epoch"] for r in train_recs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for r in train_recs:
        assert all(
            k in r
            for k in (
                "loss",
                "ssl_loss",
                "probe_loss",
                "online_probe_acc_train_views",
                "lr",
                "samples_per_s",
                "data_wait",
            )
        )
        assert r["loss"] == pytest.approx(r["ssl_loss"] + r["probe_loss"], rel=1e-6)  # the probe trains too
        # one step per record: data_wait × (16 samples / samples_per_s) is the seconds spent waiting for the
        # batch, which hold the feed's delay, and cannot exceed the step's time
        waited = r["data_wait"] * 16 / r["samples_per_s"]
        assert waited >= FEED_DELAY_S * 0.999 and r["data_wait"] <= 1, r
    assert train_recs[-1]["lr"] == pytest.approx(0.0)  # cosine to 0 at the last step
    evals = records(out, "eval")
    assert [ev["step"] for ev in evals] == [4, 8]
    assert all(ev["eval_samples"] == 40 and ev["knn_train_samples"] == 24 for ev in evals)
    (final,) = records(out, "final")
    assert set(final) >= {"knn_acc", "online_probe_acc", "linear_probe_acc"}
    assert "final accuracy at step 9" in result.output
    # stderr is not a terminal here: progress is a plain line per log step, never carriage-return redraws
    assert "step 3/9 (33%) epoch 0 loss" in result.output and "\r" not in result.output
    ckpt = torch.load(out / "ckpt-last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 9 and ckpt["settings"]["batch_size"] == 16
    assert (ckpt["loader"]["epoch"], ckpt["loader"]["step"]) == (3, 0)  # the next batch: epoch 3 starts
    assert torch.load(out / "ckpt-3.pt", map_location="cpu", weights_only=False)["step"] == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tb"))
    tb.Reload()
    assert {e.step: e.value for e in tb.Scalars("train/loss")} == pytest.approx(
        {r["step"]: r["loss"] for r in train_recs}, rel=1e-6
    )  # TensorBoard holds the same curve (float32)
    assert [e.step for e in tb.Scalars("eval/knn_acc")] == [4, 8]
    assert not list(out.glob(".*.tmp"))


def test_resume_at_epoch_boundary_matches_uninterrupted_run_across_the_next_boundary(straight, tmp_path):
    out, _ = straight
    resumed = tmp_path / "resumed"
    result = run(["--resume", str(out / "ckpt-3.pt"), "--out", str(resumed), "--no-progress"])
    assert result.exit_code == 0, result.output
    want = {r["step"]: (r["epoch"], r["loss"]) for r in records(out)}
    got = {r["step"]: (r["epoch"], r["loss"]) for r in records(resumed)}
    assert sorted(got) == [4, 5, 6, 7, 8, 9]
    for step, (epoch, loss) in got.items():  # epochs 1, 1, 1, 2, 2, 2 as in the uninterrupted run
        assert epoch == want[step][0] and loss == pytest.approx(want[step][1], rel=1e-5, abs=1e-6), step
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
    result = CliRunner().invoke(train.main, base_args(data_of(out), run_dir, steps=9, ckpt_every=0))
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert "SIGINT at step 3: checkpoint saved" in result.output and "Traceback" not in result.output
    assert torch.load(run_dir / "ckpt-last.pt", map_location="cpu", weights_only=False)["step"] == 3
    monkeypatch.undo()
    result = run(["--resume", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    want = [r["loss"] for r in records(out)]
    got = [r["loss"] for r in records(run_dir)]  # same directory: steps 1-3 before, 4-6 after the resume
    assert [r["step"] for r in records(run_dir)] == list(range(1, 10))
    assert [r["epoch"] for r in records(run_dir)] == [r["epoch"] for r in records(out)]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert len(records(run_dir, "final")) == 1


def test_resume_inside_an_epoch_matches_uninterrupted_run(straight, tmp_path):
    out, _ = straight
    resumed = tmp_path / "resumed-mid"
    # step 4 is inside epoch 1: the loader must replay the augmentation draws of the uninterrupted run
    first = tmp_path / "first"
    assert run(base_args(data_of(out), first, steps=9, keep_every=4, ckpt_every=0)).exit_code == 0
    result = run(["--resume", str(first / "ckpt-4.pt"), "--out", str(resumed), "--no-progress"])
    assert result.exit_code == 0, result.output
    want = {r["step"]: r["loss"] for r in records(out)}
    got = {r["step"]: r["loss"] for r in records(resumed)}
    assert [got[s] for s in range(5, 10)] == pytest.approx([want[s] for s in range(5, 10)], rel=1e-5, abs=1e-6)


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
    # steps 1 and 2 are logged early (the first steps of any run), the step-3 record was finite; step 4 never logged
    assert [r["step"] for r in records(out)] == [1, 2, 3]


def test_eval_only_on_checkpoint(straight):
    out, _ = straight
    result = run(
        [
            "--eval-only",
            "--checkpoint",
            str(out / "ckpt-3.pt"),
            "--probe-epochs",
            "2",
            "--knn-k",
            "5",
            "--image-size",
            "8",
            "--device",
            "cpu",
        ]
    )
    assert result.exit_code == 0, result.output
    assert f"evaluation of {out / 'ckpt-3.pt'} at step 3 on 40 test images" in result.output
    (rec,) = records(out, "eval_only")
    assert rec["step"] == 3 and rec["checkpoint"].endswith("ckpt-3.pt")
    assert rec["eval_samples"] == 40 and rec["knn_train_samples"] == 24


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "unlabelled-eval", "batch-too-large", "unknown-method", "steps-and-epochs", "resume-clash"],
)
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
        del args[i : i + 4]
    args += expect[0]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    error_lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(error_lines) == 1 and expect[1] in error_lines[0], result.output
    assert not out.exists()  # no work started, nothing written


def test_torchrun_two_gloo_processes(data, tmp_path):
    """DDP on CPU: 2 ranks × 8 samples, each its half of every global batch of 16; rank 0 writes the run."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "train.py"),
        *base_args(data, out, steps=2, ckpt_every=1),
        "--num-threads",
        "1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["resolved"]["world_size"] == 2 and cfg["resolved"]["per_rank_batch_size"] == 8
    assert cfg["settings"]["sync_batchnorm"]  # the release shares BatchNorm statistics across ranks
    assert cfg["resolved"]["steps_per_epoch"] == 3  # 48 samples = 3 global batches of 16 (8 a rank)
    assert [r["step"] for r in records(out)] == [1, 2]
    ckpt = torch.load(out / "ckpt-last.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2
    assert len(records(out, "final")) == 1


# -- the command line: --config, --print-config ---------------------------------------------------------
def test_config_file_with_flags_overriding(straight, tmp_path):
    """A previous run's config.yaml is a recipe: its settings (not its run directory) apply, flags win."""
    out, _ = straight
    new = tmp_path / "from-config"
    result = run(
        ["--config", str(out / "config.yaml"), "--seed", "5", "--steps", "2", "--out", str(new), "--print-config"]
    )
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    old = yaml.safe_load((out / "config.yaml").read_text())["settings"]
    assert doc["settings"]["seed"] == 5 and doc["settings"]["steps"] == 2 and doc["settings"]["out"] == str(new)
    same = {k: v for k, v in old.items() if k not in ("seed", "steps", "out", "keep_every", "eval_every", "ckpt_every")}
    assert {k: doc["settings"][k] for k in same} == same
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    result = CliRunner().invoke(train.main, ["--config", str(bad)])
    assert result.exit_code == 1 and "unknown setting(s) stepz" in result.output and "Traceback" not in result.output


def test_print_config_resolves_everything_and_writes_nothing(data, tmp_path):
    out = tmp_path / "never"
    result = run(base_args(data, out) + ["--inflation", "adainf", "--print-config"])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    resolved = doc["resolved"]
    assert resolved["inflation"]["weights"] == {"demo-real": 1.0, "demo-generated": 1.0}  # explicit :1 weights win
    views = resolved["augmentation"]["views"]
    assert len(views) == 2 and all(v["size"] == 8 for v in views)
    assert resolved["total_steps"] == 6 and resolved["steps_per_epoch"] == 3 and resolved["device"] == "cpu"
    assert [m["count"] for m in resolved["mixture"]] == [24, 24] and all(
        len(m["digest"]) == 16 for m in resolved["mixture"]
    )
    assert not out.exists()


# -- nothing lost ---------------------------------------------------------------------------------------
def test_new_run_refuses_a_directory_holding_a_run(straight, data):
    out, _ = straight
    before = (out / "config.yaml").read_bytes(), (out / "metrics.jsonl").read_bytes()
    result = CliRunner().invoke(train.main, base_args(data, out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "already holds a run" in result.output and f"--resume {out}" in result.output
    assert ((out / "config.yaml").read_bytes(), (out / "metrics.jsonl").read_bytes()) == before


@pytest.mark.parametrize("case", ["parent-is-file", "read-only"])
def test_unwritable_out_is_one_line(case, data, tmp_path):
    if case == "parent-is-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
        needle = "a parent of it is a file"
    elif os.geteuid() == 0:  # root writes into a mode-0500 folder; sysfs refuses even root a new entry
        out = Path("/sys/adainf-unwritable") / "run"
        needle = "cannot write there"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "run"
        needle = "cannot write there"
    result = CliRunner().invoke(train.main, base_args(data, out, steps=1))
    assert result.exit_code == 1 and "Traceback" not in result.output and needle in result.output, result.output


def test_disk_full_while_checkpointing_is_one_line(data, tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "full"
    result = CliRunner().invoke(train.main, base_args(data, out, steps=2, ckpt_every=1))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "cannot write the checkpoint (the disk is full)" in result.output
    assert not list(out.glob(".*.tmp")) and not (out / "ckpt-last.pt").exists()


def test_resume_tolerates_a_torn_metrics_line(straight, tmp_path):
    out, _ = straight
    run_dir = tmp_path / "torn"
    assert run(base_args(data_of(out), run_dir, steps=9, ckpt_every=3)).exit_code == 0
    # as if the run had been killed after the step-3 checkpoint (the same run's state at step 3)
    torch.save(torch.load(out / "ckpt-3.pt", map_location="cpu", weights_only=False), run_dir / "ckpt-last.pt")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 10, "lo')  # a crash mid-write
    result = run(["--resume", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in records(run_dir)] == list(range(1, 10))


def test_resume_refuses_changed_data_unless_allowed(straight, tmp_path, demo_copy):
    from shards.packing.demo import make_demo

    out, _ = straight
    d = data_of(out)
    copy = demo_copy(*DEMO)
    run_dir = tmp_path / "run"
    args = base_args({**d, "generated": copy["generated"]}, run_dir, steps=4, keep_every=2)
    assert run(args).exit_code == 0
    make_demo(
        copy["real"].parent, n_real=24, n_generated=16, n_test=40, seed=1, shard_size=16, overwrite=True
    )  # re-packed
    result = CliRunner().invoke(train.main, ["--resume", str(run_dir / "ckpt-2.pt"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        "the data changed since the checkpoint" in result.output
        and "count 24 at the checkpoint, 16 now" in result.output
    )
    result = run(
        ["--resume", str(run_dir / "ckpt-2.pt"), "--out", str(tmp_path / "r3"), "--allow-data-change", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "the epoch plan differs from the checkpoint's" in result.output


def test_skipped_corrupt_samples_are_counted_and_reported(tmp_path, demo_copy, corrupt_sample):
    d = demo_copy(*DEMO)
    _, key = corrupt_sample(d["generated"], 0, 1)
    out = tmp_path / "skip"
    result = run(base_args(d, out, steps=3, on_corrupt="skip"))
    assert result.exit_code == 0, result.output
    recs = records(out)
    assert recs[-1]["corrupt_skipped"] == 1 and recs[-1]["corrupt_keys"] == [f"demo-generated/{key}"]
    (final,) = records(out, "final")
    assert final["corrupt_skipped"] == 1
    assert f"1 corrupt training sample(s) were skipped (--on-corrupt skip), first: {key}" in result.output
    result = CliRunner().invoke(train.main, base_args(d, tmp_path / "err", steps=3))
    assert result.exit_code == 1 and "Traceback" not in result.output and key in result.output


def test_policy_refusal_is_one_line(data, tmp_path):
    args = base_args(data, tmp_path / "gen-only")
    i = args.index("--shards")
    del args[i : i + 4]
    result = CliRunner().invoke(train.main, args + ["--shards", str(data["generated"]), "--inflation", "none"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "needs a real source" in result.output


def test_second_writer_of_a_run_directory_refuses(data, tmp_path):
    from shards.base.lock import OutputLock

    out = tmp_path / "busy"
    with OutputLock(out, "train.py", command="python train.py --out busy"):  # another run writing there
        result = CliRunner().invoke(train.main, base_args(data, out, steps=1))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert str(os.getpid()) in result.output and "train.py" in result.output
    assert not (out / "config.yaml").exists() and not (out / ".lock").exists()
    assert run(base_args(data, out, steps=1)).exit_code == 0  # once released, the run goes ahead
    assert not (out / ".lock").exists()


def test_a_waiting_gpu_gets_one_line_naming_the_levers():
    from models.training.trainer import data_wait_hint

    settings = Settings(num_threads=1)
    hint = data_wait_hint(0.46, settings, on_gpu=True)
    assert hint.startswith("the GPU waited for data 46% of the last interval")
    assert "--num-threads" in hint or os.cpu_count() == 1
    assert "--loader-device" not in hint  # auto already runs DALI on the GPU
    assert "--loader-device gpu" in data_wait_hint(0.5, settings.replace(loader_device="cpu"), on_gpu=True)
    assert data_wait_hint(0.1, settings, on_gpu=True) is None  # a fed GPU
    assert data_wait_hint(0.9, settings, on_gpu=False) is None  # on a CPU the figure is core sharing, not GPU idling
