"""Running a benchmark command in-process and reading the JSON it writes, shared by the ``test_bench_*`` tests."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bench import report


def result_docs(out_dir: Path) -> list[dict]:
    """The result files in ``out_dir`` (sorted by name), each checked against the common shape first."""
    docs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    for doc in docs:
        assert report.check_doc(doc) == []
    return docs


def invoke_ok(command, args):
    """``command`` run with ``args`` in-process; it must exit 0 (its output is the assertion's message)."""
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result
