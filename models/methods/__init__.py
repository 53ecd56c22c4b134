"""Contrastive / self-distillation methods over one shared base (solo-learn style)."""
from models.methods.barlow import BarlowTwins, BarlowTwinsConfig
from models.methods.base import Method, MethodConfig
from models.methods.byol import BYOL, BYOLConfig
from models.methods.mocov2plus import MoCoV2Plus, MoCoV2PlusConfig
from models.methods.momentum import MomentumConfig, MomentumMethod, momentum_tau
from models.methods.simclr import SimCLR, SimCLRConfig

__all__ = [
    "BYOL", "BYOLConfig", "BarlowTwins", "BarlowTwinsConfig", "Method", "MethodConfig", "MoCoV2Plus",
    "MoCoV2PlusConfig", "MomentumConfig", "MomentumMethod", "SimCLR", "SimCLRConfig", "momentum_tau",
]
