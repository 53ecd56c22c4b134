"""Per-view augmentation: the AdaInf release's presets, parameters drawn on the host, applied by DALI.

The presets (:data:`PRESETS`) are the release's CIFAR augmentation files, by name and value
(PKU-ML/adainf, ``solo-learn/scripts/pretrain/cifar/augmentations/<name>.yaml``); the families
(:data:`FAMILIES`) pair each method's no-inflation preset with its AdaInf preset. Nothing else in the
project restates these numbers: the policy's knobs, ``auto``'s end points and every CLI's choices are
derived from this table.

One function, :func:`augment_view`, is used once per view; an asymmetric recipe (BYOL) is just two
:class:`ViewAug` configs. The order of operations is the release's (``build_transform_pipeline`` in
``solo-learn/solo/data/pretrain_dataloader.py``):

    RandomResizedCrop (bicubic) → ColorJitter (p) → Grayscale (p) → GaussianBlur (p)
    → Solarization (p) → HorizontalFlip (p) → Normalize (CHW or HWC float)

Randomness lives on the host, not in DALI: :func:`sample_view_params` draws every per-sample
parameter of a view (crop box, flags, jitter factors and order, blur sigma) in numpy, vectorised over
the batch, from :func:`augment_rng` — a counter-based Philox generator keyed by
``(seed, epoch, rank, step)``. The loader feeds the arrays to DALI through its external source
(:func:`dali_param_arrays`, in :func:`dali_param_names` order) as argument inputs and conditions;
the DALI graph has no random op, so a view is a pure function of (seed, epoch, rank, step, image)
and a resumed run reproduces the uninterrupted one exactly. Benchmarks and audits can call the
sampler directly (pure numpy, no DALI).

torchvision semantics, op by op (the release runs torchvision transforms):

* RandomResizedCrop: ``RandomResizedCrop.get_params`` — area fraction uniform in ``crop_scale``,
  log-uniform aspect ratio in ``crop_ratio``, 10 attempts on the image's real H×W (from the
  manifest), then a centre crop with the ratio clamped; the integer box ``[start, end)`` is
  resampled to ``size×size`` by ``fn.resize`` (ROI, bicubic, antialiased). Sources whose manifest
  has no ``image_size`` get boxes in relative units of an assumed square image (see
  :func:`sample_view_params`).
* ColorJitter: ``ColorJitter.get_params`` — brightness, contrast and saturation factors uniform in
  ``[max(0, 1−x), 1+x]``, hue factor uniform in ``[−h, h]`` (a fraction of a turn), and a random
  order of the four per image (``torch.randperm(4)``), drawn on the host like the rest. Each
  adjustment is torchvision's functional op on uint8 images, written with DALI ops that exist on
  both backends (``brightness_contrast``, ``coord_transform``, ``reductions.mean``, arithmetic, so the
  CPU and GPU graphs are the same ops): brightness blends with black, contrast with the mean of the
  image's grey level, saturation with the grey image (``rgb_to_grayscale``: 0.2989 R + 0.587 G +
  0.114 B, floored), each clamped to [0, 255] and truncated to an integer as torchvision's cast to
  uint8 does; hue converts RGB → HSV, shifts H modulo 1 and converts back, scaling by 255.999
  (``to_dtype``). The order is applied without branches: brightness, contrast and saturation go
  through slots, each a blend whose per-sample coefficients make it the adjustment the sample draws
  there (or the identity); hue has one place in the graph, with the slots before it taking what a
  sample draws before hue and the slots after it the rest; a sample the jitter skips gets identity
  coefficients (:func:`color_jitter`). Adjustments of strength 0 are left out of the graph (torchvision skips
  them too). Measured against torchvision on CIFAR-10 images (tests/test_augment.py): mean absolute
  difference under 0.01 of a level per adjustment, under 0.02 for the whole jitter. Faithfulness has
  a price on the CPU backend: about 45 ms of CPU per 256 jittered 32×32 images and view (the fused but
  inexact ``fn.hsv`` / ``brightness_contrast`` took about 7). The release applies the same ops to PIL
  images, whose rounding differs from the tensor ops by 0.2-0.3 of a level on average on the same
  CIFAR-10 images (brightness exactly equal; hue up to 9 levels on a few pixels: PIL keeps H in 8 bits).
* Grayscale: ``rgb_to_grayscale`` as above, replicated to three channels.
* Gaussian blur: sigma uniform in ``blur_sigma``, kernel sized from sigma by DALI.
* Solarization: pixels ``>= solarize_threshold`` become ``255 − x`` (PIL's ``ImageOps.solarize``).

Probabilities of exactly 0 or 1 are resolved when the pipeline is built (no per-sample branch, no
flag fed); grayscale, blur and solarization otherwise use DALI conditionals (``enable_conditionals=True``
in the pipeline) on the fed boolean flags. The colour jitter needs no flag: a sample it skips gets
identity coefficients (one branch per slot split and merged the batch and every parameter: with them the
``simclr`` views took 484 DALI operators per iteration, without them 294).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from shards.errors import ConfigError

# The release's normalisation for CIFAR-10: MEANS_N_STD["cifar10"] in build_transform_pipeline,
# solo-learn/solo/data/pretrain_dataloader.py (PKU-ML/adainf).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
#: the order of ColorJitter's adjustments as torchvision numbers them (``fn_idx``)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
#: Colour-jitter implementations. ``exact``: torchvision's ``ColorJitter`` (the release's transform), about
#: 250 DALI operators for two views. ``fused``: DALI's ``fn.color_twist`` with the same drawn factors, one
#: operator per view, as solo-learn's DALI pipeline does (``RandomColorJitter``, hue in degrees): brightness
#: and contrast around mid-grey and hue and saturation in YIQ space, in one fixed order — not the release's
#: semantics, an opt-in for GPU throughput (``--jitter-impl fused``).
JITTER_IMPLS = ("exact", "fused")


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
    #: how the colour jitter is computed: "exact" (torchvision's ops in the drawn random order, the release's
    #: semantics, the default) or "fused" (one ``fn.color_twist``, opt-in: see :data:`JITTER_IMPLS`)
    jitter_impl: str = "exact"

    def __post_init__(self):
        if self.jitter_impl not in JITTER_IMPLS:
            raise ConfigError(f"jitter_impl {self.jitter_impl!r}: choose one of {', '.join(JITTER_IMPLS)}")
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


# ---------------------------------------------------------------------------------------------
# Host-side parameter sampler (pure numpy, vectorised over the batch)
# ---------------------------------------------------------------------------------------------

#: Every key of :func:`sample_view_params`' result.
PARAM_KEYS = (
    "crop_start",
    "crop_end",
    "flip",
    "jitter",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "jitter_order",
    "gray",
    "blur",
    "sigma",
    "solarize",
)
_RRC_ATTEMPTS = 10
# columns of the one (B, _NUM_UNIFORMS) block of uniforms drawn per view and batch
_AREA, _RATIO = slice(0, _RRC_ATTEMPTS), slice(_RRC_ATTEMPTS, 2 * _RRC_ATTEMPTS)
(_TOP, _LEFT, _FLIP, _JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE, _GRAY, _BLUR, _SIGMA, _SOLAR) = range(
    2 * _RRC_ATTEMPTS, 2 * _RRC_ATTEMPTS + 12
)
_ORDER = slice(2 * _RRC_ATTEMPTS + 12, 2 * _RRC_ATTEMPTS + 12 + len(JITTER_OPS))
_NUM_UNIFORMS = _ORDER.stop
_AUG_STREAM = 0x41756741  # separates augmentation streams from any other use of the same seed


def augment_rng(seed: int, epoch: int, rank: int, step: int) -> np.random.Generator:
    """The counter-based generator of one training step's augmentation draws.

    A Philox generator keyed by ``SeedSequence([stream, seed, epoch, rank, step])``: the draws of a
    step depend on nothing else (not on earlier steps, threads or where a run was resumed).
    """
    entropy = [_AUG_STREAM] + [int(x) % 2**64 for x in (seed, epoch, rank, step)]
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(entropy)))


def sample_view_params(rng: np.random.Generator, view: ViewAug, heights, widths) -> dict[str, np.ndarray]:
    """Every random parameter of one view for a batch of ``B`` images, drawn on the host.

    ``heights`` / ``widths``: (B,) image sizes in pixels, 0 where unknown. One ``rng.random((B, 36))``
    block is drawn per call, whatever the view's probabilities, so the stream does not depend on them.
    Returns a dict of (B,) arrays (``crop_start`` / ``crop_end``: (B, 2), ``(y, x)`` order;
    ``jitter_order``: (B, 4)):

    * ``crop_start``, ``crop_end`` — torchvision's ``RandomResizedCrop.get_params``: area fraction
      uniform in ``crop_scale``, log-uniform aspect ratio (w/h) in ``crop_ratio``, the first of 10
      attempts whose rounded box fits, else the centre crop with the ratio clamped into range. The box is
      ``[start, end)`` in whole pixels where the size is known; where it is unknown (0) it is computed
      in relative units (0…1) of an assumed *square* image without rounding — the area fraction is then
      exact, the aspect ratio is off by the image's own ``W/H``.
    * ``flip``, ``jitter``, ``gray``, ``blur``, ``solarize`` — bool, true with the view's probability.
    * ``brightness``, ``contrast``, ``saturation`` — factors uniform in ``[max(0, 1 − x), 1 + x]``;
      ``hue`` — torchvision's hue factor, uniform in ``[−h, h]`` (a fraction of a turn);
      ``jitter_order`` — a uniformly random permutation of 0…3 (:data:`JITTER_OPS` indices), the
      order of the adjustments like ``ColorJitter``'s ``torch.randperm(4)``; ``sigma`` — uniform in
      ``blur_sigma``.
    """
    h_img = np.asarray(heights, dtype=np.float64)
    w_img = np.asarray(widths, dtype=np.float64)
    n = len(h_img)
    u = rng.random((n, _NUM_UNIFORMS))
    known = h_img > 0
    H = np.where(known, h_img, 1.0)[:, None]
    W = np.where(known, w_img, 1.0)[:, None]
    kn = known[:, None]
    # RandomResizedCrop: 10 vectorised attempts per sample, keep the first that fits
    lo, hi = view.crop_scale
    target = H * W * (lo + (hi - lo) * u[:, _AREA])
    log_lo, log_hi = np.log(view.crop_ratio[0]), np.log(view.crop_ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, _RATIO])
    cw, ch = np.sqrt(target * aspect), np.sqrt(target / aspect)
    cw, ch = np.where(kn, np.round(cw), cw), np.where(kn, np.round(ch), ch)  # round half to even, like Python
    fits = (cw > 0) & (cw <= W) & (ch > 0) & (ch <= H)
    first = fits.argmax(axis=1)
    found = fits[np.arange(n), first]
    cw, ch = cw[np.arange(n), first], ch[np.arange(n), first]
    H, W = H[:, 0], W[:, 0]
    # fallback: centre crop, ratio clamped into crop_ratio
    ratio = W / H
    r_lo, r_hi = view.crop_ratio
    fw = np.where(ratio < r_lo, W, np.where(ratio > r_hi, H * r_hi, W))
    fh = np.where(ratio < r_lo, W / r_lo, H)
    fw, fh = np.where(known, np.round(fw), fw), np.where(known, np.round(fh), fh)
    cw, ch = np.where(found, cw, fw), np.where(found, ch, fh)
    top = np.where(known, np.floor(u[:, _TOP] * (H - ch + 1)), u[:, _TOP] * (H - ch))
    left = np.where(known, np.floor(u[:, _LEFT] * (W - cw + 1)), u[:, _LEFT] * (W - cw))
    top = np.where(found, top, np.where(known, (H - ch) // 2, (H - ch) / 2))
    left = np.where(found, left, np.where(known, (W - cw) // 2, (W - cw) / 2))
    out = {"crop_start": np.stack([top, left], axis=1), "crop_end": np.stack([top + ch, left + cw], axis=1)}

    def factor(x: float, col: int) -> np.ndarray:
        a, b = max(0.0, 1.0 - x), 1.0 + x
        return a + (b - a) * u[:, col]

    out.update(
        flip=u[:, _FLIP] < view.flip_p,
        jitter=u[:, _JITTER] < view.jitter_p,
        brightness=factor(view.brightness, _BRIGHT),
        contrast=factor(view.contrast, _CONTRAST),
        saturation=factor(view.saturation, _SAT),
        hue=(2.0 * u[:, _HUE] - 1.0) * view.hue,
        jitter_order=np.argsort(u[:, _ORDER], axis=1, kind="stable").astype(np.int32),
        gray=u[:, _GRAY] < view.gray_p,
        blur=u[:, _BLUR] < view.blur_p,
        sigma=view.blur_sigma[0] + (view.blur_sigma[1] - view.blur_sigma[0]) * u[:, _SIGMA],
        solarize=u[:, _SOLAR] < view.solarize_p,
    )
    return out


def dali_param_names(view: ViewAug) -> tuple[str, ...]:
    """The parameters the DALI graph of ``view`` consumes (p of 0 or 1 needs no flag; the jitter needs none
    at all: a sample it skips gets identity coefficients; adjustments of strength 0 are not fed)."""
    names = ["crop_start", "crop_end"]
    if 0 < view.flip_p < 1:
        names.append("flip")
    ops = view.jitter_ops
    if view.jitter_p > 0 and ops and view.jitter_impl == "fused":
        names.append("twist")
    elif view.jitter_p > 0 and ops:
        names += (["jitter_coef"] if set(ops) - {"hue"} else []) + (["hue_centres"] if "hue" in ops else [])
    if 0 < view.gray_p < 1:
        names.append("gray")
    if view.blur_p > 0:
        names += (["blur"] if view.blur_p < 1 else []) + ["sigma"]
    if 0 < view.solarize_p < 1:
        names.append("solarize")
    return tuple(names)


def dali_param_arrays(
    view: ViewAug, params: dict[str, np.ndarray], heights, widths, relative: bool
) -> list[np.ndarray]:
    """``params`` as the external-source batches :func:`augment_view` expects, in
    :func:`dali_param_names` order: flags as bool (conditions), ``flip`` as int32 (``mirror``),
    ``jitter_coef`` / ``hue_centres`` as the slots of :func:`color_jitter` (:func:`_jitter_layout`),
    the rest float32; with ``relative`` the crop box is divided by the known image sizes (unknown ones
    already are)."""
    out = []
    for name in dali_param_names(view):
        a = params.get(name)
        if name in ("crop_start", "crop_end"):
            if relative:
                size = np.stack([np.asarray(heights, np.float64), np.asarray(widths, np.float64)], axis=1)
                a = np.where(size > 0, a / np.where(size > 0, size, 1.0), a)
            a = np.ascontiguousarray(a, dtype=np.float32)
        elif name in ("jitter_coef", "hue_centres"):
            a = _jitter_layout(view, params)[name]
        elif name == "twist":
            a = _twist(view, params)
        elif name == "flip":
            a = a.astype(np.int32)
        elif a.dtype != np.bool_:
            a = a.astype(np.float32)
        out.append(a)
    return out


def _twist(view: ViewAug, params: dict) -> np.ndarray:
    """The drawn jitter as ``fn.color_twist`` arguments, float32 (B, 4): brightness, contrast and saturation
    factors and the hue shift in degrees (360 × torchvision's fraction of a turn); ``(1, 1, 1, 0)``, the
    identity, where the jitter flag is off."""
    on = params["jitter"] if view.jitter_p < 1 else np.ones(len(params["hue"]), bool)
    t = np.stack([params["brightness"], params["contrast"], params["saturation"], 360.0 * params["hue"]], axis=1)
    return np.ascontiguousarray(np.where(on[:, None], t, np.array([1.0, 1.0, 1.0, 0.0])), np.float32)


def _jitter_layout(view: ViewAug, params: dict) -> dict[str, np.ndarray]:
    """The drawn ColorJitter flag, order and factors as the inputs of :func:`color_jitter` (B samples, S
    slots), computed on the host in float64 and rounded once to float32:

    * ``jitter_coef`` (B, 3·S): per slot ``(f, a, b)`` of ``y = f·x + a·mean(grey(x)) + b·grey(x)`` —
      brightness ``(f, 0, 0)``, contrast ``(f, 1 − f, 0)``, saturation ``(f, 0, 1 − f)`` (torchvision's
      ``_blend``: ``1 − f`` in double, then float32, as torch does with a Python scalar), and ``(1, 0, 0)``, an
      exact identity, for a slot the sample does not use. With hue, slots 0…S/2−1 hold the adjustments
      drawn before hue and S/2… those drawn after, in drawn order.
    * ``hue_centres`` (B, 3): ``(3, 5, 1) − 6·hue`` — where the R, G, B ramps of :func:`_adjust_hue` are
      centred on the circle of 6·H; a hue factor of 0 is the identity.

    A sample whose jitter flag is off gets identity slots and hue 0: the graph needs no branch."""
    active = [JITTER_OPS.index(k) for k in view.jitter_ops]
    hue = JITTER_OPS.index("hue")
    order = params["jitter_order"]
    n_samples = len(order)
    on = params["jitter"] if view.jitter_p < 1 else np.ones(n_samples, bool)
    order = order[np.isin(order, active)].reshape(n_samples, len(active))  # the view's adjustments, drawn order
    f32 = np.stack([np.asarray(params[k], np.float64).astype(np.float32) for k in JITTER_OPS], axis=1)  # (B, 4)
    blend = [i for i in active if i != hue]
    if hue not in active:
        slot_ops = order
    else:
        n = len(blend)
        seq = order[order != hue].reshape(n_samples, n)  # the other adjustments, drawn order
        before = np.argmax(order == hue, axis=1)[:, None]  # how many come before hue
        k = np.arange(n)[None, :]
        pre = np.where(k < before, seq, -1)
        post = np.where(k < n - before, np.take_along_axis(seq, np.minimum(before + k, n - 1), axis=1), -1)
        slot_ops = np.concatenate([pre, post], axis=1)
    slot_ops = np.where(on[:, None], slot_ops, -1)
    f = np.where(slot_ops >= 0, np.take_along_axis(f32, np.maximum(slot_ops, 0), axis=1), np.float32(1))
    rest = (1.0 - f.astype(np.float64)).astype(np.float32)
    zero = np.float32(0)
    a = np.where(slot_ops == JITTER_OPS.index("contrast"), rest, zero)
    b = np.where(slot_ops == JITTER_OPS.index("saturation"), rest, zero)
    h = np.where(on, f32[:, hue], zero).astype(np.float64)
    centres = np.array([3.0, 5.0, 1.0])[None, :] - 6.0 * h[:, None]
    return {
        "jitter_coef": np.ascontiguousarray(np.stack([f, a, b], axis=2).reshape(n_samples, -1), np.float32),
        "hue_centres": np.ascontiguousarray(centres, np.float32),
    }


# ---------------------------------------------------------------------------------------------
# DALI graph (called inside a @pipeline_def with enable_conditionals=True)
# ---------------------------------------------------------------------------------------------


def augment_view(images, view: ViewAug, params: dict, device: str = "cpu", layout: str = "CHW", relative: bool = False):
    """One augmented view of a batch of decoded HWC uint8 RGB images (a DALI DataNode).

    ``params`` maps each name of :func:`dali_param_names` to a CPU DataNode (an external-source output
    fed with :func:`dali_param_arrays`): no DALI random op is used, so the view is a pure function of
    the images and the parameters. ``device`` is where the data ops run ("cpu" or "gpu"; the images must
    already be there; parameters stay on the CPU as argument inputs and predicates, and are copied to
    the GPU where arithmetic needs them). ``relative``: the crop box is in relative units. Returns
    normalised float32 in ``layout`` ("CHW" or "HWC").
    """
    from nvidia.dali import fn, types

    # RandomResizedCrop: resample the [start, end) box straight to size×size (one op, no copy of the crop)
    images = fn.resize(
        images,
        device=device,
        size=(view.size, view.size),
        roi_start=params["crop_start"],
        roi_end=params["crop_end"],
        roi_relative=relative,
        interp_type=types.INTERP_CUBIC,
        antialias=True,
    )
    if view.jitter_p > 0 and view.jitter_ops and view.jitter_impl == "fused":
        t = params["twist"]
        images = fn.color_twist(images, brightness=t[0], contrast=t[1], saturation=t[2], hue=t[3], device=device)
    elif view.jitter_p > 0 and view.jitter_ops:  # branch-free: a sample the jitter skips gets identity inputs
        images = color_jitter(images, view, params, device)
    images = _maybe(images, view.gray_p, params.get("gray"), lambda x: _grayscale(x, device))
    images = _maybe(
        images, view.blur_p, params.get("blur"), lambda x: fn.gaussian_blur(x, device=device, sigma=params["sigma"])
    )
    images = _maybe(
        images, view.solarize_p, params.get("solarize"), lambda x: _solarize(x, view.solarize_threshold, device)
    )
    mirror = params["flip"] if 0 < view.flip_p < 1 else int(view.flip_p >= 1)
    return fn.crop_mirror_normalize(
        images,
        device=device,
        mirror=mirror,
        dtype=types.FLOAT,
        output_layout=layout,
        mean=[255.0 * m for m in view.mean],
        std=[255.0 * s for s in view.std],
    )


def _maybe(images, p: float, flag, op):
    """``op(images)`` where ``flag`` (a per-sample bool DataNode) is set; p of 0 or 1 needs no branch."""
    if p <= 0:
        return images
    if p >= 1:
        return op(images)
    if flag:
        images = op(images)
    return images


def color_jitter(images, view: ViewAug, params: dict, device: str = "cpu"):
    """torchvision's ``ColorJitter`` on HWC uint8 images, with the drawn flag, factors and order laid out
    by :func:`_jitter_layout` in ``params``.

    The adjustments run in per-sample order through *slots*, with no branch: each slot computes
    ``f·x + a·mean(grey(x)) + b·grey(x)`` with the sample's coefficients from ``jitter_coef``, which make
    it brightness, contrast, saturation or the identity. Hue, the expensive one, has a single place in
    the graph: the slots before it take the adjustments a sample draws before hue, the slots after it
    those drawn after. (Without hue, one slot per adjustment.) A DALI conditional per slot would split
    and merge the batch and every parameter at each branch; on a GPU, where a 32×32 batch costs little
    per op and much per op launch, the op count is the price (for the ``simclr`` views the pipeline went
    from 484 operators to 294).
    """
    ops = set(view.jitter_ops)
    coef, centres = params.get("jitter_coef"), params.get("hue_centres")
    slots = _jitter_slots(view)
    half = slots // 2 if "hue" in ops else slots
    for k in range(slots):
        if k == half:
            images = _adjust_hue(images, centres, device)
        images = _blend_slot(images, coef, k, ops, device)
    if "hue" in ops and slots == half:  # hue last (also: hue alone)
        images = _adjust_hue(images, centres, device)
    return images


def _jitter_slots(view: ViewAug) -> int:
    """Slots of :func:`color_jitter`: one per adjustment without hue, else twice the other adjustments."""
    n = len([k for k in view.jitter_ops if k != "hue"])
    return 2 * n if "hue" in view.jitter_ops else n


def _blend_slot(x, coef, k: int, ops: set, device: str):
    """Slot ``k``: torchvision's ``_blend`` ``f·x + (1 − f)·other`` (other = 0, the mean of the grey image,
    the grey image), clamped to [0, 255] and truncated, as ``floor(f·x + a·mean(grey) + b·grey)`` with the
    slot's ``(f, a, b)``; ``f·x`` from one fused ``brightness_contrast`` (float32, exact); the terms of an
    adjustment the view does not have are left out. With ``a = b = 0`` the sum is ``f·x`` exactly."""
    from nvidia.dali import fn, types

    f = coef[3 * k]
    if ops <= {"brightness", "hue"}:
        return fn.brightness_contrast(
            x, brightness=f, brightness_shift=-_FLOOR_SHIFT / 255.0, dtype=types.UINT8, device=device
        )
    y = fn.brightness_contrast(x, brightness=f, contrast_center=0.0, dtype=types.FLOAT, device=device)
    grey = _grey(x, 1, device)
    if "contrast" in ops:
        y = y + coef[3 * k + 1] * fn.reductions.mean(grey, dtype=types.FLOAT, device=device)
    if "saturation" in ops:
        y = y + coef[3 * k + 2] * grey
    return _floor_u8(y, device)


# torchvision casts float results to uint8 by truncation; DALI's conversions round half away from zero.
# round(y - _FLOOR_SHIFT) == floor(y) for y >= 0 except when frac(y) >= 1 - 2**-12 (a 0.02 % band where the
# result is one level high); exact for integer-valued y, which is what keeps identities exact.
_FLOOR_SHIFT = 0.5 - 2.0**-12
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _floor_u8(y, device: str, scale: float = 1.0):
    """``floor(clamp(scale·y, 0, 255))`` as uint8 (HWC): ``brightness_contrast`` computes ``scale·y − shift``
    and saturates, in one pass about 4x cheaper on the CPU than ``fn.cast`` from float."""
    from nvidia.dali import fn, types

    return fn.brightness_contrast(
        y,
        brightness=scale,
        contrast_center=0.0,
        brightness_shift=-_FLOOR_SHIFT / 255.0,
        dtype=types.UINT8,
        device=device,
    )


def _grey(x, channels: int, device: str):
    """torchvision's ``rgb_to_grayscale`` of uint8 HWC images: floor(0.2989 R + 0.587 G + 0.114 B), uint8,
    ``channels`` copies."""
    from nvidia.dali import fn, types

    return fn.coord_transform(
        x, M=list(_GREY) * channels, T=[-_FLOOR_SHIFT] * channels, dtype=types.UINT8, device=device
    )


def _adjust_hue(x, centres, device: str):
    """torchvision's ``adjust_hue`` (RGB → HSV, H + hue modulo 1, HSV → RGB, ×255.999, truncated) on uint8
    HWC images, in float32 planes of 0…255 values, with the closed form of its ``_hsv_to_rgb``: channel
    ``c = maxc − (maxc − minc)·clamp(2 − d_c, 0, 1)``, ``d_c`` the distance from 6·H to 3, 5, 1 (R, G, B)
    around the circle of length 6 — the same function as its sector table (v, p, q, t), with fewer
    operations (and no fmod, slow in DALI). H is torchvision's: from the maximum channel (R before G
    before B on ties), 0 for grey pixels."""
    from nvidia.dali import fn, math, types

    r, g, b = (
        fn.coord_transform(x, M=row, dtype=types.FLOAT, device=device)
        for row in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    )
    maxc, minc = math.max(math.max(r, g), b), math.min(math.min(r, g), b)
    crange = maxc - minc
    # 6·H·crange: (G − B) where R is the maximum, (B − R) + 2·crange where G is, else (R − G) + 4·crange
    num = (r - g) + crange * 4.0
    num = num + (maxc == g) * (((b - r) + crange * 2.0) - num)
    num = num + (maxc == r) * ((g - b) - num)
    h6 = num / (crange + (crange == 0.0))  # 6·H in [-1, 5]
    out = []
    for c in range(3):  # R, G, B: centres (3, 5, 1) - 6·hue, from the host (the shift moves the centre, not H)
        d = math.abs(h6 - centres[c])  # in [0, 9)
        d = math.min(d, math.abs(6.0 - d))  # circular distance
        out.append(maxc - crange * math.clamp(2.0 - d, 0.0, 1.0))
    return _floor_u8(fn.cat(*out, axis=2, device=device), device, scale=255.999 / 255.0)  # to_dtype's 255.999


def _grayscale(images, device: str):
    """torchvision's ``rgb_to_grayscale(…, num_output_channels=3)`` on uint8 images (one op)."""
    return _grey(images, 3, device)


def _solarize(images, threshold: int, device: str):
    from nvidia.dali import fn, types

    # 255 - x == x XOR 255 for uint8; apply the XOR only where x >= threshold
    mask = fn.cast(images >= threshold, dtype=types.UINT8, device=device) * 255
    return fn.cast(images ^ fn.cast(mask, dtype=types.UINT8, device=device), dtype=types.UINT8, device=device)
