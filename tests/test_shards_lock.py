"""shards.base.lock.OutputLock: one writer per folder, stale locks taken over, live ones named."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from shards.base.errors import UserError
from shards.base.lock import LOCK_NAME, LockHeld, OutputLock
from shards.cli import main
from shards.format.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]


def _holder_process(directory: Path) -> subprocess.Popen:
    """A separate process that takes the lock, says so, and waits until told to go (or killed)."""
    code = textwrap.dedent(f"""
        import sys
        from shards.base.lock import OutputLock
        with OutputLock({str(directory)!r}, "test holder", command="holder --flag"):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_acquire_writes_holder_and_release_removes_it(tmp_path):
    d = tmp_path / "new" / "out"
    with OutputLock(d, "shards pack", command="python -m shards pack x --out y") as lock:
        assert lock.held and d.is_dir()
        info = json.loads((d / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["what"] == "shards pack" and info["command"] == "python -m shards pack x --out y"
        assert lock.holder()["pid"] == os.getpid()
    assert not (d / LOCK_NAME).exists() and not lock.held
    lock.acquire()  # acquire()/release() work as well as the context manager, and again after a release
    lock.release()
    assert sorted(os.listdir(d)) == []


def test_second_lock_refuses_with_one_line_naming_pid_and_folder(tmp_path):
    with OutputLock(tmp_path, "shards pack"):
        with pytest.raises(LockHeld) as e:
            OutputLock(tmp_path, "shards pack").acquire()
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert f"pid {os.getpid()}" in msg and str(tmp_path) in msg and "shards pack" in msg
    assert e.value.holder["pid"] == os.getpid()


def test_live_holder_in_another_process_refuses_then_frees(tmp_path):
    p = _holder_process(tmp_path)
    try:
        with pytest.raises(LockHeld, match=rf"in use by test holder \(pid {p.pid}\b"):
            OutputLock(tmp_path, "second").acquire()
    finally:
        p.communicate("go\n")
    assert p.returncode == 0 and not (tmp_path / LOCK_NAME).exists()
    with OutputLock(tmp_path, "second"):
        pass


def test_killed_holder_is_taken_over(tmp_path):
    p = _holder_process(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (tmp_path / LOCK_NAME).exists()  # SIGKILL left the file behind
    with OutputLock(tmp_path, "after the crash") as lock:
        assert lock.holder()["pid"] == os.getpid() and lock.holder()["what"] == "after the crash"


def test_stale_lock_file_of_dead_pid_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "what": "old"}))
    with OutputLock(tmp_path, "new") as lock:
        assert lock.holder()["pid"] == os.getpid()


def test_reused_pid_is_stale_but_same_process_without_flock_is_live(tmp_path):
    """A lock file naming a running pid whose start time differs (the pid was reused) is stale; one
    whose start time matches is a live holder, even without its flock (filesystems without flock)."""
    me = psutil.Process(os.getpid()).create_time()
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start_time": me - 1000})
    )
    with OutputLock(tmp_path, "new"):
        pass
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start_time": me}))
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        OutputLock(tmp_path, "new").acquire()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 12345, "host": "elsewhere.example", "what": "shards pack"}))
    with pytest.raises(LockHeld) as e:
        OutputLock(tmp_path, "new").acquire()
    assert "pid 12345 on host elsewhere.example" in str(e.value) and f"remove {tmp_path / LOCK_NAME}" in str(e.value)


def test_empty_lock_file_of_a_creator_that_died_is_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with OutputLock(tmp_path, "new") as lock:
        assert lock.holder()["pid"] == os.getpid()


def test_pack_refuses_while_another_writer_holds_the_folder(tmp_path):
    """Two packs into one --out: the second refuses in one line naming the first's pid and the folder,
    writes nothing, and the first's set is intact."""
    np.save(tmp_path / "a.npy", np.zeros((5, 4, 4, 3), np.uint8))
    out = tmp_path / "o"
    p = _holder_process(out)
    try:
        r = CliRunner().invoke(main, ["pack", str(tmp_path / "a.npy"), "--out", str(out), "-q"])
        assert r.exit_code == 1 and "Traceback" not in r.output
        line = r.output.strip()
        assert len(line.splitlines()) == 1 and f"pid {p.pid}" in line and str(out) in line
        assert sorted(os.listdir(out)) == [LOCK_NAME]
    finally:
        p.communicate("go\n")
    r = CliRunner().invoke(main, ["pack", str(tmp_path / "a.npy"), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert Manifest.load(out).count == 5 and not (out / LOCK_NAME).exists()
