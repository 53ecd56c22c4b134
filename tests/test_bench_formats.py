"""bench/formats.py: the demo set converted to every storage format holds the same images; the command's JSON."""

from __future__ import annotations

import numpy as np
from benchruns import invoke_ok, result_docs


def test_formats_hold_the_same_images(bench_demo, tmp_path):
    from bench.formats import convert
    from bench.harness import read_images
    from shards.packing.encode import EncodeConfig, encode_array

    manifests = convert(bench_demo / "real", tmp_path, limit=10)
    assert {f: m.count for f, m in manifests.items()} == {"jpg": 10, "png": 10, "raw": 10}
    _, _, _, pixels, labels = read_images(bench_demo / "real", 10)
    got = {f: read_images(tmp_path / f) for f in manifests}
    for f in ("raw", "png"):  # lossless: the same pixels, labels and order
        assert all(np.array_equal(a, b) for a, b in zip(got[f][3], pixels)) and list(got[f][4]) == list(labels)
    jpg = [d.tobytes() for d in got["jpg"][2]]
    assert jpg == [encode_array(p, EncodeConfig("jpg", 95)) for p in pixels]  # one lossy pass (the source is PNG)
    assert list(got["jpg"][0].keys) == [f"demo-real-jpg/{i:06d}" for i in range(10)]


def test_formats_cli(bench_demo, tmp_path):
    from bench.formats import main

    args = ["--shards", str(bench_demo / "real"), "--limit", "32", "--batch-size", "8", "--min-batches", "3"]
    invoke_ok(
        main,
        [*args, "--min-seconds", "0", "--warmup", "1", "--workers", "1", "--no-isolate", "--out-dir", str(tmp_path)],
    )
    (doc,) = result_docs(tmp_path)
    assert doc["quick"] is True  # minimums below the rule's: marked, whatever flag lowered them
    assert [r["format"] for r in doc["results"]] == ["jpg", "png", "raw"]
    assert all(r["images"] == 32 and r["timed_batches"] == 3 and r["timed_samples"] == 24 for r in doc["results"])
