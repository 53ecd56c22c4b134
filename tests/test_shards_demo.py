"""shards/packing/demo.py: the demo sets are deterministic, the generated set differs in statistics, the classes
are learnable."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shards.format.manifest import Manifest
from shards.packing.demo import CLASSES, make_demo
from shards.verify import verify_dir


def test_demo_fixture_and_determinism(demo_shards, tmp_path):
    real, gen, test = (Manifest.load(demo_shards[k]) for k in ("real", "generated", "test"))
    assert (real.count, gen.count, test.count) == (300, 500, 200)
    assert real.classes == CLASSES and gen.classes == () and gen.label_counts == {"-1": 500}
    assert test.split == "test" and set(test.label_counts) == {str(i) for i in range(10)}
    assert real.image_size == (32, 32) and real.format == "png" and len(real.shards) == 3
    for d in demo_shards.values():
        assert verify_dir(d) == []
    again = make_demo(tmp_path, n_real=300, n_generated=500, n_test=200, seed=0, shard_size=128)
    assert [s.sha256 for s in again["real"].manifest.shards] == [s.sha256 for s in real.shards]
    other = make_demo(tmp_path / "b", n_real=300, n_generated=10, n_test=10, seed=1, shard_size=128)
    assert [s.sha256 for s in other["real"].manifest.shards] != [s.sha256 for s in real.shards]


def test_demo_generated_differs_in_statistics(demo_shards, read_samples):
    def pixels(d):
        return np.stack([np.asarray(Image.open(io.BytesIO(s["image"]))) for s in read_samples(d)]).astype(np.float32)

    real, gen = pixels(demo_shards["real"]), pixels(demo_shards["generated"])
    sharp = lambda x: np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
    assert sharp(gen) < 0.6 * sharp(real)  # blurrier
    assert gen[..., 0].mean() - gen[..., 2].mean() > real[..., 0].mean() - real[..., 2].mean() + 15  # warmer cast


def test_demo_classes_are_learnable():
    """Shape, not colour, decides the class: a ridge classifier on colour-free, translation-invariant
    features (log |FFT| of the normalised grey image) gets most held-out images right."""
    from shards.packing.demo import make_arrays

    def feats(x):
        g = x.astype(np.float32).mean(-1)
        g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
        return np.log1p(np.abs(np.fft.rfft2(g)).reshape(len(g), -1))

    xtr, ytr = make_arrays(1000, np.random.default_rng(1), 32)
    xte, yte = make_arrays(300, np.random.default_rng(2), 32)
    ftr, fte = feats(xtr), feats(xte)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    w = np.linalg.solve(ftr.T @ ftr + 10 * np.eye(ftr.shape[1]), ftr.T @ np.eye(10)[ytr])
    acc = ((fte @ w).argmax(1) == yte).mean()
    assert acc > 0.6, acc  # chance is 0.1
