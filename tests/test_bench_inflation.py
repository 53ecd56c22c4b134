"""Smoke test of `python -m bench.inflation`: tiny demo data, two modes, a few convnet steps on the CPU.

Checks the JSON shape, that each mode trained with the weights and augmentation the policy gives, the
curve, the random-init rows and the chart; no timing and no accuracy level is asserted.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench import inflation, report
from loaders.policy import PRESET_KNOBS


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from shards.demo import make_demo

    root = tmp_path_factory.mktemp("inflation-demo")
    make_demo(root, n_real=96, n_generated=64, n_test=40, shard_size=64, image_size=16)
    return root


def test_study_on_demo_data(tiny_demo, tmp_path):
    out = tmp_path / "results"
    args = ["--demo-dir", str(tiny_demo), "--modes", "none,adainf", "--backbone", "convnet", "--steps", "4",
            "--batch-size", "16", "--warmup-steps", "0", "--eval-every", "2", "--knn-train-limit", "0",
            "--eval-limit", "0", "--probe-epochs", "2", "--image-size", "16", "--num-threads", "1",
            "--device", "cpu", "--work-dir", str(tmp_path / "work"), "--out-dir", str(out)]
    result = CliRunner().invoke(inflation.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output

    [path] = out.glob("*-inflation.json")
    doc = json.loads(path.read_text())
    assert report.check_doc(doc) == []
    assert doc["bench"] == "inflation" and doc["settings"]["steps"] == 4 and doc["settings"]["modes"] == ["none", "adainf"]
    rows = doc["results"]
    assert [(r["setting"], r["mode"]) for r in rows] == [("demo", "random-init"), ("demo", "none"), ("demo", "adainf")]
    assert all(r["variant"] == "demo" for r in rows)  # bench.report's row label tells the settings apart
    base, none, adainf = rows

    # the policy, not the study, chose the weights and the augmentation
    assert none["weights"] == {"real": 1.0, "generated": 0.0} and none["effective_size"] == 96
    assert adainf["weights"] == {"real": 10.0, "generated": 1.0} and adainf["effective_size"] == 96 + 64
    assert (none["aug_preset"], none["crop_min_scale"], none["jitter_strength"], none["jitter_p"]) == \
        ("simclr", *PRESET_KNOBS["simclr"].values())
    assert (adainf["aug_preset"], adainf["crop_min_scale"], adainf["jitter_strength"], adainf["jitter_p"]) == \
        ("simclr-adainf", *PRESET_KNOBS["simclr-adainf"].values())
    assert none["epoch_size"] == 96 and adainf["epoch_size"] == 10 * 96 + 64

    for r in (none, adainf):
        assert r["backend"] == f"train-{r['mode']}" and r["steps"] == 4 and r["batch_size"] == 16 and r["seed"] == 0
        assert r["samples_per_s"] > 0 and 0.0 <= r["data_wait_fraction"] <= 1.0
        assert r["eval_samples"] == 40 and r["knn_train_samples"] == 96
        for key in ("knn_acc", "linear_probe_acc", "online_probe_acc"):
            assert 0.0 <= r[key] <= 1.0
        # evaluations at steps 2 and 4 (the final one, with the offline linear probe)
        assert [p["step"] for p in r["curve"]] == [2, 4]
        assert r["curve"][-1]["knn_acc"] == r["knn_acc"]
        assert r["curve"][-1]["linear_probe_acc"] == r["linear_probe_acc"]
    assert base["backend"] == "random-init" and base["samples_per_s"] is None and base["steps"] == 0
    assert 0.0 <= base["knn_acc"] <= 1.0 and base["eval_samples"] == 40

    host = path.name.split("-")[0]
    png = out / f"inflation-{host}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / f"inflation-{host}.md").read_text()
    assert "| demo | adainf | 10:1 | 0.2 | 0.5, 0.4 | 4 |" in table
    assert (tmp_path / "work" / "demo-adainf" / "metrics.jsonl").is_file()  # --work-dir keeps the runs


def test_curve_and_throughput_from_metrics():
    records = [{"kind": "train", "step": 50, "samples_per_s": 100.0, "data_wait": 0.5},
               {"kind": "eval", "step": 50, "knn_acc": 0.3, "online_probe_acc": 0.2},
               {"kind": "train", "step": 100, "samples_per_s": 300.0, "data_wait": 0.0},
               {"kind": "final", "step": 100, "knn_acc": 0.4, "online_probe_acc": 0.35, "linear_probe_acc": 0.5}]
    # 50*128 samples at 100/s (64 s, half waiting) + 50*128 at 300/s (21.33 s): 12800 / 85.33 s
    sps, wait = inflation.throughput(records, 128)
    assert sps == pytest.approx(150.0) and wait == pytest.approx(32 / (64 + 64 / 3), abs=1e-4)
    assert inflation.curve(records) == [
        {"step": 50, "knn_acc": 0.3, "online_probe_acc": 0.2},
        {"step": 100, "knn_acc": 0.4, "online_probe_acc": 0.35, "linear_probe_acc": 0.5}]


def test_eval_limit_on_class_sorted_set_is_refused(tmp_path):
    """A limit that would score only the first classes of a class-ordered test set is one clear error."""
    import numpy as np

    from shards.writer import ShardSetWriter

    w = ShardSetWriter(tmp_path / "sorted", "sorted", kind="real", format="raw", split="test", shard_size=8,
                       classes=("a", "b", "c"))
    for i, label in enumerate([0] * 4 + [1] * 4 + [2] * 4):
        w.add(f"{i:04d}", np.zeros((4, 4, 3), np.uint8).tobytes(), label, f"x/{i}", (4, 4))
    w.close()
    inflation.check_limit(str(tmp_path / "sorted"), 0, "--eval-limit")
    inflation.check_limit(str(tmp_path / "sorted"), 12, "--eval-limit")
    assert inflation._labels_prefix(str(tmp_path / "sorted"), 9) == {0, 1, 2}
    with pytest.raises(Exception, match=r"--eval-limit 6: the first 6 images .* only classes \[0, 1\]"):
        inflation.check_limit(str(tmp_path / "sorted"), 6, "--eval-limit")
