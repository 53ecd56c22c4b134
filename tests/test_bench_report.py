"""bench/report.py: the charts and table drawn from result files, the result-file checks, the committed results."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench import report
from bench.harness import write_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    labels = [report.loader_label(row) for row in run.results if row["backend"] == "end-to-end"]
    assert labels == ["loader on the GPU, 2 threads", "loader on the CPU, 2 threads"]
    table, written = report.build_report(results, tmp_path)
    assert {p.name for p in written} >= {"throughput.png", "data-wait.png", "scale.png", "README.md"}
