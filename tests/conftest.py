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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run next to DALI's own threads on small CPU machines (CI has 2 cores): one intra-op thread for
    torch avoids oversubscription, which made model tests many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
