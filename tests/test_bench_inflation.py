"""`python -m bench inflation` (bench/studies/inflation.py) on tiny demo data: two modes, two seeds, a few
convnet steps of train.py.

Checks the JSON shape, that each run trained with the weights and augmentation the policy gives, the
curve, the random-init rows, the mean ± std summary and the comparison against the spread, and the chart;
no timing and no accuracy level is asserted.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench import report
from bench.studies import inflation


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from shards.packing.demo import make_demo

    root = tmp_path_factory.mktemp("inflation-demo")
    make_demo(root, n_real=96, n_generated=64, n_test=40, shard_size=64, image_size=16)
    return root


def test_study_on_demo_data(tiny_demo, tmp_path):
    out = tmp_path / "results"
    args = [
        "--demo-dir",
        str(tiny_demo),
        "--modes",
        "none,adainf",
        "--seeds",
        "0,1",
        "--backbone",
        "convnet",
        "--steps",
        "4",
        "--batch-size",
        "16",
        "--warmup-steps",
        "0",
        "--eval-every",
        "2",
        "--knn-train-limit",
        "0",
        "--eval-limit",
        "0",
        "--probe-epochs",
        "2",
        "--image-size",
        "16",
        "--num-threads",
        "1",
        "--device",
        "cpu",
        "--work-dir",
        str(tmp_path / "work"),
        "--out-dir",
        str(out),
    ]
    result = CliRunner().invoke(inflation.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output

    [path] = out.glob("*-inflation.json")
    doc = json.loads(path.read_text())
    assert report.check_doc(doc) == []
    assert doc["bench"] == "inflation" and doc["settings"]["steps"] == 4 and doc["settings"]["seeds"] == [0, 1]
    rows = [r for r in doc["results"] if r["backend"] != "summary"]
    assert [(r["mode"], r["seed"]) for r in rows] == [
        ("random-init", 0),
        ("none", 0),
        ("adainf", 0),
        ("random-init", 1),
        ("none", 1),
        ("adainf", 1),
    ]
    none, adainf = rows[1], rows[2]
    # the policy, not the study, chose the weights and the augmentation (train.py's resolved config)
    assert none["weights"] == {"real": 1.0, "generated": 0.0} and none["effective_size"] == 96
    assert adainf["weights"] == {"real": 10.0, "generated": 1.0} and adainf["effective_size"] == 96 + 64
    assert none["epoch_size"] == 96 and adainf["epoch_size"] == 10 * 96 + 64
    assert none["crop_min_scale"] < adainf["crop_min_scale"] and none["jitter_p"] > adainf["jitter_p"]
    for r in rows[1:3] + rows[4:]:
        assert r["backend"] == f"train-{r['mode']}" and r["steps"] == 4 and r["batch_size"] == 16
        assert r["samples_per_s"] > 0 and r["eval_samples"] == 40 and r["knn_train_samples"] == 96
        assert [p["step"] for p in r["curve"]] == [2, 4]  # evaluations at 2 and 4 (the final one)
        assert r["curve"][-1]["knn_acc"] == r["knn_acc"] and r["curve"][-1]["linear_probe_acc"] == r["linear_probe_acc"]
    assert rows[1]["knn_acc"] != rows[4]["knn_acc"] or rows[1]["linear_probe_acc"] != rows[4]["linear_probe_acc"]

    summary = {r["mode"]: r for r in doc["results"] if r["backend"] == "summary"}
    assert set(summary) == {"random-init", "none", "adainf"}
    for mode, s in summary.items():
        runs = [r for r in rows if r["mode"] == mode]
        values = [r["knn_acc"] for r in runs]
        assert s["n"] == 2 and s["knn_acc"]["values"] == values
        assert s["knn_acc"]["mean"] == pytest.approx(sum(values) / 2, abs=1e-5)
        assert s["knn_acc"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5, abs=1e-5)
    (pair,) = [p for p in doc["settings"]["comparisons"] if p["metric"] == "knn_acc"]
    delta = summary["none"]["knn_acc"]["mean"] - summary["adainf"]["knn_acc"]["mean"]
    assert pair["delta"] == pytest.approx(delta, abs=1e-5)
    assert pair["exceeds"] == (abs(delta) > summary["none"]["knn_acc"]["std"] + summary["adainf"]["knn_acc"]["std"])

    host = path.name.split("-")[0]
    assert (out / f"inflation-{host}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / f"inflation-{host}.md").read_text()
    assert "| demo | adainf | 10:1 |" in table and " ± " in table and "the spread" in table
    assert (tmp_path / "work" / "demo-adainf-seed1" / "metrics.jsonl").is_file()  # --work-dir keeps the runs


def test_throughput_and_curve_from_metrics():
    records = [
        {"kind": "train", "step": 50, "samples_per_s": 100.0, "data_wait": 0.5},
        {"kind": "eval", "step": 50, "knn_acc": 0.3, "online_probe_acc": 0.2},
        {"kind": "train", "step": 100, "samples_per_s": 300.0, "data_wait": 0.0},
        {"kind": "final", "step": 100, "knn_acc": 0.4, "online_probe_acc": 0.35, "linear_probe_acc": 0.5},
    ]
    # 50*128 samples at 100/s (64 s, half waiting) + 50*128 at 300/s (21.33 s): 12800 / 85.33 s
    sps, wait = inflation.throughput(records, 128)
    assert sps == pytest.approx(150.0) and wait == pytest.approx(32 / (64 + 64 / 3), abs=1e-4)
    assert inflation.curve(records) == [
        {"step": 50, "knn_acc": 0.3, "online_probe_acc": 0.2},
        {"step": 100, "knn_acc": 0.4, "online_probe_acc": 0.35, "linear_probe_acc": 0.5},
    ]


def test_compare_flags_differences_beyond_the_spread():
    def arm(mode, values):
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return {"setting": "full", "mode": mode, "knn_acc": {"mean": mean, "std": std, "values": values}}

    summary = [arm("none", [0.40, 0.41, 0.42]), arm("adainf", [0.45, 0.46, 0.47]), arm("auto", [0.44, 0.47, 0.41])]
    pairs = {(p["a"], p["b"]): p for p in inflation.compare(summary, "knn_acc")}
    assert pairs[("none", "adainf")]["exceeds"] and pairs[("none", "adainf")]["delta"] == pytest.approx(-0.05)
    assert not pairs[("adainf", "auto")]["exceeds"]  # 0.013 apart, spread 0.01 + 0.03
