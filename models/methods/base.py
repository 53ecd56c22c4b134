"""The shared base of every method (solo-learn style).

The base owns the backbone, the online linear probe trained on detached features of the training views,
the parameter groups and the per-view forward.  A method adds its heads and implements ``ssl_loss``.

``forward(views, labels)`` is ``training_step`` so that a DDP or compiled wrapper can be called directly:
``out = model(views, labels); out["loss"].backward(); optimizer.step(); method.on_train_step_end(step, total)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbone import build_backbone
from models.losses import all_sum, world_size


@dataclass(frozen=True)
class MethodConfig:
    """Settings every method shares.  Learning rates are per 256 samples (scaled by batch/256)."""

    backbone: str = "resnet18"
    num_classes: int = 10
    optimizer: str = "lars"  # "lars" | "sgd"
    lr: float = 0.2  # base lr per 256 samples
    probe_lr: float = 0.05  # online probe lr per 256 samples (no weight decay)
    # The release's LARS adapts every parameter that is not 1-D, the online classifier's weight included
    # (solo-learn/solo/utils/lars.py in PKU-ML/adainf; its bias is 1-D and is not): False makes the probe
    # plain SGD (this project's earlier choice, opt-in).
    probe_lars: bool = True
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD/LARS momentum
    lars_eta: float = 0.02  # LARS trust coefficient
    lars_clip_lr: bool = True  # clip the LARS-adapted lr at the group lr (solo-learn's clip_lr)
    exclude_bias_norm: bool = True  # biases and norm weights: no weight decay, no LARS adaptation
    zero_init_residual: bool = False


def make_config(cls: type, **overrides) -> object:
    """``cls(**overrides)`` where an unknown key or a wrong type is a ValueError naming the field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    clean = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"{cls.__name__} has no setting {key!r}; valid settings: {', '.join(sorted(fields))}")
        default = fields[key].default
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and not isinstance(value, type(default)):
            raise ValueError(f"{cls.__name__}.{key} must be {type(default).__name__}, got {value!r}")
        clean[key] = value
    return cls(**clean)


def probe_outputs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over labelled samples, number correct, number labelled); label -1 is ignored."""
    labelled = labels >= 0
    loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    correct = ((logits.argmax(dim=1) == labels) & labelled).sum()
    return loss_sum, correct, labelled.sum()


def global_feat_std(sums: torch.Tensor, squares: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The mean over dimensions of the features' (unbiased) standard deviation over a batch of ``n`` samples,
    from their sums and sums of squares per dimension (summed over the ranks: the global batch's)."""
    var = (squares - sums * sums / n) / (n - 1).clamp(min=1)
    return var.clamp(min=0).sqrt().mean()


class Method(nn.Module):
    """Backbone + online linear probe.  Subclasses set ``Config`` and implement ``ssl_loss``."""

    Config = MethodConfig
    name = "base"  # the --method name (registered in models/methods/__init__.py)
    aug_family: str = (
        ""  # every method names its augmentation family (loaders.recipe.augment): baseline and AdaInf presets
    )

    def __init__(self, cfg: MethodConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, zero_init_residual=cfg.zero_init_residual)
        self.feat_dim: int = self.backbone.feat_dim
        self.num_classes: int = cfg.num_classes
        self.probe = nn.Linear(self.feat_dim, cfg.num_classes)

    # ------------------------------------------------------------------ forward
    def forward_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone features of each view, one forward per view (BatchNorm statistics per view)."""
        return [self.backbone(v) for v in views]

    def ssl_loss(self, feats: list[torch.Tensor], views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The self-supervised loss from the online features of each view (and extra detached scalars)."""
        raise NotImplementedError

    def training_step(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict:
        """One step's losses.  ``loss`` = ssl + probe (with grad); the rest are detached 0-d tensors."""
        if len(views) < 2:
            raise ValueError(f"{self.name} needs at least two views per sample, got {len(views)}")
        feats = self.forward_views(views)
        ssl, extra = self.ssl_loss(feats, views)
        labels = labels.to(device=feats[0].device, dtype=torch.long)
        probe = [probe_outputs(self.probe(f.detach()), labels) for f in feats]
        loss_sum = sum(p[0] for p in probe)
        correct, count = sum(p[1] for p in probe), sum(p[2] for p in probe)
        # the figures of the global batch (summed over the ranks in DDP, one collective): labelled samples and
        # correct predictions of the probe, the features' moments
        z = F.normalize(feats[0].detach().float(), dim=1).double()
        counts = torch.stack([correct, count]).double()
        local = torch.cat([counts, z.new_full((1,), z.shape[0]), z.sum(0), (z * z).sum(0)])
        total = all_sum(local)
        correct_all, count_all = total[0], total[1].clamp(min=1)
        # the probe's mean over the global batch's labelled samples, as this rank's share: DDP averages the ranks'
        # gradients (and the log their losses), so each rank's term is scaled by W; 0, not NaN, with no label
        probe_loss = loss_sum * (world_size() / count_all).float()
        out = {
            "loss": ssl + probe_loss,
            "ssl_loss": ssl.detach(),
            "probe_loss": probe_loss.detach(),
            # the online probe's accuracy on this step's augmented training views (train/ in the logs); its
            # accuracy on the test set is eval/online_probe_acc (models.training.evaluation)
            "online_probe_acc_train_views": (correct_all / count_all).float(),
            "probe_correct": correct.detach(),  # this rank's
            "probe_count": count.detach(),
            "feat_std": global_feat_std(total[3 : 3 + z.shape[1]], total[3 + z.shape[1] :], total[2]).float(),
        }
        out.update({k: v.detach() for k, v in extra.items()})
        return out

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict:
        return self.training_step(views, labels)

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Called after ``optimizer.step()`` with the 0-based index of the step just taken."""

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, exclude_bias_norm: bool | None = None) -> list[dict]:
        """Trainable parameters as optimizer groups.

        ``ssl``: weights (weight decay, LARS-adapted); ``ssl_no_decay``: biases and norm parameters
        (ndim <= 1; no weight decay, not LARS-adapted) when ``exclude_bias_norm``; ``probe``: the online
        probe (``probe: True`` so the optimizer gives it the probe lr; no weight decay; under LARS its weight
        is adapted like the release's when ``cfg.probe_lars``, its bias never).
        Targets of momentum methods (requires_grad False) are not included.
        """
        if exclude_bias_norm is None:
            exclude_bias_norm = self.cfg.exclude_bias_norm
        probe_ids = {id(p) for p in self.probe.parameters()}
        decay, no_decay = [], []
        for _, p in self.named_parameters():
            if not p.requires_grad or id(p) in probe_ids:
                continue
            (no_decay if exclude_bias_norm and p.ndim <= 1 else decay).append(p)
        groups = [{"name": "ssl", "params": decay, "lars": True, "probe": False}]
        if no_decay:
            groups.append(
                {"name": "ssl_no_decay", "params": no_decay, "weight_decay": 0.0, "lars": False, "probe": False}
            )
        groups.append(
            {
                "name": "probe",
                "params": list(self.probe.parameters()),
                "weight_decay": 0.0,
                "lars": bool(self.cfg.probe_lars),
                "probe": True,
            }
        )
        return groups
