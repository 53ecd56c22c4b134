"""train.py as a newcomer meets it: resuming (a finished run, another --steps), Ctrl-C at every stage,
what is announced before a run (no evaluation, unlabelled real data, a run far too long for the device),
and the hints for a --shards path that is not a shard set.

Same tiny demo as tests/test_train_cli.py: 24 real + 24 generated (3 steps of 16 per epoch), 40 test images.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from trainargs import train_args

import train
from models import warmup_cosine
from models.methods import SimCLR
from models.training import read_records

ROOT = Path(__file__).resolve().parents[1]
DEMO = (24, 24, 40)


@pytest.fixture(scope="module")
def data(demo_sets):
    return demo_sets(*DEMO)


def args_for(data, out, steps, **extra) -> list[str]:
    return train_args(data, out, steps, warmup_steps=40, **extra)


def invoke(args):
    return CliRunner().invoke(train.main, [str(a) for a in args])


def scheduled_lr(step: int, total: int, lr: float = 0.2 * 16 / 256) -> float:
    """The lr logged at ``step`` (the lr of the next step, after ``step`` scheduler steps) of a run of ``total``
    steps: SimCLR's 0.2 per 256 at batch 16, warm-up min(40, total // 10)."""
    return warmup_cosine(step, total, min(40, total // 10), lr)


def interrupt_at(monkeypatch, at_step: int, times: int = 1):
    """Ctrl-C (SIGINT to this process, ``times`` times) right after optimizer step ``at_step``."""
    original = SimCLR.on_train_step_end

    def hook(self, step, total):
        original(self, step, total)
        if step + 1 == at_step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs in the main thread, between bytecodes

    monkeypatch.setattr(SimCLR, "on_train_step_end", hook)


def tb_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


# -- a resumed run follows the schedule its settings describe ----------------------------------------
def test_extending_a_finished_run_follows_the_new_schedule_and_keeps_every_record(data, tmp_path):
    run = tmp_path / "run"
    first = invoke(args_for(data, run, steps=20))
    assert first.exit_code == 0, first.output
    assert [r["step"] for r in read_records(run, "train")] == list(range(1, 21))
    assert read_records(run, "train")[-1]["lr"] == pytest.approx(0.0)  # the 20-step schedule annealed to 0
    result = invoke(["--resume", run, "--steps", 30, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "schedule: 30 steps instead of the checkpoint's 20" in result.output
    recs = read_records(run, "train")
    assert [r["step"] for r in recs] == list(range(1, 31))
    for r in recs:  # steps 1-20 on the first run's schedule, 21-30 on the one config.yaml now records
        assert r["lr"] == pytest.approx(scheduled_lr(r["step"], 20 if r["step"] <= 20 else 30), abs=1e-12), r
    assert recs[20]["lr"] > 0 and recs[-1]["lr"] == pytest.approx(0.0)  # trained on, annealed at the new end
    cfg = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert (cfg["total_steps"], cfg["warmup_steps"]) == (30, 3)
    # nothing hidden: both final records stay (the 20-step model's and the 30-step one's), and TensorBoard
    # still has the train point at step 20, where the resumed writer started
    assert [r["step"] for r in read_records(run, "final")] == [20, 30]
    assert tb_steps(run, "train/loss") == list(range(1, 31))
    assert tb_steps(run, "final/knn_acc") == [20, 30]


def test_shortening_an_interrupted_run_anneals_to_zero_at_the_new_end(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupt_at(monkeypatch, 3)
    result = invoke(args_for(data, run, steps=300, ckpt_every=0))
    assert result.exit_code == 130, result.output
    monkeypatch.undo()
    result = invoke(["--resume", run, "--steps", 8, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "schedule: 8 steps instead of the checkpoint's 300" in result.output
    recs = read_records(run, "train")
    assert [r["step"] for r in recs] == list(range(1, 9))
    for r in recs:
        assert r["lr"] == pytest.approx(scheduled_lr(r["step"], 300 if r["step"] <= 3 else 8), abs=1e-12), r
    assert recs[-1]["lr"] == pytest.approx(0.0)  # annealed at the end it was given, not 0.0997 of the way


def test_steps_below_the_checkpoint_are_refused_in_one_line(data, tmp_path):
    run = tmp_path / "run"
    assert invoke(args_for(data, run, steps=4)).exit_code == 0
    before = (run / "metrics.jsonl").read_bytes()
    result = invoke(["--resume", run, "--steps", 2])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert "--steps 2: the checkpoint" in line and "already at step 4" in line and "--eval-only" in line
    assert (run / "metrics.jsonl").read_bytes() == before


# -- resuming a finished run says so and writes nothing ----------------------------------------------
def test_resuming_a_finished_run_says_it_is_complete_and_changes_nothing(data, tmp_path):
    run = tmp_path / "run"
    assert invoke(args_for(data, run, steps=3)).exit_code == 0
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = invoke(["--resume", run, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"{run}: the run is complete (3 of 3 steps; final accuracy at step 3" in result.output
    assert "--steps above 3" in result.output and "--eval-only" in result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # no record, no event file
    assert len(read_records(run, "final")) == 1


# -- Ctrl-C anywhere: one line, exit 130, what was kept, how to go on ------------------------------
def test_ctrl_c_during_the_final_evaluation_keeps_the_run_and_resume_only_evaluates(data, tmp_path, monkeypatch):
    import models.training.evaluation as evaluate

    run = tmp_path / "run"
    original = evaluate.extract_features

    def interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return original(*a, **kw)

    monkeypatch.setattr(evaluate, "extract_features", interrupted)
    result = invoke(args_for(data, run, steps=3))
    assert result.exit_code == 130, result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("SIGINT during the final evaluation: training is complete (3 steps, saved to ")
    assert f"`python train.py --resume {run}`" in last
    assert read_records(run, "final") == [] and torch.load(run / "ckpt-last.pt", weights_only=False)["step"] == 3
    monkeypatch.undo()
    result = invoke(["--resume", run, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "training is complete (3 steps) but no final evaluation was recorded; running it now" in result.output
    assert [r["step"] for r in read_records(run, "train")] == [1, 2, 3]  # nothing trained again
    assert [r["step"] for r in read_records(run, "final")] == [3]
    assert tb_steps(run, "train/loss") == [1, 2, 3] and tb_steps(run, "final/knn_acc") == [3]


def test_ctrl_c_during_start_up_writes_nothing(data, tmp_path, monkeypatch):
    import models.training.data as engine_data

    original = engine_data.DataPlan.train_loader

    def interrupted(self, *a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return original(self, *a, **kw)

    monkeypatch.setattr(engine_data.DataPlan, "train_loader", interrupted)
    run = tmp_path / "run"
    result = invoke(args_for(data, run, steps=3))
    assert result.exit_code == 130 and "Aborted" not in result.output and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "SIGINT during start-up: nothing was trained or written; run the command again"
    )
    assert not run.exists()


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupt_at(monkeypatch, 3, times=2)
    result = invoke(args_for(data, run, steps=9, ckpt_every=2))
    assert result.exit_code == 130, result.output
    assert "SIGINT: stopping after step 3 and saving a checkpoint (Ctrl-C again stops at once" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("SIGINT again during step 3: stopped at once without saving it; the last checkpoint ")
    assert f"--resume {run}" in last and "Traceback" not in result.output
    assert torch.load(run / "ckpt-last.pt", weights_only=False)["step"] == 2
    monkeypatch.undo()
    assert invoke(["--resume", run, "--no-progress"]).exit_code == 0
    assert [r["step"] for r in read_records(run, "train")] == list(range(1, 10))


def test_a_run_stopped_before_its_first_checkpoint_is_named_as_such(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupt_at(monkeypatch, 1, times=2)
    result = invoke(args_for(data, run, steps=9))
    assert result.exit_code == 130 and "no checkpoint was written yet" in result.output, result.output
    monkeypatch.undo()
    result = invoke(args_for(data, run, steps=9))
    assert result.exit_code == 1 and "never saved a checkpoint" in result.output and "remove it" in result.output


# -- items 3 and 8: what is announced before the run -----------------------------------------------------------
def test_no_eval_shards_and_an_unlabelled_real_source_are_announced(data, tmp_path, shard_factory):
    unlabelled = shard_factory(tmp_path, "looks-real", 24, kind="real", labels=[-1] * 24)
    args = args_for(data, tmp_path / "run", steps=1)
    for opt in ("--eval-shards", "--train-labels", "--shards", "--shards"):
        i = args.index(opt)
        del args[i : i + 2]
    result = invoke(args + ["--shards", str(unlabelled), "--train-labels", str(data["real"])])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    (no_eval,) = [ln for ln in lines if ln.startswith("no --eval-shards")]
    assert "no accuracy will be measured" in no_eval and "--probe-epochs 2 is ignored" in no_eval
    (warning,) = [ln for ln in lines if "is kind real but has no labels" in ln]
    assert "'looks-real'" in warning and "no-inflation recipe" in warning and "--kind generated" in warning


# -- a run far beyond minutes on its device says so, measured; the first steps are logged at once ------
def test_estimate_line_names_the_knobs_for_the_device():
    from models.training.settings import Settings
    from models.training.trainer import estimate_line

    settings = Settings()
    line = estimate_line(40.0, 99_998, (2, 2), settings, "cpu")
    assert line.startswith("estimate: 46d 7:05:20 for the 99,998 steps left ")  # 40 s x 99,998
    assert "at 40 s/step (measured over step 2 on cpu" in line
    assert "--backbone convnet" in line and "--steps N; 99,998 left now" in line
    assert "--backbone" not in estimate_line(40.0, 99_998, (2, 4), settings.replace(backbone="convnet"), "cpu")
    assert "--backbone" not in estimate_line(0.5, 99_998, (2, 4), settings, "cuda:0")  # the GPU trains the ResNet
    assert estimate_line(0.01, 1000, (2, 4), settings, "cpu") is None  # ten seconds: nothing to say


def test_a_long_background_run_logs_early_estimates_and_stops_on_sigint(data, tmp_path):
    """The README's defaults (100,000 steps of a ResNet-18) on a CPU, as a background job would run it (SIGINT
    ignored by the shell): steps 1 and 2 are logged at once (--log-every is 50), then one estimate line with
    the knobs; a SIGINT stops it with a checkpoint, exit 130."""
    run = tmp_path / "long"
    args = args_for(data, run, steps=100_000, log_every=50, ckpt_every=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` in a script
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("estimate:"):
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += rest.splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert steps[0].startswith("step 1/100000 (0%) epoch 0 loss") and steps[1].startswith("step 2/100000")
    (estimate,) = [ln for ln in lines if ln.startswith("estimate:")]
    assert "s/step (measured over step" in estimate and "--backbone convnet" in estimate and "--steps N" in estimate
    assert proc.returncode == 130, lines[-5:]
    assert "checkpoint saved to" in lines[-1] and f"--resume {run}" in lines[-1]
    assert not any("Traceback" in ln for ln in lines)


# -- --shards at something that is not a shard set ----------------------------------------------------
@pytest.mark.parametrize("case", ["imagefolder", "tar.gz", "tar"])
def test_shards_at_images_or_an_archive_gets_a_pack_command_with_its_own_out(case, data, tmp_path):
    from PIL import Image

    tree = tmp_path / "images"
    for c in ("cat", "dog"):
        (tree / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tree / c / "0.png")
    target = {"imagefolder": tree, "tar.gz": tmp_path / "images.tar.gz", "tar": tmp_path / "images.tar"}[case]
    if case != "imagefolder":
        with tarfile.open(target, "w:gz" if case == "tar.gz" else "w") as tf:
            tf.add(tree, arcname="images")
    args = args_for(data, tmp_path / "run", steps=1)
    i = args.index("--shards")
    del args[i : i + 4]
    result = invoke(args + ["--shards", str(target)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    what = {"imagefolder": "an ImageFolder tree", "tar.gz": "a compressed tar archive", "tar": "a single .tar file"}
    assert f"--shards {target}: {what[case]}" in line and "not a shard set" in line
    command = line.split("`")[3]  # the second quoted command: the first is `python -m shards pack` itself
    assert command.startswith(f"python -m shards pack {target} --out ")
    out = Path(command.split("--out ")[1])
    assert out.resolve() != target.resolve() and target.resolve() not in out.resolve().parents
    assert line.endswith(f"then --shards {out}")
