"""`python -m bench pack` (bench/pack.py) on real files: JPEG passes through, each input's row in the JSON."""

from __future__ import annotations

import numpy as np
from benchruns import invoke_ok, result_docs
from PIL import Image


def test_pack_bench_on_real_files_passes_jpeg_through(tmp_path):
    from bench.pack import main

    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(24):
        d = src / ("cat" if i % 2 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    invoke_ok(main, ["--source", str(src), "--quick", "--workers", "1", "--out-dir", str(tmp_path / "o")])
    (doc,) = result_docs(tmp_path / "o")
    rows = {r["backend"]: r for r in doc["results"]}
    assert doc["quick"] is True and doc["settings"]["n"] == 24
    assert rows["imagefolder->jpg"]["passthrough"] == 24 and rows["npz->jpg"]["encoded"] == 24
    for r in rows.values():
        assert r["images_per_pack"] == 24 and r["timed_batches"] >= 1 and r["seconds"] >= 1.0 and r["peak_pss_mb"] > 0
