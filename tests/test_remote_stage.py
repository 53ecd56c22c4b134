"""Staging remote shard sets into the node-local cache (``shards.remote.stage``) from real servers on
127.0.0.1: moto's S3 server and Python's http.server. Every shard is checked against the manifest's sha256
as it lands; a damaged one, a kill, a second stager, a read-only cache and a wrong endpoint or missing
credentials each behave as ``shards/remote/stage.py`` says."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from remoteservers import aws_env, copy_set, http_root, moto_port, s3  # noqa: F401  (fixtures)

from shards.base.errors import ShardError
from shards.format.manifest import MANIFEST_NAME, Manifest
from shards.remote import stage as stagemod
from shards.remote.options import RemoteOptions
from shards.remote.stage import stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def packed(shard_factory, tmp_path):
    """A labelled png set of 40 samples in 3 shards (16, 16, 8)."""
    return shard_factory(tmp_path / "local", "c10", 40, shard_size=16, labels=[i % 10 for i in range(40)])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def staged_files_match(folder: Path) -> None:
    """Every .tar in ``folder`` is one of the manifest's shards with its sha256: no half shard is visible."""
    m = Manifest.load(folder) if (folder / MANIFEST_NAME).exists() else None
    for tar in folder.glob("*.tar"):
        assert m is None or tar.name in {s.file for s in m.shards}
        assert tar.stat().st_size > 0


def test_stage_s3_then_cached(s3, packed, tmp_path):
    url = s3.put_set(packed, "sets/c10")
    stats: dict = {}
    folder = stage(url, RemoteOptions(progress=False), stats=stats)
    m = Manifest.load(folder)
    assert folder.parent.parent == tmp_path / "cache"
    assert m.count == 40 and [sha(folder / s.file) for s in m.shards] == [s.sha256 for s in m.shards]
    assert stats["bytes"] == sum(s.bytes for s in m.shards) and not stats["cached"]
    assert not list(folder.glob(".*.partial"))
    again: dict = {}
    assert stage(url + "/", RemoteOptions(progress=False), stats=again) == folder  # one set, however spelled
    assert again["cached"] and again["bytes"] == 0
    # the staged folder reads as any local set: the reader confirms every shard's sha256
    from shards.read.reader import SourceReader

    assert len(SourceReader(folder, m).keys) == 40


def test_stage_http_server_without_ranges(http_root, packed):
    root, base = http_root
    copy_set(packed, root / "c10")
    folder = stage(f"{base}/c10", RemoteOptions(progress=False))
    m = Manifest.load(folder)
    assert [sha(folder / s.file) for s in m.shards] == [sha(packed / s.file) for s in m.shards]


def test_new_upload_is_a_new_key(s3, packed, shard_factory, tmp_path):
    url = s3.put_set(packed, "sets/c10")
    first = stage(url, RemoteOptions(progress=False))
    other = shard_factory(tmp_path / "other", "c10", 40, shard_size=16, seed=5)
    s3.put_set(other, "sets/c10")
    second = stage(url, RemoteOptions(progress=False))
    assert first != second and Manifest.load(second).shards[0].sha256 == Manifest.load(other).shards[0].sha256


def test_damaged_on_server_error_and_skip(s3, packed, capsys, corrupt_sample, tmp_path):
    url = s3.put_set(packed, "sets/c10")
    damaged = copy_set(packed, tmp_path / "damaged")
    bad, _ = corrupt_sample(damaged, 1, 3)  # one image of shard 1 no longer decodes, nor matches its sha256
    s3.put_file(damaged / bad, "sets/c10")
    with pytest.raises(ShardError) as e:
        stage(url, RemoteOptions(progress=False))
    line = str(e.value)
    assert "\n" not in line and f"{url}/{bad}" in line and "after two downloads" in line and "--on-corrupt skip" in line
    assert "fetching it once more" in capsys.readouterr().err
    folder = stagemod.staged_folder(url, Manifest.load(packed), Path(os.environ["ADAINF_CACHE_DIR"]))
    assert not (folder / bad).exists() and not (folder / MANIFEST_NAME).exists()
    staged_files_match(folder)
    # skip: the damaged shard is staged as it is; the reader finds it differs and skips exactly its damaged samples
    folder = stage(url, RemoteOptions(progress=False, on_corrupt="skip"))
    assert json.loads((folder / "staged.json").read_text())["damaged"] == [bad]
    assert f"{url}/{bad}" in capsys.readouterr().err
    from shards.read.reader import SourceReader

    reader = SourceReader(folder, Manifest.load(folder), on_corrupt="skip")
    assert any(bad in n and "differs" in n for n in reader.notes)
    assert int((reader.verdict != 0).sum()) == 1
    # the server is repaired: the next stage downloads the damaged shard again and the set is whole
    s3.put_set(packed, "sets/c10")
    folder = stage(url, RemoteOptions(progress=False))
    assert sha(folder / bad) == sha(packed / bad)
    assert json.loads((folder / "staged.json").read_text())["damaged"] == []


