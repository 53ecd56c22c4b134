"""The GPU pipeline against the tested CPU pipeline: every random parameter is drawn on the host, so for the same
batch the two must agree op by op within interpolation tolerance (the DALI crop) and float rounding (the colour
stage, compiled with Triton on the GPU); exactness and resume hold on the GPU too.

Skipped without CUDA (``@pytest.mark.gpu``; ``pytest -m gpu`` runs only these).
"""

import collections

import numpy as np
import pytest
import torch

from loaders.batch.loader import EvalLoader, TrainLoader
from loaders.batch.params import augment_rng, sample_view_params
from loaders.recipe.augment import ViewAug, preset
from loaders.recipe.mixture import parse_shards_args

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LEVEL = 1 / 255 / 0.2435  # one grey level in normalised units (the smallest CIFAR std)


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


def textured(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float64)
    up = np.kron(smooth, np.ones((1, 4, 4, 1)))  # blocks, so interpolation differences stay small but visible
    return np.clip(up + rng.normal(0, 8, up.shape), 0, 255).astype(np.uint8)


OPS = {
    "crop-resize": dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3)),
    "flip": dict(flip_p=0.5),
    "jitter": dict(jitter_p=1.0, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),
    "gray": dict(gray_p=0.5),
    "blur": dict(blur_p=0.5),
    "solarize": dict(solarize_p=0.5),
    "normalise": dict(),
}


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("op", list(OPS))
def test_each_op_on_the_gpu_matches_the_cpu(op, compile, plain_view, run_augment):
    """The DALI crop on the GPU and the colour stage on the GPU (eager, and compiled as training runs it)
    against the CPU pipeline and the eager CPU stage (which tests/test_loaders_colour.py holds to torchvision/PIL)."""
    n = 64
    images = textured(n)
    view = ViewAug(**{**plain_view.__dict__, **OPS[op]})
    params = sample_view_params(augment_rng(0, 0, 7), view, np.full(n, 32), np.full(n, 32))
    [cpu] = run_augment(images, [view], [params], "cpu")
    [gpu] = run_augment(images, [view], [params], "gpu", compile=compile)
    assert cpu.shape == gpu.shape == (n, 3, 32, 32)
    diff = np.abs(cpu - gpu)
    assert diff.mean() < 0.5 * LEVEL, (op, diff.mean() / LEVEL)
    assert diff.max() < (4 if op in ("crop-resize", "jitter", "blur") else 1.01) * LEVEL, (op, diff.max() / LEVEL)


def batches(loader, n):
    it = loader.batches()
    out = [next(it) for _ in range(n)]
    it.close()
    return out


@pytest.mark.parametrize("shards", [("real", "gen", "raw"), ("real",), ("raw",)])
def test_gpu_and_cpu_loaders_give_the_same_batches(data, shards):
    """Mixed (JPEG + PNG + raw: one decoder, raw samples as PPM), JPEG only (nvJPEG with libjpeg-turbo's chroma
    upsampling) and raw only (no decoder); the GPU loader against the CPU one on the CPU (the tested path), IDCT
    and interpolation rounding differences allowed."""
    m = parse_shards_args([f"{data[k]}:1" for k in shards])
    aug = preset("simclr")
    gpu = batches(TrainLoader(m, aug, 16, seed=4, device="cuda", loader_device="gpu"), 4)
    cpu = batches(TrainLoader(m, aug, 16, seed=4, device="cpu", loader_device="cpu"), 4)
    for g, c in zip(gpu, cpu):
        assert (g.epoch, g.step) == (c.epoch, c.step)
        assert torch.equal(g.labels, c.labels) and torch.equal(g.source, c.source) and torch.equal(g.index, c.index)
        for u, v in zip(g.views, c.views):
            assert u.device.type == "cuda" and u.shape == v.shape
            d = (u.cpu() - v).abs()
            assert d.mean().item() < 1.5 * LEVEL and torch.quantile(d.flatten().float(), 0.99).item() < 12 * LEVEL


def test_cpu_pipeline_feeds_the_colour_stage_on_the_gpu(data):
    """--loader-device cpu with a CUDA model: uint8 crops go to the GPU and the colour stage runs there; the views
    equal the all-CPU loader's within float rounding (fp32), and arrive as the model asks (bf16, channels-last)."""
    m = parse_shards_args([f"{data['real']}:2", f"{data['gen']}:1"])
    aug = preset("byol")
    on_cpu = batches(TrainLoader(m, aug, 12, seed=1, device="cpu"), 5)
    on_gpu = batches(TrainLoader(m, aug, 12, seed=1, device="cuda", loader_device="cpu"), 5)
    bf16 = batches(
        TrainLoader(m, aug, 12, seed=1, device="cuda", loader_device="cpu", dtype=torch.bfloat16, channels_last=True), 5
    )
    for g, c, h in zip(on_gpu, on_cpu, bf16):
        assert g.labels.device.type == "cuda" and torch.equal(g.index.cpu(), c.index)
        for u, v, w in zip(g.views, c.views, h.views):
            assert u.device.type == "cuda" and w.dtype == torch.bfloat16
            assert w.is_contiguous(memory_format=torch.channels_last)
            d = (u.cpu() - v).abs()
            assert d.max().item() < 1.01 * LEVEL and (d > 1e-4).float().mean().item() < 1e-3


def test_exact_multiplicities_on_the_gpu(data):
    m = parse_shards_args([f"{data['real']}:3", f"{data['gen']}:1", f"{data['raw']}:2"])
    loader = TrainLoader(m, preset("simclr"), 16, device="cuda", loader_device="gpu", drop_last=False)
    counts = collections.Counter()
    for b in loader.epoch(0):
        counts.update(loader.keys_for(b))
    assert sum(counts.values()) == loader.samples_per_epoch == 90 + 45 + 40
    assert all(counts[f"real/{i:06d}"] == 3 for i in range(30)) and all(counts[f"gen/{i:06d}"] == 1 for i in range(45))
    assert all(counts[f"rawgen/{i:06d}"] == 2 for i in range(20))


@pytest.mark.parametrize("state", [(0, 4), (1, 0), (0, 10)])
def test_resume_on_the_gpu_is_bitwise(data, state):
    m = parse_shards_args([f"{data['real']}:2", f"{data['gen']}:1", f"{data['raw']}:1"])
    aug = preset("simclr")
    full = batches(TrainLoader(m, aug, 12, seed=5, device="cuda", loader_device="gpu"), 16)
    loader = TrainLoader(m, aug, 12, seed=5, device="cuda", loader_device="gpu")
    loader.load_state_dict({"epoch": state[0], "step": state[1]})
    start = state[0] * 10 + state[1]
    for a, b in zip(batches(loader, 16 - start), full[start:]):
        assert (a.epoch, a.step) == (b.epoch, b.step) and torch.equal(a.index, b.index)
        assert all(torch.equal(u, v) for u, v in zip(a.views, b.views))


def test_gpu_eval_loader_matches_the_cpu_one(data):
    gpu = [(x, y) for x, y in EvalLoader(data["test"], 8, device="cuda", loader_device="gpu")]
    cpu = [(x, y) for x, y in EvalLoader(data["test"], 8, device="cpu")]
    assert len(gpu) == len(cpu) == 3
    for (xg, yg), (xc, yc) in zip(gpu, cpu):
        assert torch.equal(yg.cpu(), yc) and (xg.cpu() - xc).abs().max().item() < 1.01 * LEVEL
