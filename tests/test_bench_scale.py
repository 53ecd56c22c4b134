"""bench/scale.py: stand-in sets of exact sizes, the plan, the quick loader run and the full build of distinct
images."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
from benchruns import invoke_ok, result_docs

from shards.format.manifest import Manifest
from shards.read.index import read_index

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_standin_repeats_shards_exactly(bench_demo, tmp_path):
    from bench.scale import make_standin

    base = bench_demo / "generated"
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


def test_scale_plan_only_exact_sizes(bench_demo, tmp_path):
    from bench.scale import main

    args = [
        "--shards",
        f"{bench_demo / 'real'}:10",
        "--shards",
        f"{bench_demo / 'generated'}:1",
        "--sizes",
        "50,300,1000",
    ]
    invoke_ok(main, [*args, "--sources", "1,3", "--sources-size", "500", "--plan-only", "--out-dir", str(tmp_path)])
    (doc,) = result_docs(tmp_path)
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


def test_scale_loader_quick(bench_demo, tmp_path):
    from bench.scale import main

    args = ["--shards", f"{bench_demo / 'real'}:10", "--shards", f"{bench_demo / 'generated'}:1", "--sizes", "700"]
    args += ["--sources", "2", "--sources-size", "64", "--batch-size", "16", "--max-batches", "2", "--warmup", "1"]
    invoke_ok(
        main, [*args, "--min-seconds", "0", "--workers", "1", "--quick", "--no-isolate", "--out-dir", str(tmp_path)]
    )
    (doc,) = result_docs(tmp_path)
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


def test_scale_full_builds_distinct_images_once_and_counts_every_key(bench_demo, tmp_path):
    from bench.harness import read_images
    from bench.scale import main, recipe_of, valid_generated

    work = tmp_path / "work"
    args = ["--full", "--shards", f"{bench_demo / 'real'}:10", "--generated", str(bench_demo / "generated")]
    args += ["--generated-count", "150", "--work-dir", str(work), "--batch-size", "32", "--workers", "1"]
    args += ["--device", "cpu", "--no-isolate", "--out-dir"]
    invoke_ok(main, [*args, str(tmp_path / "out")])
    (doc,) = result_docs(tmp_path / "out")
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
    invoke_ok(main, [*args, str(tmp_path / "again")])
    (again,) = result_docs(tmp_path / "again")
    assert again["results"][0]["generated_reused"] is True and again["results"][0]["multiplicities_exact"] is True
    tar = gen / manifest.shards[0].file
    tar.write_bytes(tar.read_bytes()[:1000])
    assert not valid_generated(gen, recipe_of(bench_demo / "generated", 150, 10_000))
