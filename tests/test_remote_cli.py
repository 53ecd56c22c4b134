"""Remote shard sets on every command line: ``shards pack --out s3://…`` (uploaded, manifest last),
``shards info|verify URL``, ``loaders audit --shards s3://…:10``, a mixture YAML with URLs and storage options,
and a two-step ``train.py`` run from S3; a URL is never a local path, and every failure is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from remoteservers import copy_set, http_root, moto_port, s3  # noqa: F401  (fixtures)
from trainargs import train_args

import train
from loaders.__main__ import main as loaders_main
from shards.cli import main as shards_main
from shards.format.manifest import Manifest

DEMO = (24, 24, 40)


@pytest.fixture(scope="module")
def data(demo_sets):
    return demo_sets(*DEMO)


@pytest.fixture
def remote(s3, data):
    """The demo sets in the test's bucket: {"real", "generated", "test"} → URL."""
    return {k: s3.put_set(Path(v), f"demo/{k}") for k, v in data.items()}


def shards(*args):
    r = CliRunner().invoke(shards_main, [str(a) for a in args])
    return r.exit_code, r.output


def one_line(code, out) -> str:
    assert code == 1 and "Traceback" not in out, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return lines[0]


def test_pack_out_s3_uploads_manifest_last_then_reads(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "imgs.npy", rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    url = s3.url("sets/c10")
    puts = []
    real_put = s3.fs.__class__.put_file

    def put_file(self, lpath, rpath, *a, **k):
        puts.append(Path(rpath).name)
        return real_put(self, lpath, rpath, *a, **k)

    monkeypatch.setattr(s3.fs.__class__, "put_file", put_file)
    code, out = shards("pack", tmp_path / "imgs.npy", "--out", url, "--shard-size", 8, "-q")
    assert code == 0, out
    assert puts[-1] == "manifest.json" and len(puts) == 7  # 3 tars, 3 indexes, then the manifest
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()  # never a local folder
    assert not list((tmp_path / "cache" / "upload").iterdir())  # the packing folder is gone
    code, out = shards("info", url)
    assert code == 0 and "c10" in out and " 20 " in out and url in out, out
    code, out = shards("verify", url)
    assert code == 0 and f"\n{url}: OK (20 samples in 3 shard(s), every image decoded, staged in" in out, out
    assert out.startswith(f"staging {url}: 3 of 3 shard(s)")  # then the plain lines of a log, not a bar
    # a set already there: one line, unless --overwrite (whose old files the new manifest does not list go)
    line = one_line(*shards("pack", tmp_path / "imgs.npy", "--out", url, "-q"))
    assert url in line and "--overwrite" in line
    code, out = shards("pack", tmp_path / "imgs.npy", "--out", url, "--shard-size", 16, "--overwrite", "-q")
    assert code == 0, out
    listed = sorted(Path(p).name for p in s3.fs.ls(f"{s3.name}/sets/c10"))
    assert listed == ["c10-00000.idx", "c10-00000.tar", "c10-00001.idx", "c10-00001.tar", "manifest.json"]


def test_pack_out_refusals_are_one_line(s3, tmp_path):
    np.save(tmp_path / "imgs.npy", np.zeros((4, 8, 8, 3), np.uint8))
    line = one_line(*shards("pack", tmp_path / "imgs.npy", "--out", "http://127.0.0.1:9/sets/c10", "-q"))
    assert "read-only" in line and "s3://" in line
    line = one_line(*shards("pack", tmp_path / "imgs.npy", "--out", "s3://no-such-bucket-here/c10", "-q"))
    assert "no bucket 'no-such-bucket-here'" in line
    line = one_line(*shards("pack", tmp_path / "imgs.npy", "--out", "ftp://host/c10", "-q"))
    assert "ftp:// is not a supported scheme" in line and "s3://, gs://, http://, https://" in line


def test_unknown_scheme_and_missing_extra_are_one_line(monkeypatch):
    line = one_line(*shards("info", "ftp://host/set"))
    assert line.endswith(
        "ftp:// is not a supported scheme; shard sets may be local folders or s3://, gs://, http://, https:// URLs"
    )
    import shards.remote.fs as fsmod

    real = fsmod.importlib.util.find_spec
    monkeypatch.setattr(fsmod.importlib.util, "find_spec", lambda n, *a: None if n == "gcsfs" else real(n, *a))
    line = one_line(*shards("verify", "gs://bucket/set"))
    assert "needs gcsfs" in line and "pip install -e '.[gcs]'" in line
    res = CliRunner().invoke(loaders_main, ["audit", "--shards", "gs://bucket/set:10", "--plan-only"])
    assert one_line(res.exit_code, res.output).endswith("(or `pip install gcsfs`)")


def test_http_set_info_and_verify(http_root, data):
    root, base = http_root
    copy_set(Path(data["test"]), root / "test")
    code, out = shards("info", f"{base}/test")
    assert code == 0 and " 40 " in out, out
    code, out = shards("verify", f"{base}/test", "--no-decode")
    assert code == 0 and "OK (40 samples" in out, out


def test_audit_from_s3_with_weights(remote):
    res = CliRunner().invoke(
        loaders_main,
        ["audit", "--shards", f"{remote['real']}:10", "--shards", f"{remote['generated']}:1", "--batch-size", "8"]
        + ["--json"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    by_name = {s["name"]: s for s in report["recipe"]["mixture"]}
    assert by_name["demo-real"]["weight"] == 10 and by_name["demo-real"]["path"] == remote["real"]
    assert report["epochs"][0]["samples"] == 24 * 10 + 24


def test_yaml_with_urls_and_storage_options(remote, tmp_path, moto_port, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the YAML gives the endpoint
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        f"storage_options: {{endpoint_url: 'http://127.0.0.1:{moto_port}'}}\n"
        f"sources:\n  - {{path: '{remote['real']}', weight: 10}}\n  - {{path: '{remote['generated']}', name: gen}}\n"
    )
    from loaders.recipe.mixture import parse_shards_args

    m = parse_shards_args([str(mix)])
    assert [s.name for s in m.sources] == ["demo-real", "gen"] and m.weights == [10.0, 1.0]
    assert m.sources[0].url == remote["real"] and (m.sources[0].path / "manifest.json").is_file()


def test_url_weights_never_take_ports():
    from loaders.recipe.mixture import split_shards_arg
    from shards.remote.url import parse_storage_options, split_weight

    assert split_shards_arg("s3://b/p/set:10") == ("s3://b/p/set", 10.0, None)
    assert split_shards_arg("http://host:8000/set") == ("http://host:8000/set", None, None)
    assert split_shards_arg("http://host:8000/set:2.5") == ("http://host:8000/set", 2.5, None)
    assert split_weight("https://host:8443") == ("https://host:8443", None)
    assert split_weight("s3://bucket:3") == ("s3://bucket", "3")
    assert parse_storage_options(["anon=true", "config_kwargs.retries.max_attempts=2", "endpoint_url=http://h:9"]) == {
        "anon": True,
        "config_kwargs": {"retries": {"max_attempts": 2}},
        "endpoint_url": "http://h:9",
    }


def test_train_two_steps_from_s3(remote, tmp_path):
    args = train_args(remote, tmp_path / "run", 2)
    assert args[:2] == ["--shards", f"{remote['real']}:1"]
    args[1] = f"{remote['real']}:10"  # URL:WEIGHT
    result = CliRunner().invoke(train.main, args + ["--probe-epochs", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert remote["real"] in config and remote["test"] in config
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("kind", "train") == "train" and "loss" in r][:2] == [1, 2]


def test_wrong_endpoint_on_the_command_line_is_one_line(remote, monkeypatch):
    from remoteservers import free_port

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    port = free_port()
    res = CliRunner().invoke(
        loaders_main,
        ["audit", "--shards", remote["real"], "--storage-option", f"endpoint_url=http://127.0.0.1:{port}"],
    )
    line = one_line(res.exit_code, res.output)
    assert remote["real"] in line and "cannot reach the server" in line and "endpoint_url" in line
    assert Manifest  # the set was never staged: nothing to read


def test_set_damaged_on_the_server_in_audit_and_verify(s3, data, corrupt_sample, tmp_path):
    """One line naming the shard by default; with --on-corrupt skip its damaged sample is skipped and counted;
    ``shards verify`` stages it to say what is wrong."""
    damaged = copy_set(Path(data["real"]), tmp_path / "real")
    file, key = corrupt_sample(damaged, 0, 2)
    url = s3.put_set(Path(data["real"]), "demo/real")
    s3.put_file(damaged / file, "demo/real")
    res = CliRunner().invoke(loaders_main, ["audit", "--shards", url, "--batch-size", "8", "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith(f"Error: {url}/{file}: its sha256 differs")
    res = CliRunner().invoke(
        loaders_main, ["audit", "--shards", url, "--batch-size", "8", "--on-corrupt", "skip", "--json"]
    )
    assert res.exit_code == 0, res.output
    epoch = json.loads(res.output.strip().splitlines()[-1])["epochs"][0]
    assert epoch["corrupt_skipped"] == 1 and epoch["corrupt_keys"] == [f"demo-real/{key}"]
    code, out = shards("verify", url)
    assert code == 1 and f"{file}: sha256 differs from the manifest" in out and key in out


def test_preview_from_an_http_server(http_root, data, tmp_path):
    root, base = http_root
    for part in ("real", "generated"):
        copy_set(Path(data[part]), root / part)
    out = tmp_path / "grid.png"
    args = ["preview", "--shards", f"{base}/real:10", "--shards", f"{base}/generated", "--out", str(out), "--n", "2"]
    res = CliRunner().invoke(loaders_main, args)
    assert res.exit_code == 0, res.output
    assert "real 2, generated 2" in res.output and out.is_file()


def test_byte_progress_lines_are_in_mb():
    import io

    from shards.base.progress import LineProgress

    stream = io.StringIO()
    with LineProgress(10 * 2**20, "stage s3://b/set", "B", stream=stream, quiet_s=0, min_gap_s=0) as bar:
        bar.update(2**20)
    first, last = stream.getvalue().splitlines()
    assert first.startswith("stage s3://b/set: 1.0/10.0 MB (10%), ") and " MB/s, " in first and first.endswith(" left")
    assert last.startswith("stage s3://b/set: 1.0/10.0 MB (10%)")
