"""The losses' and SyncBatchNorm's cross-rank collectives (issue 27, item 5): torch's functional collectives,
no FutureWarning under torchrun, and the very gradients the deprecated ``torch.distributed.nn`` ones gave.
Two gloo processes on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, types, warnings
warnings.simplefilter("error", FutureWarning)  # a deprecated collective fails the run
import torch, torch.distributed as dist, torch.nn as nn
import models.losses as losses
from models.syncbn import convert_sync_batchnorm
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
n = 4
full1 = torch.randn(world * n, 8, generator=torch.Generator().manual_seed(1))
full2 = torch.randn(world * n, 8, generator=torch.Generator().manual_seed(2))
mine = slice(rank * n, (rank + 1) * n)


def grads(loss):
    z1, z2 = full1[mine].clone().requires_grad_(), full2[mine].clone().requires_grad_()
    loss(z1, z2).backward()
    return torch.cat([z1.grad, z2.grad])


ok = {"gather": torch.equal(losses.gather(full1[mine].clone()), full1)}  # every rank's rows in rank order
new = {"nt_xent": grads(lambda a, b: losses.nt_xent(a, b, 0.5)), "barlow": grads(losses.barlow_loss)}
# the same losses through the deprecated torch.distributed.nn collectives (warnings ignored only here)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import torch.distributed.nn
    losses.gather = lambda x: torch.cat(torch.distributed.nn.all_gather(x), dim=0)
    losses.funcol = types.SimpleNamespace(all_reduce=lambda t, op, group: torch.distributed.nn.all_reduce(t))
    old = {"nt_xent": grads(lambda a, b: losses.nt_xent(a, b, 0.5)), "barlow": grads(losses.barlow_loss)}
for k in new:
    ok[k] = torch.allclose(new[k], old[k], rtol=1e-6, atol=1e-7) and bool(new[k].abs().sum() > 0)
# SyncBatchNorm's all-gather of the statistics: BatchNorm over the union of the ranks' rows
bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(8)), cuda=False)
union = nn.functional.batch_norm(full1, None, None, training=True)
ok["syncbn"] = torch.allclose(bn(full1[mine]), union[mine], atol=1e-5)
print(f"rank {rank} " + " ".join(f"{k} {v}" for k, v in ok.items()), flush=True)
dist.destroy_process_group()
sys.exit(0 if all(ok.values()) else 1)
"""


def test_collectives_keep_their_gradients_and_warn_nothing(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} gather True nt_xent True barlow True syncbn True" in proc.stdout
    assert "FutureWarning" not in proc.stderr and "deprecated" not in proc.stderr
