"""MoCo v2+ (Chen et al. 2020, solo-learn's variant): a momentum encoder, a queue of negatives and a
symmetric InfoNCE loss.

Release defaults (AdaInf, CIFAR): projector 512→2048→ReLU→256 (no BatchNorm), queue 32768, temperature
0.2, momentum 0.99→0.999 (cosine), SGD lr 0.15 per 256 (0.3 at batch 512), probe lr 0.15 per 256,
weight decay 1e-4 on every parameter (the release keeps solo-learn's default of decaying biases under SGD).
The queue is a registered buffer (2, dim, size): one queue of keys per view; a step's keys join it after the
step's optimizer update (``on_train_step_end``), so the next step's loss sees them, as in the release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.heads import mlp
from models.losses import gather, moco_loss
from models.methods.momentum import MomentumConfig, MomentumMethod


@dataclass(frozen=True)
class MoCoV2PlusConfig(MomentumConfig):
    optimizer: str = "sgd"
    lr: float = 0.15
    probe_lr: float = 0.15
    weight_decay: float = 1e-4
    exclude_bias_norm: bool = False
    base_tau: float = 0.99
    final_tau: float = 0.999
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    queue_size: int = 32768
    temperature: float = 0.2


class MoCoV2Plus(MomentumMethod):
    Config = MoCoV2PlusConfig
    name = "mocov2plus"
    aug_family = "symmetric_weak"  # its augmentation presets (loaders.recipe.augment), as the release's config

    def __init__(self, cfg: MoCoV2PlusConfig):
        super().__init__(cfg)
        self.projector = mlp(self.feat_dim, cfg.proj_hidden_dim, cfg.proj_output_dim, batch_norm=False)
        self.momentum_projector = self.add_momentum_pair("projector")
        queue = F.normalize(torch.randn(2, cfg.proj_output_dim, cfg.queue_size), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None  # this step's keys, enqueued by on_train_step_end

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (2, N, dim) into the queue at the pointer, wrapping around; no host sync."""
        n = keys.shape[1]
        size = self.queue.shape[2]
        if n > size:
            keys, n = keys[:, -size:], size
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[:, :, idx] = keys.permute(0, 2, 1).to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def enqueue_pending(self) -> None:
        """Enqueue the keys of the last ``training_step`` (once; ``on_train_step_end`` calls it)."""
        keys, self._pending_keys = self._pending_keys, None
        if keys is not None:
            self.enqueue(keys)

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        self.enqueue_pending()  # the keys computed with the target before its EMA step, as in the release
        super().on_train_step_end(step, total_steps)

    def ssl_loss(self, feats: list[torch.Tensor], views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if len(views) != 2:
            raise ValueError(f"mocov2plus uses exactly two views, got {len(views)}")
        q1, q2 = (self.projector(f) for f in feats)
        with torch.no_grad():
            k1, k2 = (F.normalize(self.momentum_projector(f).float(), dim=1) for f in self.momentum_forward(views))
        loss = (
            moco_loss(q1, k2, self.queue[1], self.cfg.temperature)
            + moco_loss(q2, k1, self.queue[0], self.cfg.temperature)
        ) / 2
        # The step's keys join the queue after its optimizer step (``on_train_step_end``), not here: the loss's
        # backward reads the queue, and a compiled graph that also wrote it let that backward see the new keys
        # (torch 2.14: gradients ~5 % off; tests/test_training_compiling.py). The next step sees them, as in the
        # release.
        self._pending_keys = torch.stack([gather(k1), gather(k2)]).detach()
        return loss, {}