KILLABLE = textwrap.dedent(
    """
    import sys, time
    from shards.remote import stage as st
    from shards.remote.options import RemoteOptions
    st.CHUNK = 4096
    real = st.filesystem
    def slow(*a, **k):
        fs = real(*a, **k)
        cat = fs.cat_file
        def cat_file(path, start=None, end=None, **kw):
            if start is not None:
                time.sleep(float(sys.argv[2]))
            return cat(path, start=start, end=end, **kw)
        fs.cat_file = cat_file
        return fs
    st.filesystem = slow
    stats = {}
    folder = st.stage(sys.argv[1], RemoteOptions(progress=False), threads=1, stats=stats)
    print("STAGED", folder, stats["bytes"], flush=True)
    """
)


def _stager(url: str, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", KILLABLE, url, str(delay)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_during_staging_then_resume(s3, packed):
    url = s3.put_set(packed, "sets/c10")
    m = Manifest.load(packed)
    folder = stagemod.staged_folder(url, m, Path(os.environ["ADAINF_CACHE_DIR"]))
    proc = _stager(url, 0.05)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until a shard is installed and the next one half downloaded
        parts = list(folder.glob(".*.partial")) if folder.exists() else []
        if list(folder.glob("*.tar")) and parts and parts[0].stat().st_size >= 3 * 4096:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail(f"staging never got half way: {proc.communicate()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    staged_files_match(folder)
    assert not (folder / MANIFEST_NAME).exists()  # not a set yet
    installed = {p.name for p in folder.glob("*.tar")}
    partial = {p.name: p.stat().st_size for p in folder.glob(".*.partial")}
    assert installed and partial
    for name in installed:
        assert sha(folder / name) == sha(packed / name)
    stats: dict = {}
    assert stage(url, RemoteOptions(progress=False), stats=stats) == folder
    total = sum(s.bytes for s in m.shards)
    resumed = sum(partial.values())
    installed_bytes = sum((packed / n).stat().st_size for n in installed)
    assert stats["bytes"] == total - installed_bytes  # counts the resumed part as moved, once
    assert [sha(folder / s.file) for s in m.shards] == [s.sha256 for s in m.shards]
    assert resumed > 0 and not list(folder.glob(".*.partial"))


def test_two_stagers_one_downloads(s3, packed):
    url = s3.put_set(packed, "sets/c10")
    a = _stager(url, 0.02)
    time.sleep(0.5)
    b = _stager(url, 0.02)
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=120), b.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    folders = {out_a.split()[1], out_b.split()[1]}
    moved = sorted(int(o.split()[2]) for o in (out_a, out_b))
    total = sum(s.bytes for s in Manifest.load(packed).shards)
    assert len(folders) == 1 and moved == [0, total]
    waited = [e for e in (err_a, err_b) if "waiting for it" in e]
    assert len(waited) == 1 and "one stager per node" in waited[0]


def test_read_only_cache_is_one_line(s3, packed):
    url = s3.put_set(packed, "sets/c10")
    with pytest.raises(ShardError) as e:
        stage(url, RemoteOptions(cache_dir="/sys/adainf-cache", progress=False))
    line = str(e.value)
    assert "\n" not in line and line.startswith("--cache-dir /sys/adainf-cache: cannot write there")
    assert "--cache-dir" in line


def test_staged_set_in_a_read_only_cache_is_used(s3, packed, tmp_path, monkeypatch):
    url = s3.put_set(packed, "sets/c10")
    folder = stage(url, RemoteOptions(cache_dir=tmp_path / "ro", progress=False))

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(stagemod, "NodeLock", refuse)
    assert stage(url, RemoteOptions(cache_dir=tmp_path / "ro", progress=False)) == folder


def test_not_enough_space_is_one_line(s3, packed, monkeypatch):
    url = s3.put_set(packed, "sets/c10")
    monkeypatch.setattr(stagemod.shutil, "disk_usage", lambda p: os.statvfs_result((0,) * 10) and _Usage())
    with pytest.raises(ShardError) as e:
        stage(url, RemoteOptions(progress=False))
    assert "needs" in str(e.value) and "0.0 MB are free" in str(e.value) and "\n" not in str(e.value)


class _Usage:
    total = used = free = 0


def test_missing_manifest_is_one_line(s3):
    with pytest.raises(ShardError) as e:
        stage(s3.url("nothing/here"), RemoteOptions(progress=False))
    assert f"{s3.url('nothing/here')}: no manifest.json there (404)" in str(e.value)


def test_wrong_endpoint_is_one_line(s3, packed, monkeypatch):
    url = s3.put_set(packed, "sets/c10")
    from remoteservers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ShardError) as e:
        stage(url, RemoteOptions(progress=False))
    line = str(e.value)
    assert "\n" not in line and url in line and "cannot reach the server" in line and "AWS_ENDPOINT_URL" in line


def test_missing_credentials_is_one_line(s3, packed, monkeypatch):
    url = s3.put_set(packed, "sets/c10")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ShardError) as e:
        stage(url, RemoteOptions(progress=False))
    line = str(e.value)
    assert "\n" not in line and url in line and "no credentials" in line and "AWS_ACCESS_KEY_ID" in line
