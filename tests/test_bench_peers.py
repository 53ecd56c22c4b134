"""The peer rows of ``python -m bench loader`` (issue 26), in the test venv, so without the peers installed: the one
exactness audit on known orders, the interleaved rounds and their ratio summary, a peer row that cannot import or
run says why, and the memory probe kept out of the timed passes."""

from __future__ import annotations

import numpy as np
import pytest

from bench import harness as h
from bench import loader as bl
from bench import peers
from bench.exactness import audit, epoch_samples
from loaders.batch.sampler import mixing_bound, plan_epoch


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from shards.packing.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, n_real=64, n_generated=64, n_test=16, shard_size=40)
    return out


def _plan_batches(counts, weights, batch_size):
    plan = plan_epoch(counts, weights, 0, 0)
    return [plan.batch(k, batch_size) for k in range(plan.num_batches(batch_size))], plan


# ---------------------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------------------
def test_audit_of_the_exact_plan_is_exact_and_within_the_bound():
    counts, weights, batch = [300, 500], [10, 1], 50  # 3,500 samples: 70 whole batches
    batches, plan = _plan_batches(counts, weights, batch)
    row = audit(((b.source, b.index) for b in batches), counts, weights, ["real", "generated"])
    assert row["epoch_samples"] == len(plan) == 3500 == row["audited_samples"] and row["audited_batches"] == 70
    assert row["real_exact"] == row["generated_exact"] == 1.0
    assert row["samples_lost"] == row["samples_extra"] == row["samples_unknown"] == 0
    assert row["real_never_seen"] == row["generated_never_seen"] == 0
    p = 500 / 3500
    assert row["gen_share_planned"] == pytest.approx(p, abs=1e-6)
    assert row["gen_count_bound"] == pytest.approx(mixing_bound([1 - p, p])[1], abs=1e-6)
    shares = np.array([(b.source == 1).mean() for b in batches])
    assert row["gen_share_mean"] == pytest.approx(shares.mean(), abs=1e-6)
    assert row["gen_share_std"] == pytest.approx(shares.std(), abs=1e-6)
    assert (row["gen_share_min"], row["gen_share_max"]) == pytest.approx((shares.min(), shares.max()), abs=1e-6)
    assert row["batches_outside_bound"] == 0  # the proven bound holds for every batch


def test_audit_counts_what_a_stream_dropped_and_repeated():
    counts, weights, batch = [300, 500], [10, 1], 50
    batches, _ = _plan_batches(counts, weights, batch)
    kept = [b for k, b in enumerate(batches) if k % 7 != 3]  # a loader that loses every 7th batch
    dropped = [b for k, b in enumerate(batches) if k % 7 == 3]
    repeated = kept + kept[:1]  # and delivers its first batch twice at the end
    row = audit(((b.source, b.index) for b in repeated), counts, weights, ["real", "generated"])
    seen = [np.zeros(n, int) for n in counts]
    for b in repeated:
        for s in (0, 1):
            np.add.at(seen[s], b.index[b.source == s], 1)
    lost = sum(int(np.maximum(w - c, 0).sum()) for c, w in zip(seen, weights))
    extra = sum(int(np.maximum(c - w, 0).sum()) for c, w in zip(seen, weights))
    assert row["samples_lost"] == lost > 0 and row["samples_extra"] == extra > 0
    assert lost - extra == sum(len(b) for b in dropped) - len(kept[0])  # the samples missing, net
    assert row["real_exact"] == pytest.approx((seen[0] == 10).mean(), abs=1e-6) and row["real_exact"] < 1
    assert row["generated_exact"] == pytest.approx((seen[1] == 1).mean(), abs=1e-6) and row["generated_exact"] < 1
    assert row["generated_never_seen"] == int((seen[1] == 0).sum()) > 0
    assert row["audited_samples"] == sum(len(b) for b in repeated)


def test_audit_stops_an_endless_stream_at_one_epoch_and_flags_batches_outside_the_bound():
    counts, weights = [40, 20], [1, 1]

    def endless():  # whole batches of one source: the worst mixing
        while True:
            yield np.zeros(10, int), np.arange(10) % 40
            yield np.ones(10, int), np.arange(10) % 20

    row = audit(endless(), counts, weights, ["real", "generated"], max_samples=epoch_samples(counts, weights))
    assert row["audited_samples"] == 60 and row["audited_batches"] == 6
    assert row["batches_outside_bound"] == 6 and (row["gen_share_min"], row["gen_share_max"]) == (0.0, 1.0)
    assert row["real_never_seen"] == 30 and row["samples_lost"] == 30 + 10 and row["samples_extra"] == 20 + 20


