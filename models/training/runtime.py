"""How a run computes: precision and the distributed set-up, on the device ``shards.base.host.resolve_device``
decides (this module adds the rank's GPU number).

``setup_runtime`` reads torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) and starts the
process group (NCCL on GPU, gloo on CPU). Precision costs the loop no branches (nanoGPT's habit): one
autocast context, a null context in fp32, and a GradScaler that is enabled only for fp16.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from shards.base.errors import ConfigError
from shards.base.host import resolve_device


@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda:N" | "cpu"
    rank: int
    local_rank: int
    world_size: int
    precision: str  # "bf16" | "fp16" | "fp32"

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """One autocast context for the loop (a null context in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a collective in DDP: call it on every rank)."""
        if not self.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def plan_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """What ``setup_runtime`` would choose, without touching the GPU or starting a process group
    (``train.py --print-config``)."""
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = resolve_device(device).startswith("cuda")  # the one decision of the device (shards.base.host)
    if precision == "auto":
        precision = "bf16" if use_cuda else "fp32"
    if precision in ("bf16", "fp16") and not use_cuda:
        raise ConfigError(f"--precision {precision} needs a GPU; on CPU use --precision fp32 (or auto)")
    return Runtime(f"cuda:{local_rank}" if use_cuda else "cpu", rank, local_rank, world_size, precision)


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """rank / world size from torchrun's environment; NCCL on GPU, gloo on CPU; TF32 and cudnn autotuning."""
    runtime = plan_runtime(device, precision)
    if runtime.is_cuda:
        torch.cuda.set_device(runtime.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        if runtime.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name()} has no bf16; use --precision fp16")
    if runtime.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend="nccl" if runtime.is_cuda else "gloo",
            device_id=torch.device(runtime.device) if runtime.is_cuda else None,
        )
        atexit.register(_end_process_group)
    return runtime


def _end_process_group() -> None:
    """The process group ended before the interpreter's own teardown: gloo's threads left to it can abort the
    process at exit ("terminate called without an active exception", seen in tests/test_models_syncbn.py)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state as tensors and plain types, so that a checkpoint loads with
    ``torch.load(..., weights_only=True)`` (numpy's own state tuple holds a pickled ndarray, which that refuses)."""
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved; an older checkpoint holds numpy's state tuple itself."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["bit_generator"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
