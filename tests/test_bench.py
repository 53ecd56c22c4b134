"""Smoke tests of the benchmark commands: each runs on tiny CPU data and writes JSON in the common shape.

No timing is asserted; the checks are on shapes, exact counts and the report's files.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench import report
from bench.harness import write_results
from shards.format.manifest import Manifest
from shards.read.index import read_index

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from shards.packing.demo import make_demo

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
TIMING = {"warmup_batches": 10, "timed_batches": 60, "seconds": 10.5, "meets_minimum": True}


def test_report_draws_charts_and_table(tmp_path):
    write_results(
        "loader",
        {"batch_size": 8},
        [
            {"backend": "dali-cpu", "samples_per_s": 7900.0, "peak_pss_mb": 700.0, **TIMING},
            {"backend": "reference", "samples_per_s": 1800.0, "peak_pss_mb": 900.0, **TIMING},
        ],
        tmp_path,
    )
    write_results(
        "end-to-end",
        {},
        [
            {"backend": "model-ceiling", "samples_per_s": 1000.0, "batch_size": 512, "peak_pss_mb": 800.0, **TIMING},
            {
                "backend": "end-to-end",
                "samples_per_s": 980.0,
                "batch_size": 512,
                "data_wait_fraction": 0.02,
                "ratio_to_ceiling": 0.98,
                "peak_pss_mb": 900.0,
                **TIMING,
            },
        ],
        tmp_path,
    )
    write_results(
        "scale",
        {},
        [
            {
                "backend": "dali-cpu",
                "axis": axis,
                "planned_samples": n,
                "sources": k,
                "samples_per_s": 5000.0 - k,
                "plan_s": n / 1e7,
                "plan_mb": n / 1e5,
                "peak_pss_mb": 600.0 + k,
                **TIMING,
            }
            for axis, n, k in [
                ("epoch_size", 50_000, 2),
                ("epoch_size", 1_500_000, 2),
                ("sources", 500_000, 1),
                ("sources", 500_000, 8),
            ]
        ],
        tmp_path,
    )
    write_results(
        "scale-full",
        {},
        [
            {
                "backend": "dali-cpu",
                "axis": "epoch_size",
                "planned_samples": 1_500_000,
                "samples_per_s": 6000.0,
                "epoch_s": 250.0,
                "peak_pss_mb": 900.0,
                **TIMING,
            }
        ],
        tmp_path,
    )
    (tmp_path / "zz-broken.json").write_text('{"bench": "x"}')
    out = tmp_path / "charts"
    result = CliRunner().invoke(report.main, ["--results-dir", str(tmp_path), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and "zz-broken.json" in result.output
    for name in ("throughput.png", "data-wait.png", "scale.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    readme = (out / "README.md").read_text()
    assert "| loader | dali-cpu | 7,900 | 700 | 60 in 10.5 s |" in readme
    assert "| end-to-end | end-to-end 512 | 980 |" in readme and "0.020" in readme and "0.980" in readme
    assert readme.count("| scale |") == 4 and readme.count("| scale-full |") == 1


def test_report_keeps_newest_full_run_per_bench(tmp_path):
    for stamp, value, quick in (
        ("20250101-000000", 1.0, False),
        ("20250102-000000", 2.0, False),
        ("20250103-000000", 3.0, True),
    ):
        doc = {
            "bench": "loader",
            "quick": quick,
            "hardware": {"cpu": "c", "cores": 2, "gpu": None, "torch": "t"},
            "settings": {},
            "results": [{"backend": "dali-cpu", "samples_per_s": value, "peak_pss_mb": 1.0, **TIMING}],
        }
        (tmp_path / f"cpu2-{stamp}-loader.json").write_text(json.dumps(doc))
    runs = report.load_runs(tmp_path)
    assert [r.results[0]["samples_per_s"] for r in runs] == [2.0]  # a newer quick run does not replace it
    assert len(report.load_runs(tmp_path, all_runs=True)) == 3
    (tmp_path / "cpu2-20250102-000000-loader.json").unlink()
    (tmp_path / "cpu2-20250101-000000-loader.json").unlink()
    (only_quick,) = report.load_runs(tmp_path)
    assert only_quick.quick and "(quick)" in report.markdown([only_quick])


def test_report_without_results_is_one_line_error(tmp_path):
    result = CliRunner().invoke(report.main, ["--results-dir", str(tmp_path)])
    assert result.exit_code != 0 and "no benchmark JSON files" in result.output


def test_check_doc_names_problems():
    assert report.check_doc([]) == ["top level is not an object"]
    hw = {"cpu": 1, "cores": 2, "gpu": None, "torch": "t"}
    bad = {"bench": "x", "hardware": hw, "settings": {}, "results": [{"backend": "dali-cpu"}]}
    assert report.check_doc(bad) == ["results[0] has no 'samples_per_s'"]
    # a timed benchmark: counts, peak PSS and the quick flag are required; the old summed-RSS field is refused
    old = {
        "bench": "loader",
        "hardware": hw,
        "settings": {},
        "results": [{"backend": "dali-cpu", "samples_per_s": 7037.0, "peak_rss_mb": 1069.9}],
    }
    assert report.check_doc(old) == [
        "results[0] has the old memory field 'peak_rss_mb' (summed RSS); re-run for peak_pss_mb",
        "no 'quick' flag (true/false) at the top level",
    ]
    uncounted = {
        "bench": "formats",
        "quick": False,
        "hardware": hw,
        "settings": {},
        "results": [{"backend": "dali-cpu", "samples_per_s": 7.0, "peak_pss_mb": 1.0, "seconds": 1.0}],
    }
    assert report.check_doc(uncounted) == ["results[0] has no 'warmup_batches'", "results[0] has no 'timed_batches'"]
    good = {**uncounted, "results": [{"backend": "dali-cpu", "samples_per_s": 7.0, "peak_pss_mb": 1.0, **TIMING}]}
    assert report.check_doc(good) == []


def test_report_reads_every_committed_result_and_names_the_loader_device(tmp_path):
    """The committed JSON (old files included) all load; the two H200 end-to-end rows (GPU and CPU pipelines) get
    different labels on data-wait.png."""
    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    files = sorted(results.glob("*.json"))
    assert len(report.load_runs(results, all_runs=True)) == len(files)
    (run,) = [r for r in report.load_runs(results) if r.bench == "end-to-end" and r.host == "h200"]
    labels = [report._loader_of(row) for row in run.results if row["backend"] == "end-to-end"]
    assert labels == ["loader on the GPU, 2 threads", "loader on the CPU, 2 threads"]
    table, written = report.build_report(results, tmp_path)
    assert {p.name for p in written} >= {"throughput.png", "data-wait.png", "scale.png", "README.md"}


# ---------------------------------------------------------------------------------------------------
# the harness: timing, PSS, fresh processes, options, one-line errors
# ---------------------------------------------------------------------------------------------------
def test_timed_counts_warmup_and_timed_batches_apart():
    import time

    from bench.harness import Timing, timed

    calls, syncs = [], []
    row = timed(
        lambda: calls.append(time.sleep(0.002)) or 4, Timing(3, 7, 0.0), sync=lambda: syncs.append(1), memory=False
    )
    assert len(calls) == 10 and len(syncs) == 2
    assert (row["warmup_batches"], row["timed_batches"], row["timed_samples"]) == (3, 7, 28)
    assert row["stopped"] == "minimum" and row["meets_minimum"] is False
    assert row["seconds"] >= 0.014 and row["samples_per_s"] == pytest.approx(28 / row["seconds"], rel=0.01)


def test_timed_runs_until_both_minimums_and_stops_at_the_data_or_the_cap():
    import time

    from bench.harness import Timing, timed
    from shards.base.errors import ConfigError

    row = timed(lambda: time.sleep(0.01) or 1, Timing(0, 2, 0.15), memory=False)
    assert row["seconds"] >= 0.15 and row["timed_batches"] >= 10  # the seconds decided, not the 2 batches
    it = iter(range(6))
    row = timed(lambda: next(it) * 0 + 2, Timing(2, 50, 0.0), memory=False)
    assert (row["timed_batches"], row["timed_samples"], row["stopped"]) == (4, 8, "exhausted")
    row = timed(lambda: 1, Timing(0, 50, 0.0, max_batches=3), memory=False)
    assert (row["timed_batches"], row["stopped"]) == (3, "max_batches")
    it = iter(range(2))
    with pytest.raises(ConfigError, match="ran out after 2 of 5 warm-up batches"):
        timed(lambda: next(it), Timing(5), memory=False)


def test_timing_options_give_the_rule_quick_or_lowered_minimums_marked():
    import click

    from bench.harness import Timing, timing_options

    @click.command()
    @timing_options(warmup=20, noun="steps", floor=4)
    def probe(timing):
        click.echo(repr(timing.settings()))

    def settings(*args):
        return eval(_invoke(probe, list(args)).output)

    assert settings() == {"warmup": 20, "min_batches": 50, "min_seconds": 10.0, "max_batches": None, "quick": False}
    assert settings("--quick") == {
        "warmup": 4,
        "min_batches": 5,
        "min_seconds": 1.0,
        "max_batches": None,
        "quick": True,
    }
    assert settings("--min-steps", "3", "--min-seconds", "0", "--warmup", "1")["quick"] is True  # lowered by hand
    assert settings("--min-steps", "3", "--max-steps", "9")["quick"] is False  # >= 10 s still holds
    assert Timing(min_seconds=1.0).quick is False and Timing(min_batches=1, min_seconds=1.0).quick is True


def _hold(seconds, ready):
    import time

    ready.set()
    time.sleep(seconds)


def test_pss_counts_pages_shared_with_a_forked_child_once():
    """Summing RSS over the process tree counts a page shared with a forked worker twice; PSS splits it."""
    import multiprocessing as mp

    from bench.harness import tree_memory

    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched, private to this process
    alone = tree_memory()
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_hold, args=(5, ready))
    child.start()
    try:
        ready.wait(10)
        both = tree_memory()
    finally:
        child.kill()
        child.join()
    assert both["processes"] == alone["processes"] + 1
    assert both["rss_sum"] - alone["rss_sum"] > 60 and both["pss"] - alone["pss"] < 30
    assert block.sum() == block.size


def _start_method():
    import multiprocessing as mp

    return mp.get_start_method()  # the method a Pool or DataLoader here would use


def _fail(kind):
    import os

    from shards.base.errors import ShardError

    if kind == "user":
        raise ShardError("/data/x: no manifest.json here; pack it first")
    if kind == "die":
        os._exit(3)
    raise RuntimeError("no such thing")


def test_in_fresh_process_keeps_the_start_method_and_tells_user_errors_from_failures():
    import multiprocessing as mp

    from bench.harness import MeasurementError, in_fresh_process
    from shards.base.errors import ShardError

    # a spawned child defaults to "spawn"; DataLoader workers there would each unpickle a copy of the data
    assert in_fresh_process(_start_method) == mp.get_start_method() != "spawn"
    with pytest.raises(ShardError, match="^/data/x: no manifest.json here"):  # the user's to fix: the same error
        in_fresh_process(_fail, "user")
    with pytest.raises(MeasurementError, match="_fail: RuntimeError: no such thing"):  # not a ShardError
        in_fresh_process(_fail, "bug")
    with pytest.raises(MeasurementError, match="died \\(exit code 3\\)"):
        in_fresh_process(_fail, "die")


@pytest.mark.parametrize(
    "name, args, line",
    [
        ("loader", ["--device", "cuda", "--plan-only"], "--device cuda: no GPU is visible here"),
        ("formats", ["--shards", "/nonexistent/set"], "/nonexistent/set"),
        ("model", ["--methods", "nope", "--device", "cpu"], "--methods/--backbone"),
        ("confirm", ["--shards", "/nonexistent/set"], "/nonexistent/set"),
    ],
)
def test_bench_commands_print_a_user_error_as_one_line(name, args, line):
    import torch

    from bench.__main__ import load_command

    if name == "loader" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = CliRunner().invoke(load_command(name), args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (text,) = result.output.strip().splitlines()
    assert text.startswith("Error: ") and line in text


def test_bench_cli_lists_and_forwards():
    from bench.__main__ import _forward, cli
    from bench.scale import main as scale_main

    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0 and "not available" not in result.output
    for name in ("loader", "end-to-end", "scale", "formats", "feed", "report", "inflation", "confirm"):
        assert name in result.output
    args = _forward(scale_main, {"quick": True, "shards": ("a:10", "b"), "out_dir": "/o", "device": "cpu"})
    assert args == ["--quick", "--shards", "a:10", "--shards", "b", "--out-dir", "/o", "--device", "cpu"]
    result = CliRunner().invoke(cli, ["all", "--only", "nope"])
    assert result.exit_code != 0 and "comma-separated list of loader" in result.output
    assert CliRunner().invoke(cli, ["loader", "-h"]).exit_code == 0


# ---------------------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------------------
def test_webdataset_baseline_batches_stacked_views_of_the_weighted_mixture(demo):
    """Batched in the workers, each view one (B, 3, H, W) tensor, the shard list weighted like the plan."""
    from bench.loader import webdataset_loader, webdataset_urls
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    mixture = parse_shards_args([f"{demo / 'real'}:10", f"{demo / 'generated'}:1"])
    urls = webdataset_urls(mixture)
    assert len(urls) == 10 * len(mixture.sources[0].manifest.shards) + len(mixture.sources[1].manifest.shards)
    v1, v2, labels = next(iter(webdataset_loader(mixture, preset("simclr"), 8, 0, "cpu", rebatch=16)))
    assert v1.shape == v2.shape == (8, 3, 32, 32) and len(labels) == 8
    assert set(np.asarray(labels).tolist()) <= set(range(-1, 10))


def test_reference_baseline_reads_the_exact_weighted_epoch(demo):
    from bench.loader import reference_loader
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    mixture = parse_shards_args([f"{demo / 'real'}:3", f"{demo / 'generated'}:1"])
    dl, decoded = reference_loader(mixture, preset("simclr"), 16, 0, "cpu")
    assert decoded == 128 and not dl.pin_memory
    order = np.array(list(dl.sampler))
    assert np.array_equal(np.bincount(order, minlength=128), [3] * 64 + [1] * 64)
    views, labels = next(iter(dl))
    assert [v.shape for v in views] == [(16, 3, 32, 32)] * 2 and labels.shape == (16,)


def test_loader_cli_same_workers_and_memory_for_every_backend(demo, tmp_path):
    from bench.loader import main

    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--batch-size", "16"]
    args += ["--workers", "1", "--warmup", "1", "--min-batches", "2", "--min-seconds", "0", "--no-isolate"]
    args += ["--backends", "dali-cpu,reference,webdataset", "--colour", "eager,compiled", "--sweep", "8"]
    _invoke(main, [*args, "--device", "cpu", "--out-dir", str(tmp_path)])
    (doc,) = _docs(tmp_path)
    assert doc["quick"] is True and doc["settings"]["workers"] == 1 and doc["settings"]["preset"] == "symmetric_adainf"
    plan, *rows = doc["results"]
    assert plan["backend"] == "plan_epoch" and plan["planned_samples"] == 1_500_000 and plan["timed_batches"] == 2
    # batch 16 eager and compiled, the sweep's 8 with train.py's colour stage on this device (eager), the peers at 16
    assert [r["backend"] for r in rows] == ["dali-cpu", "dali-cpu-compiled", "dali-cpu", "reference", "webdataset"]
    assert [r["batch_size"] for r in rows] == [16, 16, 8, 16, 16]
    assert [r["colour"] for r in rows] == ["eager", "compiled", "eager", None, None]
    assert [r.get("colour_compiled") for r in rows[:3]] == [False, True, False]
    for r in rows:
        assert r["workers"] == 1 and r["timed_batches"] == 2 and r["timed_samples"] == 2 * r["batch_size"]
        assert r["peak_pss_mb"] > 0 and r["device"] == "cpu"
    assert all(r["dali_operators"] == 13 and r["loader_device"] == "cpu" for r in rows[:3])  # decode + two crops
    assert rows[3]["vs_reference"] == 1.0


def test_loader_says_why_the_gpu_row_is_skipped_on_a_cpu(tmp_path):
    import torch

    from bench.loader import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = _invoke(
        main, ["--backends", "dali-gpu", "--device", "cpu", "--min-batches", "2", "--out-dir", str(tmp_path)]
    )
    assert "dali-gpu: skipped (--device cpu: no GPU here" in result.output
    (doc,) = _docs(tmp_path)
    (row,) = [r for r in doc["results"] if r["backend"] == "dali-gpu"]
    assert row["samples_per_s"] is None and "no GPU here" in row["skipped"]


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
    assert list(idx.keys) == list(ref.keys[:22]) and set(idx.offsets) == set(ref.offsets)
    with (
        open(tmp_path / "s" / manifest.shards[4].file, "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
    ):
        off, size = int(idx.offsets["png"][21]), int(idx.sizes["png"][21])
        assert m[off : off + size][:8] == PNG_MAGIC


def test_scale_plan_only_exact_sizes(demo, tmp_path):
    from bench.scale import main

    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--sizes", "50,300,1000"]
    _invoke(main, [*args, "--sources", "1,3", "--sources-size", "500", "--plan-only", "--out-dir", str(tmp_path)])
    (doc,) = _docs(tmp_path)
    rows = doc["results"]
    assert [(r["axis"], r["planned_samples"], r["sources"]) for r in rows] == [
        ("epoch_size", 50, 1),
        ("epoch_size", 300, 2),
        ("epoch_size", 1000, 2),
        ("sources", 500, 1),
        ("sources", 500, 3),
    ]
    # 1000 = 64 real x 10 + a 360-sample generated stand-in; 300 = 64 x 4 + 44; 50 = a 50-subset of the real set
    assert rows[2]["weights"] == [10.0, 1.0] and rows[2]["source_counts"] == [64, 360]
    assert rows[1]["weights"] == [4.0, 1.0] and rows[1]["source_counts"] == [64, 44]
    assert [r["plan_len"] for r in rows] == [50, 300, 1000, 500, 500]
    assert rows[4]["source_counts"] == [167, 167, 166]
    assert all(r["samples_per_s"] is None and r["plan_mb"] > 0 for r in rows)


def test_scale_loader_quick(demo, tmp_path):
    from bench.scale import main

    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--sizes", "700"]
    args += ["--sources", "2", "--sources-size", "64", "--batch-size", "16", "--max-batches", "2", "--warmup", "1"]
    _invoke(
        main, [*args, "--min-seconds", "0", "--workers", "1", "--quick", "--no-isolate", "--out-dir", str(tmp_path)]
    )
    (doc,) = _docs(tmp_path)
    assert doc["bench"] == "scale" and doc["quick"] is True and doc["settings"]["max_batches"] == 2
    for row in doc["results"]:
        assert row["backend"] == "dali-cpu" and row["samples_per_s"] > 0
        assert row["timed_batches"] == 2 and row["timed_samples"] == 32 and row["warmup_batches"] == 1
        assert row["stopped"] == "max_batches" and row["meets_minimum"] is False
        assert row["steps_per_epoch"] == row["planned_samples"] // 16
        assert row["peak_pss_mb"] > 0 and row["plans_timed"] == 5


def test_variants_are_distinct_and_start_with_the_identity():
    from bench.scale import transform, variants
    from shards.base.errors import ShardError

    vs = variants(60)
    assert vs[0] == ("none", (0, 1, 2), (0, 0)) and len(set(vs)) == 60
    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(transform(img, vs[0]), img)
    assert len({transform(img, v).tobytes() for v in vs}) == 60  # 60 different images from one random image
    with pytest.raises(ShardError, match="distinct"):
        variants(10**6)


def test_scale_full_builds_distinct_images_once_and_counts_every_key(demo, tmp_path):
    from bench.harness import read_images
    from bench.scale import main, recipe_of, valid_generated

    work = tmp_path / "work"
    args = ["--full", "--shards", f"{demo / 'real'}:10", "--generated", str(demo / "generated")]
    args += ["--generated-count", "150", "--work-dir", str(work), "--batch-size", "32", "--workers", "1"]
    args += ["--device", "cpu", "--no-isolate", "--out-dir"]
    _invoke(main, [*args, str(tmp_path / "out")])
    (doc,) = _docs(tmp_path / "out")
    (row,) = doc["results"]
    assert doc["bench"] == "scale-full" and doc["quick"] is False
    assert row["planned"] == row["samples"] == 64 * 10 + 150 and row["multiplicities_exact"] is True
    assert row["key_multiplicity"] == {"demo-real": {"10x": 64}, "generated": {"1x": 150}}
    assert row["peak_pss_mb"] > 0 and row["open_s"] > 0 and row["generated_reused"] is False
    gen = work / "generated-150"
    manifest = Manifest.load(gen)
    assert manifest.format == "raw" and manifest.count == 150 and manifest.kind == "generated"
    assert len({d.tobytes() for d in read_images(gen)[2]}) == 150  # 64 sources × 3 variants, cut to 150: all different
    # a second run reuses the set; a damaged one is not valid any more (and would be rebuilt)
    _invoke(main, [*args, str(tmp_path / "again")])
    (again,) = _docs(tmp_path / "again")
    assert again["results"][0]["generated_reused"] is True and again["results"][0]["multiplicities_exact"] is True
    tar = gen / manifest.shards[0].file
    tar.write_bytes(tar.read_bytes()[:1000])
    assert not valid_generated(gen, recipe_of(demo / "generated", 150, 10_000))


# ---------------------------------------------------------------------------------------------------
# formats, end to end, pack
# ---------------------------------------------------------------------------------------------------
def test_formats_hold_the_same_images(demo, tmp_path):
    from bench.formats import convert
    from bench.harness import read_images
    from shards.packing.encode import EncodeConfig, encode_array

    manifests = convert(demo / "real", tmp_path, limit=10)
    assert {f: m.count for f, m in manifests.items()} == {"jpg": 10, "png": 10, "raw": 10}
    _, _, _, pixels, labels = read_images(demo / "real", 10)
    got = {f: read_images(tmp_path / f) for f in manifests}
    for f in ("raw", "png"):  # lossless: the same pixels, labels and order
        assert all(np.array_equal(a, b) for a, b in zip(got[f][3], pixels)) and list(got[f][4]) == list(labels)
    jpg = [d.tobytes() for d in got["jpg"][2]]
    assert jpg == [encode_array(p, EncodeConfig("jpg", 95)) for p in pixels]  # one lossy pass (the source is PNG)
    assert list(got["jpg"][0].keys) == [f"demo-real-jpg/{i:06d}" for i in range(10)]


def test_formats_cli(demo, tmp_path):
    from bench.formats import main

    args = ["--shards", str(demo / "real"), "--limit", "32", "--batch-size", "8", "--min-batches", "3"]
    _invoke(
        main,
        [*args, "--min-seconds", "0", "--warmup", "1", "--workers", "1", "--no-isolate", "--out-dir", str(tmp_path)],
    )
    (doc,) = _docs(tmp_path)
    assert doc["quick"] is True  # minimums below the rule's: marked, whatever flag lowered them
    assert [r["format"] for r in doc["results"]] == ["jpg", "png", "raw"]
    assert all(r["images"] == 32 and r["timed_batches"] == 3 and r["timed_samples"] == 24 for r in doc["results"])


def test_end_to_end_cli(demo, tmp_path):
    from bench.end_to_end import main

    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--batch-size", "4"]
    args += ["--backbone", "convnet", "--min-steps", "3", "--min-seconds", "0", "--warmup", "1", "--device", "cpu"]
    _invoke(main, [*args, "--out-dir", str(tmp_path)])
    (doc,) = _docs(tmp_path)
    ceiling, e2e = doc["results"]  # on a CPU machine "both" loader devices is the CPU pipeline only
    assert ceiling["backend"] == "model-ceiling" and e2e["backend"] == "end-to-end"
    assert e2e["loader_device"] == "cpu" and e2e["num_threads"] == 2
    assert ceiling["batch_size"] == e2e["batch_size"] == 4 and e2e["precision"] == "fp32"
    for row in (ceiling, e2e):
        assert row["timed_batches"] == 3 and row["timed_samples"] == 12 and row["warmup_batches"] == 1
        assert row["samples_per_s"] == pytest.approx(12 / row["seconds"], abs=0.051) and row["peak_pss_mb"] > 0
    assert e2e["data_wait_fraction"] == e2e["wall_wait_fraction"]  # no CUDA events on a CPU
    assert doc["quick"] and doc["settings"]["min_batches"] == 3
    assert doc["settings"]["resolved"]["weights"] == [10.0, 1.0]


def test_pack_bench_on_real_files_passes_jpeg_through(tmp_path):
    from bench.pack import main

    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(24):
        d = src / ("cat" if i % 2 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    _invoke(main, ["--source", str(src), "--quick", "--workers", "1", "--out-dir", str(tmp_path / "o")])
    (doc,) = _docs(tmp_path / "o")
    rows = {r["backend"]: r for r in doc["results"]}
    assert doc["quick"] is True and doc["settings"]["n"] == 24
    assert rows["imagefolder->jpg"]["passthrough"] == 24 and rows["npz->jpg"]["encoded"] == 24
    for r in rows.values():
        assert r["images_per_pack"] == 24 and r["timed_batches"] >= 1 and r["seconds"] >= 1.0 and r["peak_pss_mb"] > 0


# ---------------------------------------------------------------------------------------------------
# bench/gpu_run.sh
# ---------------------------------------------------------------------------------------------------
GPU_RUN = Path(__file__).resolve().parents[1] / "bench" / "gpu_run.sh"


def _dry_run(tmp_path, *args):
    import subprocess

    out = subprocess.run(
        ["bash", str(GPU_RUN), "--dry-run", "--work", str(tmp_path), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]


def _bench_names(cmds):
    return [c.split("-m bench ")[1].split()[0] for c in cmds if "-m bench " in c]


def test_gpu_run_dry_run_lists_every_step_and_the_two_calls_cover_them(tmp_path):
    cmds = _dry_run(tmp_path)
    assert sum("-m shards pack" in c for c in cmds) == 3 and any("-m pytest -m gpu" in c for c in cmds)
    bench = [c for c in cmds if "-m bench " in c]
    assert _bench_names(cmds) == ["loader", "model", "end-to-end", "end-to-end", "scale", "formats"]
    assert all("--device cuda" in c for c in bench)
    assert all(f"{tmp_path}/shards/cifar10-train:10" in c and "edm:1" in c for c in bench if " model " not in c)
    assert "--colour eager,compiled" in bench[0] and "--sweep 64,128,256,1024" in bench[0]
    (train,) = [c for c in cmds if "train.py" in c]
    assert "--backbone resnet18 " in train and "--batch-size 512 " in train and "--steps 400 " in train
    one, two = _dry_run(tmp_path, "--call", "1"), _dry_run(tmp_path, "--call", "2")
    assert _bench_names(one) == ["loader", "end-to-end", "end-to-end"] and any("pytest -m gpu" in c for c in one)
    assert _bench_names(two) == ["model", "scale", "formats"] and any("train.py" in c for c in two)
    assert sorted(_bench_names(one) + _bench_names(two)) == sorted(_bench_names(cmds))
    assert all(sum("-m shards pack" in c for c in call) == 3 for call in (one, two))  # a fresh machine packs again


def test_gpu_run_data_step_on_the_cpu(tmp_path):
    """The `data` step on small archives laid out like the shared ones, on the CPU; the results archive is left, and
    a second run keeps the sets it packed."""
    import subprocess
    import sys
    import tarfile

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar10-jpg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            for i in range(12):
                f = tmp_path / f"{split}{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f, quality=75)
                tar.add(f, f"cifar10/{split}/{'cat' if i % 2 else 'dog'}/{i:04d}.jpg")
    with tarfile.open(data / "edm-cifar10-50k-png.tar.gz", "w:gz") as tar:
        for i in range(10):
            f = tmp_path / f"g{i}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f)
            tar.add(f, f"edm-cifar10/fid-tmp/000000/{i:06d}.png")
    env = {**os.environ, "PYTHON": sys.executable}
    work = tmp_path / "work"
    args = ["bash", str(GPU_RUN), "--device", "cpu", "--quick", "--data", str(data), "--bundle", str(tmp_path / "none")]
    args += ["--limit", "8", "--work", str(work), "--out", str(tmp_path / "out"), "data"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = {d: Manifest.load(work / "shards" / d).count for d in ("cifar10-train", "cifar10-test", "edm")}
    assert counts == {"cifar10-train": 8, "cifar10-test": 8, "edm": 8}
    assert Manifest.load(work / "shards" / "cifar10-train").format == "jpg"
    assert Manifest.load(work / "shards" / "edm").kind == "generated"
    assert (tmp_path / "out" / "gpu-run.tar.gz").is_file() and "all steps passed" in out.stdout
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "shards pack" not in again.stdout


# ---------------------------------------------------------------------------------------------------
# on a GPU (pytest -m gpu; skipped without CUDA)
# ---------------------------------------------------------------------------------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["dali-gpu", "dali-cpu", "reference", "webdataset"])
def test_loader_backends_on_the_gpu(demo, backend):
    from bench.harness import Timing, time_loader
    from bench.loader import time_baseline

    shards, timing = [f"{demo / 'real'}:10", f"{demo / 'generated'}:1"], Timing(1, 3, 0.0)
    if backend.startswith("dali"):
        row = time_loader(shards, "simclr", 16, timing=timing, device="cuda", loader_device=backend[5:])
        assert row["loader_device"] == backend[5:]
    else:
        row = time_baseline(backend, shards, "simclr", 16, 2, "cuda", timing)
    assert row["timed_batches"] == 3 and row["timed_samples"] == 48 and row["samples_per_s"] > 0


@pytest.mark.gpu
@needs_cuda
def test_model_ceiling_on_the_gpu_uses_bf16_and_reports_gpu_memory():
    from bench.harness import Timing
    from bench.model import measure_model_ceiling
    from models import build_method

    row = measure_model_ceiling(build_method("simclr"), 64, "cuda", timing=Timing(1, 3, 0.0))
    assert row["timed_batches"] == 3 and row["peak_gpu_mb"] > 0 and 0 < row["mfu"] < 1 and row["precision"] == "bf16"
