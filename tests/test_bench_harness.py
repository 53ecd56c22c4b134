"""bench.harness and the ``python -m bench`` command line: timing rules, PSS, fresh processes, one-line errors.

No timing is asserted; the checks are on counts, options and messages (each benchmark: its own test_bench_* file).
"""

from __future__ import annotations

import numpy as np
import pytest
from benchruns import invoke_ok
from click.testing import CliRunner


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
        return eval(invoke_ok(probe, list(args)).output)

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
    from bench.__main__ import cli, shared_option_args
    from bench.scale import main as scale_main

    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0 and "not available" not in result.output
    for name in ("loader", "end-to-end", "scale", "formats", "feed", "report", "inflation", "confirm"):
        assert name in result.output
    args = shared_option_args(scale_main, {"quick": True, "shards": ("a:10", "b"), "out_dir": "/o", "device": "cpu"})
    assert args == ["--quick", "--shards", "a:10", "--shards", "b", "--out-dir", "/o", "--device", "cpu"]
    result = CliRunner().invoke(cli, ["all", "--only", "nope"])
    assert result.exit_code != 0 and "comma-separated list of loader" in result.output
    assert CliRunner().invoke(cli, ["loader", "-h"]).exit_code == 0
