"""Shared BatchNorm statistics across DDP ranks on CPU (gloo): two processes, different data per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from models.syncbn import CpuSyncBatchNorm, convert_sync_batchnorm

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
from models.syncbn import convert_sync_batchnorm
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                             nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8)), cuda=False)
ddp = nn.parallel.DistributedDataParallel(model)
g = torch.Generator().manual_seed(100 + rank)
x = torch.randn(5, 3, 8, 8, generator=g) * (1 + rank) + 3 * rank   # each rank its own distribution
y = ddp(x)
y.pow(2).sum().backward()
# the reference: one process, plain BatchNorm over both ranks' samples
xs = [torch.zeros_like(x) for _ in range(world)]
dist.all_gather(xs, x)
torch.manual_seed(0)
ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8))
yr = ref(torch.cat(xs))
yr.pow(2).sum().backward()
ok_out = torch.allclose(y, yr[rank * 5:(rank + 1) * 5], atol=1e-5)
ok_stats = all(torch.allclose(getattr(model[i], k), getattr(ref[i], k), atol=1e-5)
               for i in (1, 4) for k in ("running_mean", "running_var"))
# DDP averages gradients over ranks; the reference summed the whole batch's loss: a factor of world
ok_grad = torch.allclose(model[0].weight.grad * world, ref[0].weight.grad, rtol=1e-4, atol=1e-5)
print(f"rank {rank} out {ok_out} stats {ok_stats} grad {ok_grad}")
dist.destroy_process_group()  # gloo's threads left to the interpreter's exit can abort it ("terminate called ...")
sys.exit(0 if ok_out and ok_stats and ok_grad else 1)
"""


def test_statistics_and_gradients_are_those_of_the_union_of_batches(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (
        "rank 0 out True stats True grad True" in proc.stdout and "rank 1 out True stats True grad True" in proc.stdout
    )


def test_conversion_keeps_parameters_and_is_plain_batchnorm_outside_ddp():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), bn)
    converted = convert_sync_batchnorm(model, cuda=False)
    assert isinstance(converted[1], CpuSyncBatchNorm) and converted[1].weight is bn.weight
    x = torch.randn(4, 3, 5, 5)
    ref = torch.nn.functional.batch_norm(converted[0](x), None, None, bn.weight, bn.bias, training=True)
    assert torch.allclose(converted(x), ref, atol=1e-6)  # no process group: a plain BatchNorm