def test_every_project_and_baseline_order_is_audited_by_the_same_function(demo):
    shards = [f"{demo / 'real'}:10", f"{demo / 'generated'}:1"]  # 640 + 64 samples
    for backend in ("dali-cpu", "reference"):
        row = bl.audit_backend(backend, shards, "symmetric_adainf", 32, 0, "cpu")
        assert row["epoch_samples"] == 704 and row["audited_samples"] == 704 - 704 % 32 == 704
        assert row["real_exact"] == row["generated_exact"] == 1.0 and row["samples_lost"] == 0
        assert row["batches_outside_bound"] == 0 and row["gen_share_mean"] == pytest.approx(64 / 704, abs=1e-6)
    wds = bl.audit_backend("webdataset", shards, "symmetric_adainf", 32, 0, "cpu")  # resampled shards: not exact
    assert wds["audited_samples"] == 704 and wds["samples_unknown"] == 0 and wds["samples_lost"] > 0


# ---------------------------------------------------------------------------------------------------
# Rounds: interleaving, the ratio's median and range
# ---------------------------------------------------------------------------------------------------
def test_rounds_interleave_the_rows():
    assert bl.interleave(["a", "b", "c"], 2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_ratio_to_the_reference_is_per_round_then_median_and_range():
    s = bl.ratio_summary([300, 330, 200], [100, 110, 50])  # 3.0, 3.0, 4.0: the reference drifted with the row
    assert s == {
        "vs_reference": 3.0,
        "vs_reference_min": 3.0,
        "vs_reference_max": 4.0,
        "vs_reference_rounds": [3, 3, 4],
    }
    assert bl.ratio_summary([300, None], [100, 100])["vs_reference_rounds"] == [3.0]
    assert bl.ratio_summary([], [])["vs_reference"] is None


def test_combine_takes_the_median_rate_and_sums_the_counts():
    passes = [
        {"samples_per_s": 10.0, "timed_batches": 5, "timed_samples": 50, "seconds": 5.0, "meets_minimum": True},
        {"samples_per_s": 30.0, "timed_batches": 6, "timed_samples": 60, "seconds": 2.0, "meets_minimum": True},
        {"samples_per_s": 20.0, "timed_batches": 7, "timed_samples": 70, "seconds": 3.5, "meets_minimum": False},
    ]
    row = bl.combine({"backend": "x"}, passes)
    assert row["samples_per_s"] == 20.0 and row["samples_per_s_rounds"] == [10.0, 30.0, 20.0] and row["rounds"] == 3
    assert (row["samples_per_s_min"], row["samples_per_s_max"]) == (10.0, 30.0)
    assert (row["timed_batches"], row["timed_samples"], row["seconds"]) == (18, 180, 10.5)
    assert row["meets_minimum"] is False


# ---------------------------------------------------------------------------------------------------
# The suite: passes in order, the probe kept apart, rows that cannot run
# ---------------------------------------------------------------------------------------------------
CALLS: list = []


def fake_pass(name, memory, timing, **kw):
    """A stand-in throughput pass: records its call, and memory fields only when probed."""
    CALLS.append((name, memory))
    rate = {"a": 100.0, "reference": 50.0}.get(name, 10.0) * (1 + len(CALLS) / 100)
    row = {"samples_per_s": rate, "timed_batches": 2, "timed_samples": 20, "seconds": 0.2, "meets_minimum": True}
    return {**row, "peak_pss_mb": 123.0, "memory_probe_cpu_s": 0.01} if memory else row


def fake_audit(backend, **kw):
    return {"real_exact": 1.0, "generated_exact": 1.0, "samples_lost": 0, "gen_share_mean": 0.1, "gen_share_std": 0.0}


def test_the_suite_interleaves_rounds_then_probes_memory_apart(monkeypatch):
    monkeypatch.setattr(bl, "audit_backend", fake_audit)
    CALLS.clear()
    rows = [(n, fake_pass, {"name": n}, {"backend": n, "batch_size": 8}) for n in ("a", "reference")]
    out, passes = bl.run_suite(rows, [], h.Timing(0, 1, 0.0), 3, False, True, 1, "cpu", None)
    throughput = [("a", False), ("reference", False)] * 3
    assert CALLS == throughput + [("a", True), ("reference", True)]  # A B A B A B, then one memory pass each
    assert all("peak_pss_mb" not in p for ps in passes for p in ps)  # no probe in a timed round
    assert [r["peak_pss_mb"] for r in out] == [123.0, 123.0] and out[0]["memory_pass_samples_per_s"] > 0
    assert out[0]["rounds"] == 3 and len(out[0]["samples_per_s_rounds"]) == 3 and out[0]["real_exact"] == 1.0


def test_timed_without_memory_never_starts_the_probe(monkeypatch):
    class Forbidden:
        def __init__(self, *a, **k):
            raise AssertionError("PssSampler started in a timed pass")

    monkeypatch.setattr(h, "PssSampler", Forbidden)
    it = iter(range(10))
    row = h.timed(lambda: next(it) or 1, h.Timing(1, 3, 0.0), memory=False)
    assert row["timed_batches"] == 3 and "peak_pss_mb" not in row


def test_the_probe_measures_its_own_cost():
    with h.PssSampler(interval=0.01) as probe:
        sum(i * i for i in range(300_000))
    row = probe.row()
    assert row["memory_samples"] >= 2 and row["memory_probe_cpu_s"] > 0
    assert 0 < row["memory_probe_core_share"] <= 1.5


def test_a_peer_that_cannot_import_keeps_its_row_with_the_reason(monkeypatch):
    monkeypatch.setitem(peers.PEERS, "mosaic", ("adainf_no_such_module", "mosaicml-streaming", "-"))
    why = peers.unavailable("mosaic")
    assert "mosaicml-streaming is not installed" in why and "make peers" in why
    CALLS.clear()
    rows = [(n, fake_pass, {"name": n}, {"backend": n, "batch_size": 8}) for n in ("reference", "mosaic")]
    out, _ = bl.run_suite(rows, [], h.Timing(0, 1, 0.0), 2, False, False, 1, "cpu", None)
    assert [r["backend"] for r in out] == ["reference", "mosaic"] and CALLS == [("reference", False)] * 2 + [
        ("reference", True)
    ]
    assert out[1]["samples_per_s"] is None and out[1]["skipped"] == why


def test_a_peer_that_fails_keeps_its_row_with_the_reason(monkeypatch):
    def broken(name, memory, timing, **kw):
        raise RuntimeError("streaming: the shared memory of a previous run is stale\nTraceback ...")

    monkeypatch.setattr(peers, "unavailable", lambda name: None)
    rows = [("reference", fake_pass, {"name": "reference"}, {"backend": "reference", "batch_size": 8})]
    rows.append(("litdata", broken, {"name": "litdata"}, {"backend": "litdata", "batch_size": 8}))
    out, _ = bl.run_suite(rows, [], h.Timing(0, 1, 0.0), 2, False, False, 1, "cpu", None)
    assert out[1]["samples_per_s"] is None
    assert out[1]["failed"] == "RuntimeError: streaming: the shared memory of a previous run is stale"


def test_the_loader_command_lists_the_peers_without_them_installed(demo, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    for name in peers.PEERS:
        monkeypatch.setitem(peers.PEERS, name, (f"adainf_no_{name}", peers.PEERS[name][1], "-"))
    args = ["--shards", f"{demo / 'real'}:10", "--shards", f"{demo / 'generated'}:1", "--batch-size", "16"]
    args += ["--workers", "1", "--warmup", "1", "--min-batches", "2", "--min-seconds", "0", "--no-isolate"]
    args += ["--backends", "reference,mosaic,litdata,spdl", "--rounds", "2", "--device", "cpu"]
    result = CliRunner().invoke(bl.main, [*args, "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (doc,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    _, ref, *rest = doc["results"]
    assert doc["settings"]["rounds"] == 2 and ref["rounds"] == 2 and ref["vs_reference_rounds"] == [1.0, 1.0]
    assert ref["real_exact"] == ref["generated_exact"] == 1.0 and ref["peak_pss_mb"] > 0
    assert ref["memory_probe_cpu_s"] > 0 and ref["memory_pass_samples_per_s"] > 0
    assert [r["backend"] for r in rest] == ["mosaic", "litdata", "spdl"]
    assert all(r["samples_per_s"] is None and "is not installed" in r["skipped"] for r in rest)
    assert "mosaic" in result.output and "is not installed" in result.output  # in the printed table too


def test_the_fastest_peer_of_each_round_is_what_the_project_is_held_against():
    passes = [
        [{"samples_per_s": 400.0}, {"samples_per_s": 300.0}],  # dali
        [{"samples_per_s": 50.0}, {"samples_per_s": 60.0}],  # mosaic
        [{"samples_per_s": 80.0}, {"samples_per_s": 40.0}],  # litdata
        [],  # spdl: did not run
    ]
    best = bl.best_peer_rates(passes, [1, 2, 3], 2)
    assert best == [80.0, 60.0]
    summary = bl.ratio_summary([400.0, 300.0], best, "vs_best_peer")
    assert summary["vs_best_peer_rounds"] == [5.0, 5.0] and summary["vs_best_peer"] == 5.0
    assert bl.best_peer_rates([[], []], [1], 2) == [None, None]
