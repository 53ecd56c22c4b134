"""shards pack never loses data: it removes only files its manifest owns, leaves a valid set at every
instant (even when killed), cleans up after packs that died, and turns OSErrors into one line."""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from shards.base.lock import LOCK_NAME
from shards.cli import main
from shards.format.manifest import Manifest
from shards.packing.pack import PackConfig, pack
from shards.verify import verify_dir


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def one_line_error(code, out) -> str:
    assert code == 1 and "Traceback" not in out, out
    line = out.strip()
    assert len(line.splitlines()) == 1, out
    return line


def listing(d: Path) -> dict[str, bytes]:
    return {p.name: (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(d.iterdir())}


@pytest.fixture
def arrays(tmp_path):
    """Two npy sources: 30 images (old set) and 12 images (new set), 4×4."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "old.npy", rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8))
    np.save(tmp_path / "new.npy", rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8))
    return tmp_path / "old.npy", tmp_path / "new.npy"


# -- only what the previous manifest listed ------------------------------------------------------


def test_overwrite_refuses_unowned_tar_and_idx_and_keeps_them(arrays, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "my-archive.tar").write_bytes(b"user data")
    (out / "notes.idx").write_bytes(b"user index")
    for extra in ([], ["--overwrite"]):
        line = one_line_error(*run("pack", arrays[0], "--out", out, "-q", *extra))
        assert "my-archive.tar" in line and "no manifest.json here lists" in line and "move them away" in line
    assert listing(out) == {"my-archive.tar": b"user data", "notes.idx": b"user index"}


def test_overwrite_refuses_when_the_source_itself_lies_in_out(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with tarfile.open(out / "src.tar", "w") as tf:
        for i in range(3):
            p = tmp_path / f"{i}.png"
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(p)
            tf.add(p, arcname=f"imgs/{i}.png")
    before = (out / "src.tar").read_bytes()
    line = one_line_error(*run("pack", out / "src.tar", "--out", out, "--overwrite", "-q"))
    assert "src.tar" in line
    assert (out / "src.tar").read_bytes() == before and sorted(os.listdir(out)) == ["src.tar"]


def test_overwrite_replaces_exactly_the_old_manifests_files(arrays, tmp_path):
    out = tmp_path / "o"
    pack(arrays[0], PackConfig(out=out, shard_size=10, progress=False))
    old = Manifest.load(out)
    (out / "README.md").write_text("mine")
    (out / "extra.tar.gz").write_bytes(b"mine too")
    r = pack(arrays[1], PackConfig(out=out, shard_size=10, overwrite=True, progress=False))
    assert not (old.files & r.manifest.files)  # new names never clash with the old ones
    assert set(os.listdir(out)) == r.manifest.files | {"manifest.json", "README.md", "extra.tar.gz"}
    assert verify_dir(out) == [] and r.manifest.count == 12
    # with a user's .tar next to a set, --overwrite refuses instead of deleting it
    (out / "user.tar").write_bytes(b"x")
    line = one_line_error(*run("pack", arrays[0], "--out", out, "--overwrite", "-q"))
    assert "user.tar" in line and (out / "user.tar").read_bytes() == b"x"
    assert Manifest.load(out) == r.manifest


def test_a_manifest_naming_files_outside_its_folder_is_refused(arrays, tmp_path):
    out = tmp_path / "o"
    pack(arrays[0], PackConfig(out=out, progress=False))
    victim = tmp_path / "victim.tar"
    victim.write_bytes(b"keep me")
    text = (out / "manifest.json").read_text()
    m = Manifest.load(out)
    (out / "manifest.json").write_text(text.replace(f'"{m.shards[0].file}"', '"../victim.tar"'))
    line = one_line_error(*run("pack", arrays[1], "--out", out, "--overwrite", "-q"))
    assert "outside the shard folder" in line and victim.read_bytes() == b"keep me"


# -- temp folders, killed installs (the lock: tests/test_shards_lock.py) ---------------------


def test_next_pack_removes_temp_folders_of_dead_packs(arrays, tmp_path):
    out = tmp_path / "o"
    pack(arrays[0], PackConfig(out=out, progress=False))
    for name in (".pack-999999.tmp", ".pack-999998-0a1b2c3d.tmp"):  # the old and the new naming
        (out / name).mkdir()
        (out / name / "o-00000.tar").write_bytes(b"\0" * 4096)
    (out / ".manifest.json.abc123.tmp").write_text("{")
    pack(arrays[1], PackConfig(out=out, overwrite=True, progress=False))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert verify_dir(out) == []


def _die_at(k: int):
    """Make the k-th os.replace/os.unlink of this process end it on the spot, like a kill -9."""
    calls = [0]
    real_replace, real_unlink = os.replace, os.unlink

    def counted(real):
        def f(*a, **kw):
            calls[0] += 1
            if calls[0] == k:
                os._exit(17)
            return real(*a, **kw)

        return f

    os.replace, os.unlink = counted(real_replace), counted(real_unlink)


def test_a_kill_at_any_instant_leaves_a_complete_valid_set(arrays, tmp_path):
    """Kill an --overwrite pack at each file operation in turn (a forked child, hard exit): the folder
    always holds the old or the new complete set, verify passes, and the next pack cleans up."""
    pristine = tmp_path / "pristine"
    pack(arrays[0], PackConfig(out=pristine, shard_size=10, progress=False))
    old = Manifest.load(pristine)
    out = tmp_path / "o"
    seen = set()
    for k in range(1, 60):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pristine, out)
        pid = os.fork()
        if pid == 0:  # the child packs and dies at its k-th replace/unlink
            try:
                _die_at(k)
                pack(arrays[1], PackConfig(out=out, shard_size=5, overwrite=True, workers=1, progress=False))
                os._exit(0)
            except BaseException:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 17), code
        m = Manifest.load(out)
        assert m.count in (old.count, 12)
        assert verify_dir(out, workers=1) == [], (k, verify_dir(out, workers=1))
        seen.add(m.count)
        # the next pack (a new one, same folder) finds a consistent folder and leaves no debris
        r = pack(arrays[0], PackConfig(out=out, shard_size=7, overwrite=True, progress=False))
        assert set(os.listdir(out)) == r.manifest.files | {"manifest.json"}, k
        if code == 0:
            break
    else:
        pytest.fail("the pack never completed")
    assert seen == {old.count, 12}  # killed both before and after the commit point
    assert k > 10  # it was killed inside the install window many times over


def test_interrupt_during_install_rolls_back(arrays, tmp_path, monkeypatch):
    out = tmp_path / "o"
    pack(arrays[0], PackConfig(out=out, shard_size=10, progress=False))
    before = listing(out)
    import shards.packing.pack as packmod

    real = packmod.fsync_dir

    def interrupted(d):  # the first fsync comes after the new files moved in, before the commit
        raise KeyboardInterrupt

    monkeypatch.setattr(packmod, "fsync_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack(arrays[1], PackConfig(out=out, shard_size=5, overwrite=True, progress=False))
    monkeypatch.setattr(packmod, "fsync_dir", real)
    assert listing(out) == before


# -- OSErrors become one line and leave nothing behind --------------------------------------------


@pytest.mark.parametrize("code,expect", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_unwritable_out_is_one_line(arrays, tmp_path, monkeypatch, code, expect):
    real = os.mkdir

    def refuse(path, *a, **kw):
        if str(path).startswith(str(tmp_path / "locked")):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", refuse)
    line = one_line_error(*run("pack", arrays[0], "--out", tmp_path / "locked" / "o", "-q"))
    assert expect in line and str(tmp_path / "locked") in line
    assert not (tmp_path / "locked").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_permission_denied_for_real(arrays, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_line_error(*run("pack", arrays[0], "--out", ro / "o", "-q"))
        assert "permission denied" in line and str(ro / "o") in line
    finally:
        ro.chmod(0o755)


def test_parent_of_out_is_a_file(arrays, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = one_line_error(*run("pack", arrays[0], "--out", tmp_path / "afile" / "sub" / "o", "-q"))
    assert "a parent of --out is a file" in line and str(tmp_path / "afile") in line
    line = one_line_error(*run("pack", arrays[0], "--out", tmp_path / "afile", "-q"))
    assert "--out is a file" in line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_packing(arrays, tmp_path, monkeypatch, existing):
    """Shard files written to /dev/full (every write fails with ENOSPC): one line, the old set (if any)
    exactly as it was, no temporary files, no half-made folder."""
    out = tmp_path / "o"
    if existing:
        pack(arrays[0], PackConfig(out=out, progress=False))
    before = listing(out) if existing else None
    import builtins

    import shards.packing.writer as writer

    def full(path, mode="r", *a, **kw):
        return (
            builtins.open("/dev/full", mode, *a, **kw)
            if str(path).endswith(".tmp") and "w" in mode
            else builtins.open(path, mode, *a, **kw)
        )

    monkeypatch.setattr(writer, "open", full, raising=False)
    line = one_line_error(*run("pack", arrays[1], "--out", out, "--overwrite", "--format", "png", "-q"))
    assert "no space left" in line and str(out) in line and "free some space" in line
    if existing:
        assert listing(out) == before
    else:
        assert not out.exists()


def test_disk_full_writing_the_manifest(arrays, tmp_path, monkeypatch):
    out = tmp_path / "o"
    pack(arrays[0], PackConfig(out=out, progress=False))
    before = listing(out)
    import shards.format.manifest as manifest

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manifest, "atomic_write_text", full)
    line = one_line_error(*run("pack", arrays[1], "--out", out, "--overwrite", "-q"))
    assert "no space left" in line
    assert listing(out) == before


@pytest.mark.parametrize("name", ["a/b", "../evil", "..", ".hidden", "x\\y", "tab\there"])
def test_name_must_be_a_plain_stem(arrays, tmp_path, name):
    line = one_line_error(*run("pack", arrays[0], "--out", tmp_path / "o", "--name", name, "-q"))
    assert "plain file-name stem" in line and repr(name) in line
    assert sorted(os.listdir(tmp_path)) == ["new.npy", "old.npy"]


def test_lock_file_is_gone_after_success_and_failure(arrays, tmp_path):
    out = tmp_path / "o"
    pack(arrays[0], PackConfig(out=out, progress=False))
    assert not (out / LOCK_NAME).exists()
    code, _ = run("pack", arrays[0], "--out", out, "-q")  # refused: exists
    assert code == 1 and not (out / LOCK_NAME).exists()


def test_sigterm_during_a_parallel_pack_cleans_up_without_tracebacks(tmp_path):
    """SIGTERM unwinds the CLI like Ctrl-C: exit 128 + 15, nothing left in --out. The pool's forked workers
    must not inherit that handler (the pool stops them with SIGTERM; a worker raising KeyboardInterrupt
    printed tracebacks and could hang the pool's shutdown)."""
    import signal
    import subprocess
    import sys
    import time

    np.save(tmp_path / "a.npy", np.random.default_rng(0).integers(0, 256, (40_000, 16, 16, 3), dtype=np.uint8))
    out = tmp_path / "o"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shards",
            "pack",
            str(tmp_path / "a.npy"),
            "--out",
            str(out),
            "--format",
            "png",
            "--workers",
            "2",
            "--shard-size",
            "1000",
            "-q",
        ],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not list(out.glob(".pack-*/.*.tar.*.tmp")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)  # until the workers are encoding and the first tar is being written
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted (SIGTERM)" in err
    assert not out.exists()
