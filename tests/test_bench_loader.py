"""bench/loader.py: the baselines (webdataset, reference) read the weighted mixture; the command's rows per backend."""

from __future__ import annotations

import numpy as np
import pytest
from benchruns import invoke_ok, result_docs


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")


def test_webdataset_baseline_batches_stacked_views_of_the_weighted_mixture(bench_demo):
    """Batched in the workers, each view one (B, 3, H, W) tensor, the shard list weighted like the plan."""
    from bench.loader import webdataset_loader, webdataset_urls
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    mixture = parse_shards_args([f"{bench_demo / 'real'}:10", f"{bench_demo / 'generated'}:1"])
    urls = webdataset_urls(mixture)
    assert len(urls) == 10 * len(mixture.sources[0].manifest.shards) + len(mixture.sources[1].manifest.shards)
    v1, v2, labels = next(iter(webdataset_loader(mixture, preset("simclr"), 8, 0, "cpu", rebatch=16)))
    assert v1.shape == v2.shape == (8, 3, 32, 32) and len(labels) == 8
    assert set(np.asarray(labels).tolist()) <= set(range(-1, 10))


def test_reference_baseline_reads_the_exact_weighted_epoch(bench_demo):
    from bench.loader import reference_loader
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    mixture = parse_shards_args([f"{bench_demo / 'real'}:3", f"{bench_demo / 'generated'}:1"])
    dl, decoded = reference_loader(mixture, preset("simclr"), 16, 0, "cpu")
    assert decoded == 128 and not dl.pin_memory
    order = np.array(list(dl.sampler))
    assert np.array_equal(np.bincount(order, minlength=128), [3] * 64 + [1] * 64)
    views, labels = next(iter(dl))
    assert [v.shape for v in views] == [(16, 3, 32, 32)] * 2 and labels.shape == (16,)


def test_loader_cli_same_workers_and_memory_for_every_backend(bench_demo, tmp_path):
    from bench.loader import main

    args = ["--shards", f"{bench_demo / 'real'}:10", "--shards", f"{bench_demo / 'generated'}:1", "--batch-size", "16"]
    args += ["--workers", "1", "--warmup", "1", "--min-batches", "2", "--min-seconds", "0", "--no-isolate"]
    args += ["--backends", "dali-cpu,reference,webdataset", "--colour", "eager,compiled", "--sweep", "8"]
    invoke_ok(main, [*args, "--device", "cpu", "--out-dir", str(tmp_path)])
    (doc,) = result_docs(tmp_path)
    assert doc["quick"] is True and doc["settings"]["workers"] == 1 and doc["settings"]["preset"] == "symmetric_adainf"
    plan, *rows = doc["results"]
    assert plan["backend"] == "plan_epoch" and plan["planned_samples"] == 1_500_000 and plan["timed_batches"] == 2
    # batch 16 eager and compiled, the sweep's 8 with train.py's colour stage on this device (eager), the peers at 16
    assert [r["backend"] for r in rows] == ["dali-cpu", "dali-cpu-compiled", "dali-cpu", "reference", "webdataset"]
    assert [r["batch_size"] for r in rows] == [16, 16, 8, 16, 16]
    assert [r["colour"] for r in rows] == ["eager", "compiled", "eager", None, None]
    assert [r.get("colour_compiled") for r in rows[:3]] == [False, True, False]
    for r in rows:
        assert r["workers"] == 1 and r["timed_batches"] == 2 and r["timed_samples"] == 2 * r["batch_size"]
        assert r["peak_pss_mb"] > 0 and r["device"] == "cpu"
    assert all(r["dali_operators"] == 13 and r["loader_device"] == "cpu" for r in rows[:3])  # decode + two crops
    assert rows[3]["vs_reference"] == 1.0


def test_loader_says_why_the_gpu_row_is_skipped_on_a_cpu(tmp_path):
    import torch

    from bench.loader import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = invoke_ok(
        main, ["--backends", "dali-gpu", "--device", "cpu", "--min-batches", "2", "--out-dir", str(tmp_path)]
    )
    assert "dali-gpu: skipped (--device cpu: no GPU here" in result.output
    (doc,) = result_docs(tmp_path)
    (row,) = [r for r in doc["results"] if r["backend"] == "dali-gpu"]
    assert row["samples_per_s"] is None and "no GPU here" in row["skipped"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["dali-gpu", "dali-cpu", "reference", "webdataset"])
def test_loader_backends_on_the_gpu(bench_demo, backend):
    from bench.harness import Timing, time_loader
    from bench.loader import time_baseline

    shards, timing = [f"{bench_demo / 'real'}:10", f"{bench_demo / 'generated'}:1"], Timing(1, 3, 0.0)
    if backend.startswith("dali"):
        row = time_loader(shards, "simclr", 16, timing=timing, device="cuda", loader_device=backend[5:])
        assert row["loader_device"] == backend[5:]
    else:
        row = time_baseline(backend, shards, "simclr", 16, 2, "cuda", timing)
    assert row["timed_batches"] == 3 and row["timed_samples"] == 48 and row["samples_per_s"] > 0
