"""``python -m bench stage --quick`` on tiny sets: the suite runs end to end against its own local server and
writes the common JSON (every row a rate, the staging rows in MB/s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.report import check_doc
from shards.format.manifest import Manifest


@pytest.mark.parametrize("server", ["http", "s3"])
def test_bench_stage_quick(demo_sets, tmp_path, server, monkeypatch):
    pytest.importorskip("aiohttp" if server == "http" else "moto.server")
    if server == "s3":
        from remoteservers import aws_env

        aws_env(monkeypatch, None)  # dummy credentials; the suite sets the endpoint of its own server
    from bench.stage import main

    data = demo_sets(24, 24, 40)
    args = [
        "--real",
        data["real"],
        "--generated",
        data["generated"],
        "--generated-count",
        "60",
        "--quick",
        "--batch-size",
        "16",
    ]
    res = CliRunner().invoke(
        main, args + ["--server", server, "--work", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    )
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "out").glob("*-stage.json")
    doc = json.loads(path.read_text())
    assert check_doc(doc) == [] and doc["quick"] is True and doc["settings"]["server"] == server
    rows = {(r["set"], r["backend"]): r for r in doc["results"]}
    backends = ["stage", "first-batch-cold", "first-batch-staged", "confirm"]
    assert sorted(rows) == sorted((s, b) for s in ("real", "gen60") for b in backends)
    real_mb = sum(s.bytes for s in Manifest.load(Path(data["real"])).shards) / 2**20
    assert rows["real", "stage"]["mb"] == round(real_mb, 1) and rows["gen60", "stage"]["samples"] == 60
    assert all(r["seconds"] > 0 and r["samples_per_s"] > 0 for r in doc["results"])
