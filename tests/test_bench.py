"""Smoke tests of the benchmark commands: each runs on tiny CPU data and writes JSON in the common shape.

No timing is asserted; the checks are on shapes, exact counts and the report's files.
"""
from __future__ import annotations

import io
import json
import mmap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench import report
from bench.common import write_results
from shards.index import read_index
from shards.manifest import Manifest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from shards.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, n_real=64, n_generated=64, n_test=16, shard_size=40)
    return out


def _docs(out_dir: Path) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    for doc in docs:
        assert report.check_doc(doc) == []
    return docs


def _invoke(command, args):
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def test_report_draws_charts_and_table(tmp_path):
    write_results("loader", {"batch_size": 8}, [
        {"backend": "dali-cpu", "samples_per_s": 7900.0, "peak_rss_mb": 700.0},
        {"backend": "reference", "samples_per_s": 1800.0, "peak_rss_mb": 900.0}], tmp_path)
    write_results("end-to-end", {}, [
        {"backend": "model-ceiling", "samples_per_s": 1000.0, "batch_size": 512},
        {"backend": "end-to-end", "samples_per_s": 980.0, "batch_size": 512, "data_wait_fraction": 0.02,
         "ratio_to_ceiling": 0.98}], tmp_path)
    write_results("scale", {}, [
        {"backend": "dali-cpu", "axis": axis, "planned_samples": n, "sources": k, "samples_per_s": 5000.0 - k,
         "plan_s": n / 1e7, "plan_mb": n / 1e5, "peak_rss_mb": 600.0 + k}
        for axis, n, k in [("epoch_size", 50_000, 2), ("epoch_size", 1_500_000, 2), ("sources", 500_000, 1),
                           ("sources", 500_000, 8)]], tmp_path)
    (tmp_path / "zz-broken.json").write_text('{"bench": "x"}')
    out = tmp_path / "charts"
    result = CliRunner().invoke(report.main, ["--results-dir", str(tmp_path), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and "zz-broken.json" in result.output
    for name in ("throughput.png", "data-wait.png", "scale.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    readme = (out / "README.md").read_text()
    assert "| loader | dali-cpu | 7,900 |" in readme
    assert "| end-to-end | end-to-end 512 | 980 |" in readme and "0.020" in readme and "0.980" in readme
    assert readme.count("| scale |") == 4


def test_report_keeps_newest_run_per_bench(tmp_path):
    for stamp, value in (("20250101-000000", 1.0), ("20250102-000000", 2.0)):
        doc = {"bench": "loader", "hardware": {"cpu": "c", "cores": 2, "gpu": None, "torch": "t"}, "settings": {},
               "results": [{"backend": "dali-cpu", "samples_per_s": value}]}
        (tmp_path / f"cpu2-{stamp}-loader.json").write_text(json.dumps(doc))
    runs = report.load_runs(tmp_path)
    assert [r.results[0]["samples_per_s"] for r in runs] == [2.0]
    assert len(report.load_runs(tmp_path, all_runs=True)) == 2


def test_report_without_results_is_one_line_error(tmp_path):
    result = CliRunner().invoke(report.main, ["--results-dir", str(tmp_path)])
    assert result.exit_code != 0 and "no benchmark JSON files" in result.output


def test_check_doc_names_problems():
    assert report.check_doc([]) == ["top level is not an object"]
    bad = {"bench": "x", "hardware": {"cpu": 1, "cores": 2, "gpu": None, "torch": "t"}, "settings": {},
           "results": [{"backend": "dali-cpu"}]}
    assert report.check_doc(bad) == ["results[0] has no 'samples_per_s'"]


# ---------------------------------------------------------------------------------------------------
# scale
# ---------------------------------------------------------------------------------------------------
def test_standin_repeats_shards_exactly(demo, tmp_path):
    from bench.scale import make_standin

    base = demo / "generated"
    manifest = make_standin([base], 150, tmp_path / "s", "standin")
    assert manifest.count == 150 and Manifest.load(tmp_path / "s").count == 150
    assert [s.count for s in manifest.shards] == [40, 24, 40, 24, 22]
    original = Manifest.load(base)
    # the 5th stand-in shard is the first generated shard cut to 22 samples: same keys, same bytes
    idx = read_index(tmp_path / "s" / manifest.shards[4].index)
    ref = read_index(base / original.shards[0].index)
    assert list(idx.keys) == list(ref.keys[:22])
    with open(tmp_path / "s" / manifest.shards[4].file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        off, size = int(idx.offsets["png"][21]), int(idx.sizes["png"][21])
        assert m[off:off + size][:8] == PNG_MAGIC


def test_scale_plan_only_exact_sizes(demo, tmp_path):
    from bench.scale import main

    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--sizes", "50,300,1000",
            "--sources", "1,3", "--sources-size", "500", "--plan-only", "--out-dir", str(tmp_path)]
    _invoke(main, args)
    (doc,) = _docs(tmp_path)
    rows = doc["results"]
    assert [(r["axis"], r["planned_samples"], r["sources"]) for r in rows] == [
        ("epoch_size", 50, 1), ("epoch_size", 300, 2), ("epoch_size", 1000, 2), ("sources", 500, 1), ("sources", 500, 3)]
    # 1000 = 64 real x 10 + a 360-sample generated stand-in; 300 = 64 x 4 + 44; 50 = a 50-subset of the real set
    assert rows[2]["weights"] == [10.0, 1.0] and rows[2]["source_counts"] == [64, 360]
    assert rows[1]["weights"] == [4.0, 1.0] and rows[1]["source_counts"] == [64, 44]
    assert [r["plan_len"] for r in rows] == [50, 300, 1000, 500, 500]
    assert rows[4]["source_counts"] == [167, 167, 166]
    assert all(r["samples_per_s"] is None and r["plan_mb"] > 0 for r in rows)


def test_scale_loader_quick(demo, tmp_path):
    from bench.scale import main

    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--sizes", "700",
            "--sources", "2", "--sources-size", "64", "--batch-size", "16", "--batches", "2", "--warmup", "1",
            "--quick", "--no-isolate", "--out-dir", str(tmp_path)]
    _invoke(main, args)
    (doc,) = _docs(tmp_path)
    assert doc["bench"] == "scale" and doc["settings"]["batches"] == 2
    for row in doc["results"]:
        assert row["backend"] == "dali-cpu" and row["samples_per_s"] > 0
        assert row["timed_batches"] == 2 and row["timed_samples"] == 32
        assert row["steps_per_epoch"] == row["planned_samples"] // 16
        assert row["rss_tree_peak_mb"] > 0


# ---------------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------------
def test_formats_hold_the_same_images(demo, tmp_path):
    from bench.formats import FormatsConfig, convert, encode, iter_samples

    manifests = convert(demo / "real", tmp_path, FormatsConfig(limit=10))
    assert {f: m.count for f, m in manifests.items()} == {"jpg": 10, "png": 10, "raw": 10}
    original = list(iter_samples(demo / "real", 10))
    raw = list(iter_samples(tmp_path / "raw"))
    png = list(iter_samples(tmp_path / "png"))
    jpg = list(iter_samples(tmp_path / "jpg"))
    assert [s[0] for s in raw] == [s[0] for s in original] and [s[2] for s in jpg] == [s[2] for s in original]
    for (_, o, _, _), (_, r, _, _), (_, p, _, _), (_, j, _, _) in zip(original, raw, png, jpg):
        pixels = np.asarray(Image.open(io.BytesIO(o)).convert("RGB"))
        assert np.array_equal(np.frombuffer(r, np.uint8).reshape(pixels.shape), pixels)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(p)).convert("RGB")), pixels)
        assert j == encode(pixels, "jpg", 95)  # one lossy pass from the decoded pixels (the source is PNG)


