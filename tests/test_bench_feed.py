"""`python -m bench feed` on tiny demo shards: the rows and fields the targets are read from."""
import json

from click.testing import CliRunner

from bench.feed import main


def test_feed_benchmark_rows(demo_shards, tmp_path):
    args = ["--shards", f"{demo_shards['real']}:2", "--shards", f"{demo_shards['generated']}:1", "--formats", "png,raw",
            "--batch-size", "16", "--batches", "5", "--min-seconds", "0", "--warmup", "1", "--loader-batches", "3",
            "--boundary-batches", "2", "--large-size", "3000", "--large-format", "raw", "--out-dir", str(tmp_path),
            "--work-dir", str(tmp_path / "work")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    [path] = tmp_path.glob("*-feed.json")
    doc = json.loads(path.read_text())
    rows = {row["backend"]: row for row in doc["results"]}
    assert doc["bench"] == "feed" and "cpu" in doc["hardware"]
    for fmt in ("png", "raw"):
        row = rows[f"feed-{fmt}"]
        assert row["timed_batches"] >= 5 and row["samples_per_s"] > 0 and row["ms_per_batch"] > 0
        assert row["off_training_thread"] is True and row["training_thread_ms_per_batch"] >= 0
    b = rows["epoch-boundary"]
    assert b["gap_ms"] > 0 and abs(b["gap_ratio"] - b["gap_ms"] / b["median_interval_ms"]) < 0.01 * b["gap_ratio"] + 0.01
    assert rows["open-large"]["samples"] == 3000 and rows["open-large"]["warm_open_s"] >= 0
    assert rows["open-demo-real"]["samples"] == 300 and rows["open-demo-real"]["validation_s"] > 0
    assert (tmp_path / "work" / "converted" / "demo-real" / "raw" / "manifest.json").is_file()
