"""Per-view augmentation as DALI operators, and the presets of the paper (see paper-notes.md).

One function, :func:`augment_view`, is used once per view; an asymmetric recipe (BYOL) is just two
:class:`ViewAug` configs. The order of operations is the SimCLR / solo-learn one:

    RandomResizedCrop (bicubic) → ColorJitter (p) → Grayscale (p) → GaussianBlur (p)
    → Solarization (p) → HorizontalFlip (p) → Normalize (CHW or HWC float)

torchvision semantics where they matter:

* RandomResizedCrop: area fraction uniform in ``crop_scale``, log-uniform aspect ratio in
  ``crop_ratio``, 10 attempts then a centre crop (DALI's ``random_resized_crop`` does the same).
* ColorJitter: brightness, contrast and saturation factors uniform in ``[max(0, 1−x), 1+x]``,
  hue offset uniform in ``[−h, h]`` turns (``h·360`` degrees). Contrast blends with the image's
  mean grey level, like torchvision (not DALI's default mid-grey). torchvision applies the four in
  a random order; here the order is fixed (brightness, contrast, saturation, hue), as in
  solo-learn's DALI pipeline.
* Grayscale: ITU-R 601 luma replicated to three channels.
* Gaussian blur: sigma uniform in ``blur_sigma``, kernel sized from sigma by DALI.
* Solarization: pixels ``>= 128`` become ``255 − x``.

Probabilities of exactly 0 or 1 are resolved when the pipeline is built (no per-sample branch);
others use DALI conditionals (``enable_conditionals=True`` in the pipeline).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ViewAug:
    """The augmentation of one view (torchvision meaning for every field)."""

    size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def __post_init__(self):
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"augmentation {name}={v}: a probability must lie in [0, 1]")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augmentation crop_scale={self.crop_scale}: need 0 < min <= max <= 1")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"augmentation crop_ratio={self.crop_ratio}: need 0 < min <= max")
        if self.size < 1:
            raise ValueError(f"augmentation size={self.size}: must be >= 1")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError("augmentation jitter: brightness/contrast/saturation >= 0 and 0 <= hue <= 0.5")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"augmentation blur_sigma={self.blur_sigma}: need 0 < min <= max")


@dataclass(frozen=True)
class AugConfig:
    views: tuple[ViewAug, ...]

    @property
    def size(self) -> int:
        return self.views[0].size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SYMMETRIC = dict(crop_scale=(0.08, 1.0), jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                  gray_p=0.2, blur_p=0.5, solarize_p=0.0)
_ASYMMETRIC = dict(crop_scale=(0.08, 1.0), jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                   gray_p=0.2, blur_p=0.0)
PRESETS: dict[str, tuple[dict, ...]] = {
    # SimCLR / MoCo: two identical views (blur p 0.5 as in the AdaInf release's CIFAR configs)
    "simclr": (_SYMMETRIC, _SYMMETRIC),
    # AdaInf: weaker augmentation for the inflated set (min area 0.2, jitter strength 0.5, p 0.4)
    "simclr-adainf": ({**_SYMMETRIC, "crop_scale": (0.2, 1.0), "jitter_p": 0.4, "brightness": 0.4,
                       "contrast": 0.4, "saturation": 0.4, "hue": 0.1},) * 2,
    # BYOL / Barlow Twins: asymmetric, solarization on the second view only (no blur on CIFAR)
    "byol": ({**_ASYMMETRIC, "solarize_p": 0.0}, {**_ASYMMETRIC, "solarize_p": 0.2}),
    "byol-adainf": ({**_ASYMMETRIC, "crop_scale": (0.2, 1.0), "jitter_p": 0.4, "solarize_p": 0.0},
                    {**_ASYMMETRIC, "crop_scale": (0.2, 1.0), "jitter_p": 0.4, "solarize_p": 0.2}),
}
PRESET_NAMES = tuple(PRESETS)
_FIELDS = {f.name for f in dataclasses.fields(ViewAug)}
_SHORTCUTS = ("crop_min_scale", "jitter_strength")


def preset(name: str, **overrides) -> AugConfig:
    """A named recipe with any knob overridden.

    ``overrides`` are :class:`ViewAug` field names (applied to every view), ``viewN_<field>``
    (N = 1, 2, …, one view only), ``crop_min_scale`` (lower end of ``crop_scale``),
    ``jitter_strength`` (multiplies the preset's brightness, contrast, saturation and hue) and
    ``num_views``. ``None`` values are ignored, so CLI options can be passed straight through.
    """
    if name not in PRESETS:
        raise ValueError(f"augmentation preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = [dict(v) for v in PRESETS[name]]
    num_views = int(overrides.pop("num_views", len(base)))
    if num_views < 1:
        raise ValueError(f"num_views={num_views}: need at least one view")
    base = [dict(base[min(i, len(base) - 1)]) for i in range(num_views)]
    per_view: dict[int, dict] = {}
    for key, value in overrides.items():
        if key.startswith("view") and "_" in key and key[4:key.index("_")].isdigit():
            i, field = int(key[4:key.index("_")]) - 1, key[key.index("_") + 1:]
            if not 0 <= i < num_views:
                raise ValueError(f"augmentation override {key}: there are only {num_views} views")
            per_view.setdefault(i, {})[field] = value
        else:
            for i in range(num_views):
                per_view.setdefault(i, {})[key] = value
    views = []
    for i, cfg in enumerate(base):
        ov = per_view.get(i, {})
        unknown = set(ov) - _FIELDS - set(_SHORTCUTS)
        if unknown:
            raise ValueError(f"augmentation override {sorted(unknown)[0]!r} is unknown; known: "
                             f"{', '.join(sorted(_FIELDS | set(_SHORTCUTS)))}")
        if "jitter_strength" in ov:
            s = float(ov["jitter_strength"])
            for k in ("brightness", "contrast", "saturation", "hue"):
                cfg[k] = cfg.get(k, getattr(ViewAug, k)) * s
        if "crop_min_scale" in ov:
            cfg["crop_scale"] = (float(ov["crop_min_scale"]), cfg.get("crop_scale", (0.08, 1.0))[1])
        cfg.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in ov.items() if k in _FIELDS})
        views.append(ViewAug(**cfg))
    return AugConfig(tuple(views))


# ---------------------------------------------------------------------------------------------
# DALI graph (called inside a @pipeline_def with enable_conditionals=True)
# ---------------------------------------------------------------------------------------------


def augment_view(images, view: ViewAug, device: str = "cpu", layout: str = "CHW"):
    """One augmented view of a batch of decoded HWC uint8 RGB images (a DALI DataNode).

    ``device`` is where the ops run ("cpu" or "gpu"; the images must already be there).
    Returns normalised float32 in ``layout`` ("CHW" or "HWC").
    """
    from nvidia.dali import fn, types

    images = fn.random_resized_crop(images, device=device, size=(view.size, view.size),
                                    random_area=list(view.crop_scale), random_aspect_ratio=list(view.crop_ratio),
                                    interp_type=types.INTERP_CUBIC, antialias=True)
    images = _maybe(images, view.jitter_p, lambda x: _color_jitter(x, view, device))
    images = _maybe(images, view.gray_p, lambda x: _grayscale(x, device))
    images = _maybe(images, view.blur_p, lambda x: fn.gaussian_blur(
        x, device=device, sigma=fn.random.uniform(range=list(view.blur_sigma))))
    images = _maybe(images, view.solarize_p, lambda x: _solarize(x, device))
    mirror = fn.random.coin_flip(probability=view.flip_p) if 0 < view.flip_p < 1 else int(view.flip_p >= 1)
    return fn.crop_mirror_normalize(images, device=device, mirror=mirror, dtype=types.FLOAT, output_layout=layout,
                                    mean=[255.0 * m for m in view.mean], std=[255.0 * s for s in view.std])


def _maybe(images, p: float, op):
    """``op(images)`` with probability ``p`` per sample (a DALI conditional unless p is 0 or 1)."""
    from nvidia.dali import fn

    if p <= 0:
        return images
    if p >= 1:
        return op(images)
    if fn.random.coin_flip(probability=p):
        images = op(images)
    return images


def _color_jitter(images, view: ViewAug, device: str):
    from nvidia.dali import fn, types

    if view.brightness > 0:
        images = _blend(images, 0.0, _factor(view.brightness, device), device)  # torchvision: blend with black
    if view.contrast > 0:
        # torchvision blends with the image's mean grey level (a per-sample scalar), not mid-grey
        grey = fn.color_space_conversion(images, device=device, image_type=types.RGB, output_type=types.GRAY)
        centre = fn.reductions.mean(fn.cast(grey, dtype=types.FLOAT, device=device), device=device)
        images = _blend(images, centre, _factor(view.contrast, device), device)
    if view.saturation > 0:
        images = _blend(images, _grayscale(images, device), _factor(view.saturation, device), device)
    if view.hue > 0:
        images = fn.hsv(images, device=device, hue=fn.random.uniform(range=[-360.0 * view.hue, 360.0 * view.hue]))
    return images


def _factor(x: float, device: str):
    from nvidia.dali import fn

    f = fn.random.uniform(range=[max(0.0, 1.0 - x), 1.0 + x])
    return f.gpu() if device == "gpu" else f


def _blend(images, other, factor, device: str):
    """torchvision's ``_blend``: ``clamp(f·x + (1 − f)·other, 0, 255)`` back to uint8."""
    from nvidia.dali import fn, math, types

    out = factor * fn.cast(images, dtype=types.FLOAT, device=device) + (1.0 - factor) * other
    return fn.cast(math.clamp(out, 0.0, 255.0), dtype=types.UINT8, device=device)


def _grayscale(images, device: str):
    from nvidia.dali import fn, types

    grey = fn.color_space_conversion(images, device=device, image_type=types.RGB, output_type=types.GRAY)
    return fn.cat(grey, grey, grey, axis=2, device=device)


def _solarize(images, device: str):
    from nvidia.dali import fn, types

    # 255 - x == x XOR 255 for uint8; apply the XOR only where x >= 128
    mask = fn.cast(images >= 128, dtype=types.UINT8, device=device) * 255
    return fn.cast(images ^ fn.cast(mask, dtype=types.UINT8, device=device), dtype=types.UINT8, device=device)
