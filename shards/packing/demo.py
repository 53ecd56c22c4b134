"""A built-in demo data set that needs no download: procedural 32×32 images in 10 classes.

Classes are shapes and textures (disk, square, triangle, ring, plus, x, diamond, horizontal stripes,
vertical stripes, checkerboard) with random foreground/background colours, positions, scales and
pixel noise, so a small convnet learns them but not from one pixel. The "generated" set imitates a
generator's output: same classes without labels, blurred and with shifted colours. Everything comes
from one seed, and is packed by the same ``shards.packing.pack`` path users run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards.packing.pack import PackConfig, pack
from shards.packing.sources import ArraySource

CLASSES = ("disk", "square", "triangle", "ring", "plus", "x", "diamond", "hstripes", "vstripes", "checker")
SIZES = {"small": (300, 500, 200), "default": (2000, 4000, 1000)}  # (real, generated, test)


def render(labels: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Images (n, size, size, 3) uint8 of the given classes."""
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.18, 0.32) * size
        dx, dy = (xx - cx) / r, (yy - cy) / r
        period = rng.uniform(3.0, 6.0) * size / 32
        phase = rng.uniform(0, period)
        mask = _shape_mask(int(c), dx, dy, xx, yy, period, phase)
        fg, bg = _colour_pair(rng)
        img = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _shape_mask(c: int, dx, dy, xx, yy, period: float, phase: float) -> np.ndarray:
    """The foreground of class ``c``: a shape in units of its radius (``dx``, ``dy``) or a texture."""
    if c == 0:
        return dx**2 + dy**2 <= 1
    if c == 1:
        return np.maximum(abs(dx), abs(dy)) <= 0.8
    if c == 2:
        return (dy <= 0.8) & (dy >= 2 * abs(dx) - 1.0)
    if c == 3:
        return (dx**2 + dy**2 <= 1) & (dx**2 + dy**2 >= 0.4)
    if c == 4:
        return (np.minimum(abs(dx), abs(dy)) <= 0.25) & (np.maximum(abs(dx), abs(dy)) <= 1)
    if c == 5:
        return (np.minimum(abs(dx - dy), abs(dx + dy)) <= 0.35) & (np.maximum(abs(dx), abs(dy)) <= 1)
    if c == 6:
        return abs(dx) + abs(dy) <= 1
    if c == 7:
        return ((yy + phase) % period) < period / 2
    if c == 8:
        return ((xx + phase) % period) < period / 2
    return (((xx + phase) // (period / 1.5) + (yy + phase) // (period / 1.5)) % 2) == 0


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if np.abs(fg - bg).sum() > 180:
            return fg, bg


def degrade(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What makes the 'generated' set look generated: blur, a colour cast and lower contrast."""
    x = images.astype(np.float32)
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16  # binomial ≈ Gaussian σ≈1
    n = x.shape[1]
    p = np.pad(x, ((0, 0), (2, 2), (0, 0), (0, 0)), mode="edge")
    x = sum(w * p[:, j : j + n] for j, w in enumerate(k))
    p = np.pad(x, ((0, 0), (0, 0), (2, 2), (0, 0)), mode="edge")
    x = sum(w * p[:, :, j : j + n] for j, w in enumerate(k))
    cast = rng.normal([18, -6, -14], 6, (len(x), 1, 1, 3)).astype(np.float32)
    x = 0.8 * (x - 128) + 128 + cast
    return np.clip(x, 0, 255).round().astype(np.uint8)


def make_arrays(n: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % len(CLASSES)  # balanced
    rng.shuffle(labels)
    return render(labels, rng, size), labels.astype(np.int64)


def make_demo(
    out: str | Path,
    n_real: int = 2000,
    n_generated: int = 4000,
    n_test: int = 1000,
    seed: int = 0,
    image_size: int = 32,
    format: str = "png",
    shard_size: int = 1000,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    command: str = "",
) -> dict:
    """Write OUT/real, OUT/generated, OUT/test; returns {name: PackResult}. Deterministic in ``seed``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    sets = {}
    for name, n, kind, split in (
        ("real", n_real, "real", "train"),
        ("generated", n_generated, "generated", "train"),
        ("test", n_test, "real", "test"),
    ):
        images, labels = make_arrays(n, np.random.default_rng(rng.integers(2**63)), image_size)
        if kind == "generated":
            images = degrade(images, np.random.default_rng(rng.integers(2**63)))
        detected = f"demo generator ({name}: {n} images {image_size}×{image_size}, seed {seed})"
        src = ArraySource(detected, labels, CLASSES, images=images, origin_prefix=f"demo-{name}")
        cfg = PackConfig(
            out=out / name,
            name=f"demo-{name}",
            kind=kind,
            split=split,
            format=format,
            shard_size=shard_size,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
            command=command or f"shards.packing.demo.make_demo(seed={seed})",
        )
        sets[name] = pack(src, cfg)
    return sets
