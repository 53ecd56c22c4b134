"""``python -m shards pack`` as a newcomer meets it: Ctrl-C with workers, the project's own cache files,
hints for a mistyped --subdir, unlabelled data packed as real, logs that are not a terminal."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from shards.base.progress import LineProgress
from shards.cli import main
from shards.format.manifest import Manifest
from shards.read.index import cache_paths

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def error_line(code, out) -> str:
    assert code == 1 and "Traceback" not in out, out
    (line,) = out.strip().splitlines()
    return line


def open_with_the_loader(directory: Path) -> None:
    """Open a set the way training does: the reader writes its index caches beside the shards."""
    from shards.read.reader import SourceReader

    SourceReader(directory, Manifest.load(directory))


# -- Ctrl-C during a parallel pack ----------------------------------------------------------------
def test_ctrl_c_during_a_parallel_pack_is_one_line_and_no_worker_traceback(tmp_path):
    """Ctrl-C reaches the whole process group (the pack and its encoding workers): the workers print
    nothing, the pack says what was kept in one line and exits 130, leaving nothing in --out."""
    np.save(tmp_path / "a.npy", np.random.default_rng(0).integers(0, 256, (40_000, 16, 16, 3), dtype=np.uint8))
    out = tmp_path / "o"
    p = subprocess.Popen(
        [sys.executable, "-m", "shards", "pack", tmp_path / "a.npy", "--out", out, "--format", "png"]
        + ["--workers", "2", "--shard-size", "1000", "-q"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline = time.time() + 60
    while not list(out.glob(".pack-*/.*.tar.*.tmp")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)  # until the workers are encoding and the first tar is being written
    os.killpg(p.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip().splitlines() == [
        f"interrupted (SIGINT): nothing was written and {out} is as it was (a shard set already there is intact); "
        "pack again"
    ]
    assert not out.exists()


# -- the loaders' caches are the project's own files -------------------------------------------
@pytest.mark.parametrize("fmt", ["jpg", "raw"])
def test_a_packed_set_with_loader_caches_packs_again_as_a_source(fmt, tmp_path, shard_factory, read_samples):
    src = shard_factory(tmp_path, "real", 40, fmt=fmt, shard_size=16)
    open_with_the_loader(src)
    assert len(list(src.glob(".*.loader-cache.npz"))) == 3
    code, out = run("pack", src, "--out", tmp_path / "half", "--per-class", 2, "--name", "half", "-q")
    assert code == 0, out
    assert f"source:  shard set {src} (name 'real', kind real, 40 {fmt} samples, 10 classes" in out
    assert Manifest.load(tmp_path / "half").format == fmt  # passed through (raw pixels stay raw)
    m = Manifest.load(tmp_path / "half")
    assert m.count == 20 and m.label_counts == {str(c): 2 for c in range(10)}
    old = {s["meta"]["origin"]: s["image"] for s in read_samples(src)}
    for s in read_samples(tmp_path / "half"):  # passed through byte for byte, labels kept
        tar, key = s["meta"]["origin"].split(":")
        assert s["image"] == old[str(int(key))] and s["label"] == int(key) % 10


def test_overwrite_removes_the_old_sets_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    np.save(tmp_path / "a.npy", np.random.default_rng(0).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8))
    out = tmp_path / "o"
    assert run("pack", tmp_path / "a.npy", "--out", out, "--shard-size", 10, "-q")[0] == 0
    open_with_the_loader(out)
    old = Manifest.load(out)
    beside = [cache_paths(out / s.index)[0] for s in old.shards]
    assert all(p.is_file() for p in beside)
    user = cache_paths(out / old.shards[0].index)[1]  # as where the shard folder is read-only
    user.parent.mkdir(parents=True)
    user.write_bytes(beside[0].read_bytes())
    code, text = run("pack", tmp_path / "a.npy", "--out", out, "--overwrite", "--limit", 5, "-q")
    assert code == 0, text
    assert not any(p.exists() for p in beside) and not user.exists()
    new = Manifest.load(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *new.files])


def test_caches_are_readable_by_the_other_users_of_a_shared_folder(tmp_path, shard_factory):
    src = shard_factory(tmp_path, "real", 20, fmt="png")
    old = os.umask(0o022)
    try:
        open_with_the_loader(src)
    finally:
        os.umask(old)
    caches = list(src.glob(".*.loader-cache.npz"))
    assert caches and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in caches)
    for p in caches:
        p.unlink()
    old = os.umask(0o077)  # a private umask is respected
    try:
        open_with_the_loader(src)
    finally:
        os.umask(old)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in src.glob(".*.loader-cache.npz"))


# -- a mistyped --subdir lists the folders that exist ---------------------------------------------
def test_subdir_typo_in_a_folder_lists_what_is_there(tmp_path):
    for d in ("cifar10/train/cat", "cifar10/test/cat"):
        (tmp_path / "src" / d).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "src" / d / "0.png")
    line = error_line(*run("pack", tmp_path / "src", "--subdir", "cifar10/trian", "--out", tmp_path / "o"))
    assert line == (
        f"Error: {tmp_path / 'src' / 'cifar10/trian'}: no such folder; check --subdir: the folders inside cifar10 "
        "are cifar10/test, cifar10/train; did you mean --subdir cifar10/train?"
    )
    line = error_line(*run("pack", tmp_path / "src", "--subdir", "cifar/train", "--out", tmp_path / "o"))
    assert "the folders at the top are cifar10; did you mean --subdir cifar10/train?" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"shared data not found at {CIFAR}")
def test_subdir_typo_in_the_shared_archive_lists_its_folders(tmp_path):
    line = error_line(*run("pack", CIFAR, "--subdir", "cifar10/trian", "--kind", "real", "--out", tmp_path / "o"))
    assert line.endswith(
        "no files under cifar10/trian/ in the archive; check --subdir: the folders inside cifar10 are "
        "cifar10/test, cifar10/train; did you mean --subdir cifar10/train?"
    )


# -- unlabelled images packed as real -------------------------------------------------------------
def test_an_unlabelled_flat_folder_packed_as_real_gets_a_warning_naming_kind_generated(tmp_path):
    for i in range(5):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i:05d}.png")
    code, out = run("pack", tmp_path, "--out", tmp_path / "o", "-q")
    assert code == 0, out
    (warning,) = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert "has no labels and was packed as --kind real (the default)" in warning
    assert "an unlabelled flat folder looks like generator output" in warning
    assert "--kind generated --overwrite" in warning
    code, out = run("pack", tmp_path, "--out", tmp_path / "g", "--kind", "generated", "-q")
    assert code == 0 and "warning" not in out


# -- logs stay readable when not on a terminal ----------------------------------------------------
def test_progress_off_a_terminal_is_a_few_plain_lines():
    import io

    stream = io.StringIO()
    with LineProgress(50_000, "pack x", "img", stream=stream, quiet_s=0, min_gap_s=0) as bar:
        for start in range(0, 50_000, 256):
            bar.update(min(256, 50_000 - start))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 10  # 10 %, 20 %, ... 90 %, then the end
    assert lines[0].startswith("pack x: 5,120/50,000 img (10%), ") and lines[0].endswith(" left")
    assert lines[-1].startswith("pack x: 50,000/50,000 img (100%), ") and " img/s in " in lines[-1]
    quiet = io.StringIO()
    with LineProgress(100, "pack y", stream=quiet) as bar:  # done within quiet_s: the summary says it all
        bar.update(100)
    assert quiet.getvalue() == ""


def test_pack_writes_no_bar_frames_when_not_on_a_terminal(tmp_path):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).integers(0, 256, (600, 4, 4, 3), dtype=np.uint8))
    code, out = run("pack", tmp_path / "a.npy", "--out", tmp_path / "o")  # progress on (no -q), not a tty
    assert code == 0 and "\r" not in out and "it/s" not in out and "img/s]" not in out, out


def test_worker_pools_under_the_interrupt_handler_still_stop(tmp_path, shard_factory):
    """Forked workers inherit the CLI's Ctrl-C handler: they leave SIGINT to the parent but must still die
    of SIGTERM, which Pool.terminate sends (a verify with two workers hung at exit, joining a worker that
    ignored it)."""
    src = shard_factory(tmp_path, "real", 40, fmt="png", shard_size=16)
    proc = subprocess.run(
        [sys.executable, "-m", "shards", "verify", str(src), "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith(f"{src}: OK (40 samples in 3 shard(s)"), proc.stderr


def test_a_pool_stopped_while_its_workers_start_never_hangs():
    """A SIGTERM from Pool.terminate that reaches a worker still starting was dropped by Python's at-fork reset
    of the inherited handler: the worker then waited for ever on the queue lock the parent held, and the parent
    joined it for ever (a `shards verify` of tiny shards hung CI: its pool was done before its second worker
    had started). ``start_pool`` forks with the signals held back; 30 pools stopped at once all end."""
    script = (
        "import multiprocessing as mp, numpy as np\n"
        "from shards.base.interrupt import interrupts, start_pool\n"
        "ballast = np.ones(300_000_000 // 8)  # a large parent forks slowly, as the test process does\n"
        "with interrupts():\n"
        "    for _ in range(30):\n"
        "        start_pool(mp.get_context('fork'), 2).terminate()\n"
        "print('done')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "shards", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("pack", "verify", "info", "demo"):
        assert cmd in r.stdout


REPO = Path(__file__).resolve().parents[1]
