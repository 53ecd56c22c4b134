"""bench/model.py: the model ceiling's figures, eager and compiled rows side by side; on a GPU, bf16 and GPU memory."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.harness import Timing
from bench.model import measure_model_ceiling
from models import build_method

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_measure_model_ceiling_reports_consistent_figures():
    torch.manual_seed(0)
    method = build_method("simclr", proj_hidden_dim=32, proj_output_dim=16)
    with FlopCounterMode(display=False) as fwd:
        method.backbone(torch.randn(4, 3, 8, 8))
    row = measure_model_ceiling(method, 4, "cpu", timing=Timing(1, 3, 0.0), image_size=8, peak_flops=1e12)
    assert row["backend"] == "model-ceiling" and row["method"] == "simclr"
    # two views, forward + backward (about 3x forward): well above one forward of one view
    assert row["flops_per_step"] > 2 * 2 * fwd.get_total_flops()
    assert row["samples_per_s"] == pytest.approx(4 * row["steps_per_s"])
    assert row["mfu"] == pytest.approx(row["flops_per_step"] * row["steps_per_s"] / 1e12)
    assert (row["warmup_batches"], row["timed_batches"], row["timed_samples"]) == (4, 3, 12)  # warm-up >= 4
    assert row["variant"] == "eager" and row["compile"] == "off" and row["compile_s"] is None
    assert row["peak_pss_mb"] > 0 and row["steps_per_s"] == pytest.approx(3 / row["seconds"])


@pytest.fixture
def eager_backend(monkeypatch):
    """``torch.compile`` with dynamo's ``eager`` backend; afterwards what it compiled is dropped, so that a later
    test's ``torch.compile`` of the same functions compiles with inductor instead of reusing it."""
    import functools

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    yield
    torch._dynamo.reset()


def test_bench_model_rows_eager_and_compiled_side_by_side(tmp_path, eager_backend):
    """``python -m bench model`` with --compile off,on: one row each, the compiled one with its compile time, the
    same FLOPs and a speedup over the eager row. Dynamo's ``eager`` backend stands in for inductor here (the rows'
    bookkeeping is under test; what inductor computes is tested in test_training_compiling.py, what it gains in
    the JSON)."""
    import json

    from click.testing import CliRunner

    from bench.model import main

    args = ["--methods", "simclr", "--backbone", "convnet", "--batch-size", "16", "--image-size", "8"]
    args += ["--compile", "off,on", "--warmup", "4", "--min-steps", "2", "--min-seconds", "0", "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--out-dir", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*-model.json")
    doc = json.loads(path.read_text())
    eager, compiled = doc["results"]
    assert [r["variant"] for r in doc["results"]] == ["eager", "compiled"] and doc["settings"]["compile"] == [
        "off",
        "on",
    ]
    assert eager["method"] == compiled["method"] == "simclr" and eager["flops_per_step"] == compiled["flops_per_step"]
    assert eager["speedup"] == 1.0 and compiled["speedup"] == pytest.approx(
        compiled["samples_per_s"] / eager["samples_per_s"], rel=1e-2
    )
    assert compiled["compile_s"] is not None and compiled["first_step_s"] > 0 and eager["compile_s"] is None
    assert compiled["timed_batches"] == 2 and compiled["warmup_batches"] == 4 and doc["quick"]
    assert doc["settings"]["inductor_cache_dir"] and 0 < compiled["mfu"] < 1
    result = CliRunner().invoke(main, ["--compile", "cudagraphs", "--device", "cpu"])
    assert result.exit_code != 0 and "needs a GPU" in result.output


@pytest.mark.gpu
@needs_cuda
def test_model_ceiling_on_the_gpu_uses_bf16_and_reports_gpu_memory():
    from bench.harness import Timing
    from bench.model import measure_model_ceiling
    from models import build_method

    row = measure_model_ceiling(build_method("simclr"), 64, "cuda", timing=Timing(1, 3, 0.0))
    assert row["timed_batches"] == 3 and row["peak_gpu_mb"] > 0 and 0 < row["mfu"] < 1 and row["precision"] == "bf16"
