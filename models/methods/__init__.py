"""Contrastive / self-distillation methods over one shared base (solo-learn style), and their registry.

Adding a method: one file here with a ``Method`` subclass (its ``name``, ``aug_family`` and ``Config``
with the release's defaults), plus its class in ``_REGISTERED`` below. The command-line choices
(``train.py --method``), the augmentation family and the defaults all come from the class.
"""

from models.methods.barlow import BarlowTwins, BarlowTwinsConfig
from models.methods.base import Method, MethodConfig
from models.methods.byol import BYOL, BYOLConfig
from models.methods.mocov2plus import MoCoV2Plus, MoCoV2PlusConfig
from models.methods.momentum import MomentumConfig, MomentumMethod, momentum_tau
from models.methods.simclr import SimCLR, SimCLRConfig

_REGISTERED: tuple[type[Method], ...] = (SimCLR, MoCoV2Plus, BYOL, BarlowTwins)
#: ``--method`` name -> class
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in _REGISTERED}

__all__ = [
    "BYOL",
    "BYOLConfig",
    "BarlowTwins",
    "BarlowTwinsConfig",
    "METHODS",
    "Method",
    "MethodConfig",
    "MoCoV2Plus",
    "MoCoV2PlusConfig",
    "MomentumConfig",
    "MomentumMethod",
    "SimCLR",
    "SimCLRConfig",
    "momentum_tau",
]
