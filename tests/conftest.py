"""Shared fixtures for every package's tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """Small demo shard sets made by ``shards.demo.make_demo`` (PNG 32×32, 10 classes, seed 0):
    {"real": Path (300 labelled, split train, 3 shards), "generated": Path (500, label -1, 4 shards),
    "test": Path (200 labelled, split test, 2 shards)}; all three share one parent folder."""
    from shards.demo import make_demo

    root = tmp_path_factory.mktemp("demo-shards")
    make_demo(root, n_real=300, n_generated=500, n_test=200, seed=0, shard_size=128, workers=1)
    return {name: root / name for name in ("real", "generated", "test")}
