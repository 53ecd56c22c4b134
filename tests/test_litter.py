"""Commands leave nothing in the checkout's tracked tree (issue 27, item 5): a quick benchmark's JSON goes
under runs/ (ignored by git), never into the committed bench/results/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from click.testing import CliRunner

import bench.harness as harness

ROOT = Path(__file__).resolve().parents[1]


def test_bench_loader_quick_writes_under_runs_not_bench_results(tmp_path, monkeypatch):
    committed, quick = tmp_path / "results", tmp_path / "runs" / "bench-quick"
    monkeypatch.setattr(harness, "RESULTS_DIR", committed)
    monkeypatch.setattr(harness, "QUICK_RESULTS_DIR", quick)
    from bench.loader import main

    result = CliRunner().invoke(main, ["--quick", "--plan-only", "--min-seconds", "0"])
    assert result.exit_code == 0, result.output
    (written,) = quick.glob("*-loader.json")
    assert f"wrote {written}" in result.output
    assert not committed.exists()


def test_the_quick_results_folder_is_ignored_by_git():
    assert harness.QUICK_RESULTS_DIR == ROOT / "runs" / "bench-quick"
    probe = harness.QUICK_RESULTS_DIR / "cpu2-20260101-000000-loader.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT)
    assert ignored.returncode == 0  # runs/ is in .gitignore


def test_bench_all_quick_reports_into_the_quick_folder(monkeypatch, tmp_path):
    """`bench all --quick` without --out-dir: every benchmark and the report get the quick folder."""
    import bench.__main__ as cli

    quick = tmp_path / "quick"
    monkeypatch.setattr(harness, "QUICK_RESULTS_DIR", quick)
    seen = []

    class Recorder:
        def __init__(self, name):
            self.name, self.params = name, []

        def main(self, args, **kw):
            seen.append((self.name, list(args)))

    monkeypatch.setattr(cli, "load_command", Recorder)
    monkeypatch.setattr(harness, "resolve_shards", lambda shards: ())
    result = CliRunner().invoke(cli.cli, ["all", "--quick", "--only", "loader"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("report", ["--results-dir", str(quick)])
