"""`python -m bench end-to-end` (bench/end_to_end.py) on the tiny demo mixture: its JSON in the common shape."""

from __future__ import annotations

import pytest
from benchruns import invoke_ok, result_docs


def test_end_to_end_cli(bench_demo, tmp_path):
    from bench.end_to_end import main

    args = ["--shards", f"{bench_demo / 'real'}:10", "--shards", f"{bench_demo / 'generated'}:1", "--batch-size", "4"]
    args += ["--backbone", "convnet", "--min-steps", "3", "--min-seconds", "0", "--warmup", "1", "--device", "cpu"]
    invoke_ok(main, [*args, "--out-dir", str(tmp_path)])
    (doc,) = result_docs(tmp_path)
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
