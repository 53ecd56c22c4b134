"""`python -m bench feed` on tiny demo shards: the rows and fields the targets are read from."""

import json

from click.testing import CliRunner

from bench.feed import main


def test_feed_benchmark_rows(demo_shards, tmp_path):
    args = [
        "--shards",
        f"{demo_shards['real']}:2",
        "--shards",
        f"{demo_shards['generated']}:1",
        "--formats",
        "png,raw",
        "--batch-size",
        "16",
        "--min-batches",
        "5",
        "--min-seconds",
        "0",
        "--warmup",
        "1",
        "--loader-batches",
        "3",
        "--boundary-batches",
        "2",
        "--large-size",
        "3000",
        "--large-format",
        "raw",
        "--out-dir",
        str(tmp_path),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    [path] = tmp_path.glob("*-feed.json")
    doc = json.loads(path.read_text())
    rows = {row["backend"]: row for row in doc["results"]}
    assert doc["bench"] == "feed" and "cpu" in doc["hardware"]
    assert set(rows) == {
        "open-demo-real",
        "open-demo-generated",
        "feed-png",
        "feed-raw",
        "epoch-boundary",
        "open-large",
    }
    timings = (
        "samples_per_s",
        "ms_per_batch",
        "ms_per_batch_p50",
        "training_thread_ms_per_batch",
        "training_thread_ms_per_batch_inline",
        "loader_samples_per_s",
    )
    for fmt in ("png", "raw"):
        row = rows[f"feed-{fmt}"]
        assert row["format"] == fmt and row["off_training_thread"] is True
        # --min-seconds 0: exactly the batches asked for, feed and loader
        assert row["timed_batches"] == 5 and row["loader_timed_batches"] == 3
        assert all(isinstance(row[k], float) for k in timings), row  # (figures, no level asserted)
    b = rows["epoch-boundary"]
    assert b["steps_per_epoch"] == (2 * 300 + 500) // 16 and b["batches_each_side"] == 2
    assert all(isinstance(b[k], float) for k in ("gap_ms", "median_interval_ms", "rebuild_gap_ms"))
    assert {k: rows["open-large"][k] for k in ("samples", "format")} == {"samples": 3000, "format": "raw"}
    assert {k: rows["open-demo-real"][k] for k in ("samples", "format")} == {"samples": 300, "format": "png"}
    assert rows["open-demo-generated"]["samples"] == 500
    for fmt in ("raw", "jpg"):  # the png demo sets converted once into each other format asked for, not jpg
        for name in ("demo-real", "demo-generated"):
            assert (tmp_path / "work" / "converted" / name / fmt / "manifest.json").is_file() == (fmt == "raw")
