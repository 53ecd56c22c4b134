"""Export a run's trained backbone (and optionally its projector) as a plain state dict.

``python -m models export RUN_DIR --out backbone.pt [--projector]`` writes the online backbone's weights
(the ``backbone.`` entries of the checkpoint's model, prefix removed) with ``torch.save``: a dict of tensors
that loads with ``torch.load(path, weights_only=True)`` into ``models.build_backbone(name)`` or into
torchvision's ResNet with the CIFAR stem (3×3 stride-1 conv1, no max-pool, ``fc = Identity``), strict.
For the momentum methods (MoCo v2+, BYOL) the online backbone is the one exported, as solo-learn does.
``--projector`` writes the projection head beside it (``backbone-projector.pt`` for ``--out backbone.pt``):
a ``models.heads.mlp`` of the method's dimensions.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from models.backbone import build_backbone
from models.training.checkpoint import load_checkpoint
from shards.base.errors import ConfigError

BACKBONE_PREFIX = "backbone."
PROJECTOR_PREFIX = "projector."


@dataclass(frozen=True)
class Exported:
    """What ``export_run`` wrote: the files, and what the backbone is."""

    checkpoint: Path
    backbone_file: Path
    projector_file: Path | None
    method: str
    backbone: str
    step: int
    parameters: int


def submodule_state(model_state: dict, prefix: str) -> dict:
    """The entries of ``model_state`` under ``prefix``, with the prefix removed (a plain module state dict)."""
    return {key[len(prefix) :]: value for key, value in model_state.items() if key.startswith(prefix)}


def projector_path(out: Path) -> Path:
    """Where ``--projector`` writes the projection head: ``NAME-projector.pt`` beside ``--out NAME.pt``."""
    return out.with_name(f"{out.stem}-projector{out.suffix or '.pt'}")


def _save_plain(state: dict, path: Path) -> None:
    """``torch.save`` of plain tensors to a temporary name beside ``path``, then a rename (never half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save({key: value.detach().clone().contiguous() for key, value in state.items()}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write it ({e.strerror or e}); choose a writable folder") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def export_run(run: str | os.PathLike, out: str | os.PathLike, projector: bool = False) -> Exported:
    """Write the backbone state dict of ``run`` (a run directory or a checkpoint file) to ``out``."""
    out_text = os.fspath(out)
    if "://" in out_text:
        raise ConfigError(f"--out {out_text}: export writes a local file; give a path and copy it afterwards")
    out_path = Path(out_text)
    if out_path.is_dir():
        raise ConfigError(f"--out {out_path}: is a folder; give a file name such as {out_path / 'backbone.pt'}")
    if not out_path.parent.is_dir():
        raise ConfigError(f"--out {out_path}: the folder {out_path.parent} does not exist; create it first")
    ckpt_path, ckpt = load_checkpoint(run)
    settings = ckpt["settings"]
    backbone = submodule_state(ckpt["model"], BACKBONE_PREFIX)
    if not backbone:
        raise ConfigError(f"{ckpt_path}: its model has no backbone weights; is it a train.py checkpoint?")
    net = build_backbone(str(settings.get("backbone")))
    try:  # what the documented snippet does: a file that does not load strictly is never written
        net.load_state_dict(backbone)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"{ckpt_path}: its backbone does not match {settings.get('backbone')} ({first})") from None
    projector_file = None
    if projector:
        head = submodule_state(ckpt["model"], PROJECTOR_PREFIX)
        if not head:
            raise ConfigError(f"{ckpt_path}: method {settings.get('method')} has no projector; leave out --projector")
        projector_file = projector_path(out_path)
        _save_plain(head, projector_file)
    _save_plain(backbone, out_path)
    return Exported(
        checkpoint=ckpt_path,
        backbone_file=out_path,
        projector_file=projector_file,
        method=str(settings.get("method")),
        backbone=str(settings.get("backbone")),
        step=int(ckpt["step"]),
        parameters=sum(p.numel() for p in net.parameters()),
    )


def load_snippet(exported: Exported) -> str:
    """The lines that load the exported file into the project's backbone (and torchvision's, for ResNets)."""
    path = exported.backbone_file
    lines = [
        f"net = models.build_backbone({exported.backbone!r})",
        f"net.load_state_dict(torch.load({str(path)!r}, weights_only=True))",
    ]
    return "\n".join(lines)
