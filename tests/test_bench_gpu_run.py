"""bench/gpu_run.sh: the dry run lists every step and its two calls cover them; the `data` step on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from shards.format.manifest import Manifest

GPU_RUN = Path(__file__).resolve().parents[1] / "bench" / "gpu_run.sh"


def _dry_run(tmp_path, *args):
    import subprocess

    out = subprocess.run(
        ["bash", str(GPU_RUN), "--dry-run", "--work", str(tmp_path), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]


def _bench_names(cmds):
    return [c.split("-m bench ")[1].split()[0] for c in cmds if "-m bench " in c]


def test_gpu_run_dry_run_lists_every_step_and_the_two_calls_cover_them(tmp_path):
    cmds = _dry_run(tmp_path)
    assert sum("-m shards pack" in c for c in cmds) == 3 and any("-m pytest -m gpu" in c for c in cmds)
    bench = [c for c in cmds if "-m bench " in c]
    assert _bench_names(cmds) == ["loader", "model", "end-to-end", "end-to-end", "scale", "formats"]
    assert all("--device cuda" in c for c in bench)
    assert all(f"{tmp_path}/shards/cifar10-train:10" in c and "edm:1" in c for c in bench if " model " not in c)
    assert "--colour eager,compiled" in bench[0] and "--sweep 64,128,256,1024" in bench[0]
    (train,) = [c for c in cmds if "train.py" in c]
    assert "--backbone resnet18 " in train and "--batch-size 512 " in train and "--steps 400 " in train
    one, two = _dry_run(tmp_path, "--call", "1"), _dry_run(tmp_path, "--call", "2")
    assert _bench_names(one) == ["loader", "end-to-end", "end-to-end"] and any("pytest -m gpu" in c for c in one)
    assert _bench_names(two) == ["model", "scale", "formats"] and any("train.py" in c for c in two)
    assert sorted(_bench_names(one) + _bench_names(two)) == sorted(_bench_names(cmds))
    assert all(sum("-m shards pack" in c for c in call) == 3 for call in (one, two))  # a fresh machine packs again


def test_gpu_run_data_step_on_the_cpu(tmp_path):
    """The `data` step on small archives laid out like the shared ones, on the CPU; the results archive is left, and
    a second run keeps the sets it packed."""
    import subprocess
    import sys
    import tarfile

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar10-jpg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            for i in range(12):
                f = tmp_path / f"{split}{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f, quality=75)
                tar.add(f, f"cifar10/{split}/{'cat' if i % 2 else 'dog'}/{i:04d}.jpg")
    with tarfile.open(data / "edm-cifar10-50k-png.tar.gz", "w:gz") as tar:
        for i in range(10):
            f = tmp_path / f"g{i}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f)
            tar.add(f, f"edm-cifar10/fid-tmp/000000/{i:06d}.png")
    env = {**os.environ, "PYTHON": sys.executable}
    work = tmp_path / "work"
    args = ["bash", str(GPU_RUN), "--device", "cpu", "--quick", "--data", str(data), "--bundle", str(tmp_path / "none")]
    args += ["--limit", "8", "--work", str(work), "--out", str(tmp_path / "out"), "data"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = {d: Manifest.load(work / "shards" / d).count for d in ("cifar10-train", "cifar10-test", "edm")}
    assert counts == {"cifar10-train": 8, "cifar10-test": 8, "edm": 8}
    assert Manifest.load(work / "shards" / "cifar10-train").format == "jpg"
    assert Manifest.load(work / "shards" / "edm").kind == "generated"
    assert (tmp_path / "out" / "gpu-run.tar.gz").is_file() and "all steps passed" in out.stdout
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "shards pack" not in again.stdout
