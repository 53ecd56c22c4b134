import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.model import measure_model_ceiling
from models import build_method


def test_measure_model_ceiling_reports_consistent_figures():
    torch.manual_seed(0)
    method = build_method("simclr", proj_hidden_dim=32, proj_output_dim=16)
    with FlopCounterMode(display=False) as fwd:
        method.backbone(torch.randn(4, 3, 8, 8))
    row = measure_model_ceiling(
        method, batch_size=4, device="cpu", warmup=1, min_batches=3, min_seconds=0.0, image_size=8, peak_flops=1e12
    )
    assert row["backend"] == "model-ceiling" and row["method"] == "simclr"
    # two views, forward + backward (about 3x forward): well above one forward of one view
    assert row["flops_per_step"] > 2 * 2 * fwd.get_total_flops()
    assert row["samples_per_s"] == pytest.approx(4 * row["steps_per_s"])
    assert row["mfu"] == pytest.approx(row["flops_per_step"] * row["steps_per_s"] / 1e12)
    assert (row["warmup_batches"], row["timed_batches"], row["timed_samples"]) == (1, 3, 12)
    assert row["peak_pss_mb"] > 0 and row["steps_per_s"] == pytest.approx(3 / row["seconds"])