def test_formats_cli(demo, tmp_path):
    from bench.formats import main

    args = ["--shards", str(demo / "real"), "--limit", "32", "--batch-size", "8", "--batches", "1", "--warmup", "1",
            "--out-dir", str(tmp_path)]
    _invoke(main, args)
    (doc,) = _docs(tmp_path)
    assert [r["format"] for r in doc["results"]] == ["jpg", "png", "raw"]
    assert all(r["images"] == 32 and r["timed_samples"] == 8 for r in doc["results"])


# ---------------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------------
def test_end_to_end_cli(demo, tmp_path):
    from bench.end_to_end import main

    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--batch-size", "4",
            "--steps", "1", "--warmup", "0", "--device", "cpu", "--out-dir", str(tmp_path)]
    _invoke(main, args)
    (doc,) = _docs(tmp_path)
    ceiling, e2e = doc["results"]
    assert ceiling["backend"] == "model-ceiling" and e2e["backend"] == "end-to-end"
    assert ceiling["batch_size"] == e2e["batch_size"] == 4 and e2e["precision"] == "fp32"
    assert e2e["timed_steps"] == 1 and 0 <= e2e["data_wait_fraction"] <= 1
    assert e2e["ratio_to_ceiling"] == pytest.approx(e2e["samples_per_s"] / ceiling["samples_per_s"], rel=1e-3)
    assert doc["settings"]["resolved"]["weights"] == [10.0, 1.0]


# ---------------------------------------------------------------------------------------------------
# python -m bench
# ---------------------------------------------------------------------------------------------------
def test_bench_cli_lists_and_forwards():
    from bench.__main__ import _forward, cli
    from bench.scale import main as scale_main

    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0
    for name in ("end-to-end", "scale", "formats", "report"):
        assert name in result.output
    args = _forward(scale_main, {"quick": True, "shards": ("a:10", "b"), "out_dir": "/o", "device": "cpu"})
    assert args == ["--quick", "--shards", "a:10", "--shards", "b", "--out-dir", "/o", "--device", "cpu"]
    result = CliRunner().invoke(cli, ["all", "--only", "nope"])
    assert result.exit_code != 0 and "choose from" in result.output
