"""Per-view augmentation configs and the AdaInf release's presets: what a view does, not how.

The presets (:data:`PRESETS`) are the release's CIFAR augmentation files, by name and value
(PKU-ML/adainf, ``solo-learn/scripts/pretrain/cifar/augmentations/<name>.yaml``); the families
(:data:`FAMILIES`) pair each method's no-inflation preset with its AdaInf preset. Nothing else in the
project restates these numbers: the policy's knobs, ``auto``'s end points and every CLI's choices are
derived from this table.

An asymmetric recipe (BYOL) is just two :class:`ViewAug` configs. The order of operations is the release's
(``build_transform_pipeline`` in ``solo-learn/solo/data/pretrain_dataloader.py``):

    RandomResizedCrop (bicubic) → ColorJitter (p) → Grayscale (p) → GaussianBlur (p)
    → Solarization (p) → HorizontalFlip (p) → Normalize

How a view is made: the parameters of every sample are drawn on the host (``loaders.batch.params``), DALI decodes
and crops (``loaders.batch.graph``), and the rest runs as one batched tensor program on the model's device
(``loaders.batch.colour``), equal to torchvision's functional ops and PIL's blur image by image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shards.base.errors import ConfigError

# The release's normalisation for CIFAR-10: MEANS_N_STD["cifar10"] in build_transform_pipeline,
# solo-learn/solo/data/pretrain_dataloader.py (PKU-ML/adainf).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
#: the order of ColorJitter's adjustments as torchvision numbers them (``fn_idx``)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True)
class ViewAug:
    """The augmentation of one view (torchvision meaning for every field).

    The defaults are the constants of the release's transform builder (``build_transform_pipeline``
    and its ``GaussianBlur`` / ``Solarization`` in ``solo-learn/solo/data/pretrain_dataloader.py``):
    ``crop_ratio`` is torchvision's ``RandomResizedCrop`` default (the builder passes none),
    ``blur_sigma`` its ``GaussianBlur`` default, ``solarize_threshold`` ``ImageOps.solarize``'s default,
    ``mean``/``std`` its CIFAR-10 pair. Every other default does nothing (probability 0, strength 0,
    torchvision's default ``crop_scale``): the values that make a recipe come from :data:`PRESETS`.
    """

    size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.0
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    gray_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: int = 128
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def __post_init__(self):
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augmentation {name}={v}: a probability must lie in [0, 1]")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"augmentation crop_scale={self.crop_scale}: need 0 < min <= max <= 1")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"augmentation crop_ratio={self.crop_ratio}: need 0 < min <= max")
        if self.size < 1:
            raise ConfigError(f"augmentation size={self.size}: must be >= 1")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ConfigError("augmentation jitter: brightness/contrast/saturation >= 0 and 0 <= hue <= 0.5")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"augmentation blur_sigma={self.blur_sigma}: need 0 < min <= max")
        if not 0 <= self.solarize_threshold <= 256:
            raise ConfigError(f"augmentation solarize_threshold={self.solarize_threshold}: need 0..256")

    @property
    def jitter_ops(self) -> tuple[str, ...]:
        """The ColorJitter adjustments this view applies (strength > 0), in torchvision's numbering order."""
        return tuple(k for k in JITTER_OPS if getattr(self, k) > 0)


@dataclass(frozen=True)
class AugConfig:
    views: tuple[ViewAug, ...]

    @property
    def size(self) -> int:
        return self.views[0].size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# The release's presets: one source of truth
# ---------------------------------------------------------------------------------------------

#: Where every preset value comes from (PKU-ML/adainf).
RELEASE_AUGMENTATIONS = "solo-learn/scripts/pretrain/cifar/augmentations"


#: The release's CIFAR presets, named as its files ``RELEASE_AUGMENTATIONS/<name>.yaml``; one
#: :class:`ViewAug` per crop. Each value is the file's: ``crop_size`` → size, ``rrc.crop_min_scale`` /
#: ``crop_max_scale`` → crop_scale, ``color_jitter.prob`` / ``brightness`` / ``contrast`` /
#: ``saturation`` / ``hue``, ``grayscale.prob``, ``gaussian_blur.prob``, ``solarization.prob``,
#: ``horizontal_flip.prob`` (``equalization.prob`` is 0 in all five). A symmetric file has one
#: pipeline with ``num_crops: 2``; an asymmetric one two pipelines of one crop each.
def _release_views(
    crop_min: float,
    jitter_p: float,
    jitter: tuple[float, float, float, float],
    blur_p: float,
    solarize_p: tuple[float, float],
) -> tuple[ViewAug, ViewAug]:
    """The two crops of one release file; what all five files share is written once here: crop size 32,
    crop_max_scale 1.0, grayscale.prob 0.2, horizontal_flip.prob 0.5."""
    b, c, s, h = jitter
    common = dict(
        size=32,
        crop_scale=(crop_min, 1.0),
        jitter_p=jitter_p,
        brightness=b,
        contrast=c,
        saturation=s,
        hue=h,
        gray_p=0.2,
        blur_p=blur_p,
        flip_p=0.5,
    )
    return ViewAug(**common, solarize_p=solarize_p[0]), ViewAug(**common, solarize_p=solarize_p[1])


# fmt: off
PRESETS: dict[str, tuple[ViewAug, ...]] = {
    # name (file)            crop min  jitter p  (brightness, contrast, saturation, hue)  blur p  solarize p (crop 1, 2)
    # symmetric.yaml: SimCLR without inflation and with vanilla inflation (the README's commands)
    "symmetric":         _release_views(0.08, 0.8, (0.8, 0.8, 0.8, 0.2), 0.5, (0.0, 0.0)),
    # symmetric_weak.yaml: MoCo v2+ (scripts/pretrain/cifar/mocov2plus.yaml's default)
    "symmetric_weak":    _release_views(0.08, 0.8, (0.4, 0.4, 0.4, 0.1), 0.5, (0.0, 0.0)),
    # symmetric_adainf.yaml: AdaInf for SimCLR and MoCo v2 (the README; simclr.yaml's default)
    "symmetric_adainf":  _release_views(0.2, 0.4, (0.4, 0.4, 0.4, 0.1), 0.5, (0.0, 0.0)),
    # asymmetric.yaml: BYOL and Barlow Twins (byol.yaml's and barlow.yaml's default); solarization on crop 2
    "asymmetric":        _release_views(0.08, 0.8, (0.4, 0.4, 0.2, 0.1), 0.0, (0.0, 0.2)),
    # asymmetric_adainf.yaml: AdaInf for BYOL and Barlow Twins (the README); jitter values not halved
    "asymmetric_adainf": _release_views(0.2, 0.4, (0.4, 0.4, 0.2, 0.1), 0.0, (0.0, 0.2)),
}
# fmt: on
PRESET_NAMES = tuple(PRESETS)

#: Augmentation families: ``family -> (no-inflation / vanilla preset, AdaInf preset)``. From the release's
#: README ("select symmetric_adainf.yaml for SSL methods that utilize symmetric augmentation (e.g., SimCLR,
#: Moco V2), and select asymmetric_adainf.yaml for ... asymmetric augmentation (e.g., Barlow Twins, BYOL)";
#: its no-inflation and vanilla commands pass augmentations=symmetric.yaml) and the ``defaults`` of
#: scripts/pretrain/cifar/{mocov2plus,byol,barlow}.yaml. A method names its family (``aug_family``).
FAMILIES: dict[str, tuple[str, str]] = {
    "symmetric": ("symmetric", "symmetric_adainf"),  # SimCLR
    "symmetric_weak": ("symmetric_weak", "symmetric_adainf"),  # MoCo v2+
    "asymmetric": ("asymmetric", "asymmetric_adainf"),  # BYOL, Barlow Twins
}
FAMILY_NAMES = tuple(FAMILIES)

#: This project's earlier preset names, kept so existing commands and configs keep working.
PRESET_ALIASES = {
    "simclr": "symmetric",
    "simclr-adainf": "symmetric_adainf",
    "byol": "asymmetric",
    "byol-adainf": "asymmetric_adainf",
}

_FIELDS = {f.name for f in dataclasses.fields(ViewAug)}
_SHORTCUTS = ("crop_min_scale", "jitter_strength")


def family_presets(family: str) -> tuple[str, str]:
    """``(baseline preset, AdaInf preset)`` of an augmentation family; ValueError (one line) if unknown."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown augmentation family {family!r}: expected one of {', '.join(FAMILY_NAMES)}")
    return FAMILIES[family]


def canonical_preset(name: str) -> str:
    """The release name of a preset (resolving this project's old aliases); ValueError if unknown."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise ConfigError(
            f"augmentation preset {name!r}: choose one of {', '.join(PRESET_NAMES)} "
            f"(or the aliases {', '.join(PRESET_ALIASES)})"
        )
    return name


def preset(name: str, **overrides) -> AugConfig:
    """A named recipe (a :data:`PRESETS` name or an alias) with any knob overridden.

    ``overrides`` are :class:`ViewAug` field names (applied to every view), ``viewN_<field>``
    (N = 1, 2, …, one view only), ``crop_min_scale`` (lower end of ``crop_scale``),
    ``jitter_strength`` (multiplies the preset's brightness, contrast, saturation and hue) and
    ``num_views``. ``None`` values are ignored, so CLI options can be passed straight through.
    """
    base_views = PRESETS[canonical_preset(name)]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    num_views = int(overrides.pop("num_views", len(base_views)))
    if num_views < 1:
        raise ConfigError(f"num_views={num_views}: need at least one view")
    base = [{f: getattr(base_views[min(i, len(base_views) - 1)], f) for f in _FIELDS} for i in range(num_views)]
    per_view: dict[int, dict] = {}
    for key, value in overrides.items():
        if key.startswith("view") and "_" in key and key[4 : key.index("_")].isdigit():
            i, field = int(key[4 : key.index("_")]) - 1, key[key.index("_") + 1 :]
            if not 0 <= i < num_views:
                raise ConfigError(f"augmentation override {key}: there are only {num_views} views")
            per_view.setdefault(i, {})[field] = value
        else:
            for i in range(num_views):
                per_view.setdefault(i, {})[key] = value
    views = []
    for i, cfg in enumerate(base):
        ov = per_view.get(i, {})
        unknown = set(ov) - _FIELDS - set(_SHORTCUTS)
        if unknown:
            raise ConfigError(
                f"augmentation override {sorted(unknown)[0]!r} is unknown; known: "
                f"{', '.join(sorted(_FIELDS | set(_SHORTCUTS)))}"
            )
        if "jitter_strength" in ov:
            s = float(ov["jitter_strength"])
            for k in JITTER_OPS:
                cfg[k] = cfg[k] * s
        if "crop_min_scale" in ov:
            cfg["crop_scale"] = (float(ov["crop_min_scale"]), cfg["crop_scale"][1])
        cfg.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in ov.items() if k in _FIELDS})
        views.append(ViewAug(**cfg))
    return AugConfig(tuple(views))


def jitter_strength(views, reference) -> float:
    """The one factor ``s`` with ``views``' jitter (b, c, s, h) = ``s`` × ``reference``'s, view by view
    (ValueError when the two are not proportional, e.g. the asymmetric presets' saturation against
    the symmetric ones'). How the policy states a preset's jitter relative to its family's baseline."""
    ratios = {
        round(getattr(v, k) / getattr(r, k), 9)
        for v, r in zip(views, reference)
        for k in JITTER_OPS
        if getattr(r, k) > 0
    }
    zeros_match = all((getattr(v, k) > 0) == (getattr(r, k) > 0) for v, r in zip(views, reference) for k in JITTER_OPS)
    if len(ratios) != 1 or not zeros_match:
        raise ConfigError("the two recipes' colour jitters are not proportional")
    return ratios.pop()
