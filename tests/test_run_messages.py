"""No silent waits in a train.py run (issue 27, item 3): what start-up is reading, the final evaluation
announced, a closing ``done`` line, progress under a terminal that reports 0 columns, an early estimate
for a run that cannot finish on this device."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from trainargs import train_args

import train

ROOT = Path(__file__).resolve().parents[1]


def _lines(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_print_config_says_what_it_reads_before_building_index_caches(demo_copy):
    data = demo_copy(24, 24, 8)
    args = ["--shards", f"{data['real']}:1", "--shards", f"{data['generated']}:1", "--device", "cpu"]
    args += ["--batch-size", "16", "--print-config"]
    first = _lines(CliRunner().invoke(train.main, args))
    assert first[0] == "reading 2 shard sets, 48 samples (first time: building 4 of 4 index caches)…"
    assert first[1] == "settings:"  # the YAML follows
    again = _lines(CliRunner().invoke(train.main, args))
    assert again[0] == "reading 2 shard sets, 48 samples…"


def test_the_final_evaluation_is_announced_and_the_run_ends_with_done(demo_sets, tmp_path):
    data = demo_sets(24, 24, 8)
    out = tmp_path / "run"
    lines = _lines(CliRunner().invoke(train.main, train_args(data, out, 2)))
    i = lines.index(
        "step 2: training done; evaluating on 8 test images (kNN over 24 labelled training images, "
        "offline linear probe of 2 epochs)…"
    )
    assert lines[i - 1].startswith("step 2/2 (100%)")
    assert lines[i + 1].startswith("final accuracy at step 2 on 8 test images: kNN ")
    assert lines[i + 2] == (
        f"done: 2 steps, checkpoint at {out / 'ckpt-last.pt'}; export the backbone with "
        f"`python -m models export {out} --out backbone.pt`"
    )
    assert i + 3 == len(lines)


def test_a_run_without_evaluation_ends_with_done_and_the_checkpoint(demo_sets, tmp_path):
    data = demo_sets(24, 24, 8)
    out = tmp_path / "run"
    args = ["--shards", f"{data['real']}:1", "--shards", f"{data['generated']}:1", "--steps", "2"]
    args += ["--batch-size", "16", "--image-size", "8", "--no-progress", "--device", "cpu", "--out", str(out)]
    lines = _lines(CliRunner().invoke(train.main, args))
    assert lines[-2].startswith("step 2/2 (100%)")
    assert lines[-1].startswith(f"done: 2 steps, checkpoint at {out / 'ckpt-last.pt'}; ")
    assert not any(ln.startswith(("final accuracy", "step 2: training done")) for ln in lines)


def _read_until(fd: int, until: str, timeout: float) -> str:
    """What a pseudo-terminal's master reads until ``until`` appears (or ``timeout`` seconds pass, or EOF)."""
    text, deadline = "", time.monotonic() + timeout
    while until not in text and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    return text


@pytest.mark.skipif(sys.platform != "linux", reason="a Linux pseudo-terminal")
def test_a_zero_column_terminal_shows_progress_and_the_cpu_estimate_comes_after_step_one(demo_sets, tmp_path):
    """train.py on a terminal that reports 0 columns (tqdm would draw nothing): plain progress lines; a run
    that cannot finish on this CPU (10 million steps) warns right after its first step, then a Ctrl-C
    stops it with a checkpoint."""
    data = demo_sets(24, 24, 8)
    args = train_args(data, tmp_path / "run", 10_000_000, log_every=50, ckpt_every=0)
    args.remove("--no-progress")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    try:
        text = _read_until(master, "estimate:", timeout=300)
        text += _read_until(master, "\n", timeout=30)
        proc.send_signal(signal.SIGINT)
        text += _read_until(master, "--resume", timeout=120)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    lines = [ln.strip("\r") for ln in text.replace("\r\n", "\n").split("\n")]
    steps = [i for i, ln in enumerate(lines) if ln.startswith("step 1/10000000 (0%) epoch 0 loss")]
    (estimate,) = [i for i, ln in enumerate(lines) if ln.startswith("estimate:")]
    assert steps and steps[0] < estimate, text
    assert "s/step (measured over step 1 on cpu;" in lines[estimate] and "--backbone convnet" in lines[estimate]
    assert not any(ln.startswith("step 3/") for ln in lines[:estimate])  # after one step, not three
    assert proc.returncode == 130 and "checkpoint saved to" in text
