"""Forging damaged shard sets for the tests of what a user sees (issue 27): tiny sets packed by ``shards pack``, one
member replaced with the rest kept consistent, and the commands a user runs on them (``shards verify``,
``loaders audit`` in both ``--on-corrupt`` modes, ``train.py``), each returning its exit status and output.

Tars are read and written with ``bench.fuzz.read_members`` / ``write_tar`` (``tarfile`` and the writer's USTAR
headers, not the code under test).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from bench.fuzz import read_members, write_tar
from shards.format.manifest import MANIFEST_NAME
from shards.read.index import format_index


def blocks(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` (size, size, 3) uint8 images of 4×4 flat blocks (they survive JPEG)."""
    b = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(b, np.ones((1, size // 4, size // 4, 1), np.uint8)))


def tiny_set(out: Path, fmt: str = "png", n: int = 12, shard: int = 6, name: str | None = None, **config) -> Path:
    """A set of ``n`` 16×16 images in ``fmt`` packed by ``shards pack`` (labels i % 10 of ten classes)."""
    from shards.packing.pack import PackConfig, pack
    from shards.packing.sources import ArraySource

    src = ArraySource("test arrays", np.arange(n) % 10, tuple(f"c{k}" for k in range(10)), images=blocks(n))
    cfg = PackConfig(out=out, name=name or out.name, format=fmt, shard_size=shard, progress=False, **config)
    pack(src, cfg)
    return out


def manifest(d: Path) -> dict:
    return json.loads((d / MANIFEST_NAME).read_text())


def write_manifest(d: Path, doc: dict, raw: dict[str, str] | None = None) -> None:
    """Write ``doc`` as the manifest; ``raw`` replaces quoted placeholders by JSON text (numbers json.dumps cannot
    write, such as 5,000 digits)."""
    text = json.dumps(doc, indent=2)
    for placeholder, value in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), value)
    (d / MANIFEST_NAME).write_text(text)


def refresh(d: Path, reindex: bool = True) -> None:
    """Every shard's sha256 and bytes in the manifest made to agree with its tar, and (``reindex``) its index made
    again from the tar with ``tarfile`` (as ``wds2idx`` would); counts and label counts are left as they are."""
    doc = manifest(d)
    for s in doc["shards"]:
        tar = d / s["file"]
        if reindex:
            groups: dict[str, list] = {}
            with tarfile.open(tar) as tf:
                for i in tf:
                    key, ext = i.name.rsplit(".", 1)
                    groups.setdefault(key, []).append((ext, i.offset_data, i.size, i.name))
            (d / s["index"]).write_text(format_index(list(groups.values())))
        data = tar.read_bytes()
        s.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    write_manifest(d, doc)


def replace_member(d: Path, member: str, data: bytes, record: bool = True) -> Path:
    """Replace ``member`` (``KEY.EXT``) in whichever tar holds it, then make index and manifest agree; for an image
    member (``record``) its ``KEY.json`` records the new bytes' sha256 too, so only the image itself is wrong.
    Returns the tar."""
    for s in manifest(d)["shards"]:
        tar = d / s["file"]
        members = read_members(tar)
        names = [n for n, _ in members]
        if member not in names:
            continue
        members[names.index(member)] = (member, data)
        key, ext = member.rsplit(".", 1)
        if record and ext not in ("cls", "json"):
            at = names.index(f"{key}.json")
            meta = json.loads(members[at][1])
            meta["sha256"] = hashlib.sha256(data).hexdigest()
            members[at] = (members[at][0], json.dumps(meta).encode())
        write_tar(tar, members)
        refresh(d)
        return tar
    raise AssertionError(f"no member {member} in {d}")


def verify(d: Path, *args) -> tuple[int, list[str]]:
    """``python -m shards verify D``: (exit status, output lines)."""
    from shards.cli import main

    r = CliRunner().invoke(main, ["verify", str(d), *map(str, args)])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output.splitlines()


def audit(d: Path, mode: str) -> tuple[int, str]:
    """``python -m loaders audit --shards D --on-corrupt MODE --json``: (exit status, output)."""
    from loaders.__main__ import main

    args = ["audit", "--shards", str(d), "--batch-size", "4", "--threads", "1", "--json", "--inflation", "vanilla"]
    r = CliRunner().invoke(main, [*args, "--on-corrupt", mode])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output


def train(d: Path, out: Path, *args) -> tuple[int, str]:
    """A 2-step ``train.py`` on CPU with the tiny convnet: (exit status, output)."""
    import train as train_py

    argv = ["--shards", str(d), "--backbone", "convnet", "--steps", "2", "--batch-size", "4", "--device", "cpu"]
    r = CliRunner().invoke(train_py.main, [*argv, "--num-threads", "1", "--out", str(out), *map(str, args)])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output


def error_lines(output: str) -> list[str]:
    """The ``Error: …`` lines of a command's output."""
    return [line for line in output.splitlines() if line.startswith("Error:")]


def audit_report(output: str) -> dict:
    """The JSON report ``loaders audit --json`` prints last."""
    return json.loads(output.strip().splitlines()[-1])
