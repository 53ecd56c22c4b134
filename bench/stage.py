"""Staging remote shard sets: what a run pays before its first batch when its data sits behind a server.

For each set (by default the CIFAR-10 set ``--real`` and a generated stand-in of ``--generated-count`` images
repeating ``--generated``'s tars, ``bench.scale.make_standin``), served from 127.0.0.1 by Python's http.server
(``--server http``, the set's folder as it is) or by moto's S3 server (``--server s3``, the set uploaded first):

* ``stage``: the set staged into an empty cache (``shards.remote.stage``: ranged downloads, sha256 as each
  shard lands, install by rename): seconds, MB and MB/s;
* ``first-batch-cold``: from nothing staged to the first training batch (staging, then the first open of the
  staged set, whose images are all checked once, then the first batch of the AdaInf SimCLR recipe);
* ``first-batch-staged``: the same with the set staged and its caches built (a later run on the node): the
  manifest read remotely, the staged copy confirmed, the first batch;
* ``confirm``: the per-open confirmation alone (every staged shard hashed against the manifest, every core).

Each figure is the time of one run (``--repeat`` takes the best of several for the last two); ``samples_per_s``
is the set's samples over that time. Not in ``all`` (it needs the sets and a free disk of their size).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import click

from bench import harness as h
from shards.base import host
from shards.base.errors import UserError
from shards.format.manifest import Manifest

RECIPE = "symmetric_adainf"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(root: Path):
    """Python's http.server over ``root`` on a free port of 127.0.0.1: its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def s3_server(root: Path):
    """moto's S3 server on a free port with dummy credentials; every set under ``root`` uploaded into bucket
    ``adainf-bench`` (manifest last). Its base URL ``s3://adainf-bench``."""
    import os

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UserError("--server s3 needs moto[server] and s3fs: pip install -e '.[dev]'") from None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench"
    )
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("adainf-bench")
        for folder in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()):
            m = Manifest.load(folder)
            for f in sorted(m.files):
                fs.put_file(str(folder / f), f"adainf-bench/{folder.name}/{f}")
            fs.put_file(str(folder / "manifest.json"), f"adainf-bench/{folder.name}/manifest.json")
        yield "s3://adainf-bench"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def first_batch(url: str, cache: Path, batch_size: int) -> float:
    """Seconds from nothing in this process to the first training batch of the set at ``url``."""
    from loaders.batch.loader import TrainLoader
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args
    from shards.remote.options import RemoteOptions

    t0 = time.perf_counter()
    mixture = parse_shards_args([url], RemoteOptions(cache_dir=cache, progress=False))
    loader = TrainLoader(mixture, preset(RECIPE), batch_size, device="cpu", num_threads=host.LOADER_THREADS)
    it = loader.batches()
    next(it)
    seconds = time.perf_counter() - t0
    it.close()
    return seconds


def measure(name: str, url: str, work: Path, batch_size: int, repeat: int, downloads: int) -> list[dict]:
    from shards.read.confirm import Confirmation
    from shards.remote.fs import read_manifest
    from shards.remote.options import RemoteOptions
    from shards.remote.stage import stage

    rows = []
    cache = work / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    read_manifest(url)  # the client's imports and first connection, outside the figures
    stats: dict = {}
    folder = stage(url, RemoteOptions(cache_dir=cache, progress=False), threads=downloads, stats=stats)
    m = Manifest.load(folder)
    base = {"set": name, "url": url, "samples": m.count, "shards": len(m.shards)}
    mb = stats["bytes"] / 2**20

    def row(backend: str, seconds: float) -> dict:
        return {**base, "backend": backend, "seconds": round(seconds, 3), "samples_per_s": round(m.count / seconds, 1)}

    rows.append({**row("stage", stats["seconds"]), "mb": round(mb, 1), "mb_per_s": round(mb / stats["seconds"], 1)})
    shutil.rmtree(cache)
    rows.append(row("first-batch-cold", first_batch(url, cache, batch_size)))
    rows.append(row("first-batch-staged", min(first_batch(url, cache, batch_size) for _ in range(repeat))))
    folder = stage(url, RemoteOptions(cache_dir=cache, progress=False))
    best = min(_timed(lambda: Confirmation(folder, m).result()) for _ in range(repeat))
    rows.append({**row("confirm", best), "threads": host.cores()})
    shutil.rmtree(cache)
    return rows


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _sets(real, generated, count: int, work: Path, quick: bool) -> dict[str, Path]:
    """The folders to serve: the real set as it is (a symbolic link) and the generated stand-in."""
    from bench.scale import make_standin

    if not real or not generated:
        demo = Path(h.resolve_shards(None)[0].rsplit(":", 1)[0]).parent
        real, generated = real or demo / "real", generated or demo / "generated"
    served = work / "served"
    served.mkdir(parents=True)
    (served / "real").symlink_to(Path(real).resolve())
    name = f"gen{count // 1000}k" if count >= 1000 else f"gen{count}"
    make_standin([Path(generated)], count, served / name, name)
    return {"real": served / "real", name: served / name}


@h.command("stage")
@click.option("--real", type=click.Path(exists=True, file_okay=False), help="the CIFAR-10 set [the demo real set]")
@click.option(
    "--generated", type=click.Path(exists=True, file_okay=False), help="generated set whose tars the stand-in repeats"
)
@click.option(
    "--generated-count",
    type=click.IntRange(min=1),
    default=None,
    help="images of the generated stand-in [1000000; --quick: 2000]",
)
@click.option("--server", type=click.Choice(["http", "s3"]), default="http", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=512, show_default=True)
@click.option("--downloads", type=click.IntRange(min=1), default=8, show_default=True, help="shards downloaded at once")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="runs of the warm figures")
@click.option("--work", type=click.Path(file_okay=False), help="working folder for caches [a temporary one]")
@click.option("--quick", is_flag=True, help="a 2000-image stand-in, batch 64, one run each (the JSON says quick)")
def main(real, generated, generated_count, server, batch_size, downloads, repeat, work, quick, out_dir):
    """Staging remote sets from a local server: MB/s, time to the first batch cold and staged, confirmation."""
    count = generated_count or (2000 if quick else 1_000_000)
    if quick:
        batch_size, repeat = min(batch_size, 64), 1
    if work is not None:
        Path(work).mkdir(parents=True, exist_ok=True)  # a folder the user names is made, not a traceback
    with tempfile.TemporaryDirectory(prefix="bench-stage-", dir=work) as tmp:
        tmp = Path(tmp)
        sets = _sets(real, generated, count, tmp, quick)
        need = sum(sum(s.bytes for s in Manifest.load(d).shards) for d in sets.values())
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise UserError(f"the sets need {need / 2**30:.1f} GiB in {tmp}, {free / 2**30:.1f} GiB are free; --work")
        served = next(iter(sets.values())).parent
        rows = []
        with (http_server if server == "http" else s3_server)(served) as base:
            for name in sets:
                click.echo(f"  {name} ({server}) ...", err=True)
                rows += measure(name, f"{base}/{name}", tmp, batch_size, repeat, downloads)
    settings = {
        "real": str(real or "demo"),
        "generated": str(generated or "demo"),
        "generated_count": count,
        "server": server,
        "batch_size": batch_size,
        "downloads": downloads,
        "repeat": repeat,
        "recipe": RECIPE,
        "quick": quick,
    }
    h.finish("stage", settings, rows, "set backend samples shards seconds mb mb_per_s samples_per_s", out_dir)
