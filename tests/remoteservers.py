"""Servers the remote-set tests start on 127.0.0.1 and stop themselves: an S3-compatible one (moto's server
mode, the one s3fs's own tests use) and Python's ``http.server`` over a folder. No other network.

Import the fixtures into a test module with ``from remoteservers import s3, http_root, moto_port, ...``.
"""

from __future__ import annotations

import functools
import http.server
import logging
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_port():
    """A moto S3 server for the session (buckets are per test: ``s3`` gives each test its own)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield port
    server.stop()


def aws_env(monkeypatch, port: int | None) -> None:
    """Dummy credentials and the endpoint, as a user sets them; nothing read from ~/.aws."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
        "AWS_CONFIG_FILE": "/nonexistent/config",
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    if port is not None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")


class Bucket:
    """A bucket of its own on the moto server, with helpers to put shard sets in it."""

    def __init__(self, name: str):
        import fsspec

        self.name = name
        self.fs = fsspec.filesystem("s3", skip_instance_cache=True)
        self.fs.mkdir(name)

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}"

    def put_set(self, folder: Path, prefix: str) -> str:
        """Upload the shard set in ``folder`` under ``prefix`` (manifest last); its URL."""
        names = sorted(p.name for p in folder.iterdir() if p.suffix in (".tar", ".idx"))
        for n in names + ["manifest.json"]:
            self.fs.put_file(str(folder / n), f"{self.name}/{prefix}/{n}")
        return self.url(prefix)

    def put_file(self, local: Path, prefix: str) -> None:
        """Replace one file of a set on the server (e.g. a tar damaged by ``corrupt_sample``)."""
        self.fs.put_file(str(local), f"{self.name}/{prefix}/{local.name}")


@pytest.fixture
def s3(moto_port, monkeypatch, tmp_path):
    """A fresh bucket on the session's moto server; the environment points at it; the staging cache is
    ``tmp_path/cache`` (ADAINF_CACHE_DIR)."""
    aws_env(monkeypatch, moto_port)
    monkeypatch.setenv("ADAINF_CACHE_DIR", str(tmp_path / "cache"))
    return Bucket(f"adainf-{uuid.uuid4().hex[:12]}")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """(folder, base URL): Python's http.server serving ``folder`` on a free port for this test."""
    pytest.importorskip("aiohttp")
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ADAINF_CACHE_DIR", str(tmp_path / "cache"))
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def copy_set(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".*", "*.cache*", "*.npz"))
    return dest
