"""Per-view augmentation: parameters drawn on the host, applied by DALI operators; the paper's presets.

One function, :func:`augment_view`, is used once per view; an asymmetric recipe (BYOL) is just two
:class:`ViewAug` configs. The order of operations is the SimCLR / solo-learn one:

    RandomResizedCrop (bicubic) → ColorJitter (p) → Grayscale (p) → GaussianBlur (p)
    → Solarization (p) → HorizontalFlip (p) → Normalize (CHW or HWC float)

Randomness lives on the host, not in DALI: :func:`sample_view_params` draws every per-sample
parameter of a view (crop box, flags, jitter factors, hue, blur sigma) in numpy, vectorised over
the batch, from :func:`augment_rng` — a counter-based Philox generator keyed by
``(seed, epoch, rank, step)``. The loader feeds the arrays to DALI through its external source
(:func:`dali_param_arrays`, in :func:`dali_param_names` order) as argument inputs and conditions;
the DALI graph has no random op, so a view is a pure function of (seed, epoch, rank, step, image)
and a resumed run reproduces the uninterrupted one exactly. Benchmarks and audits can call the
sampler directly (pure numpy, no DALI).

torchvision semantics where they matter:

* RandomResizedCrop: ``RandomResizedCrop.get_params`` — area fraction uniform in ``crop_scale``,
  log-uniform aspect ratio in ``crop_ratio``, 10 attempts on the image's real H×W (from the
  manifest), then a centre crop with the ratio clamped; the integer box ``[start, end)`` is
  resampled to ``size×size`` by ``fn.resize`` (ROI, bicubic, antialiased). Sources whose manifest
  has no ``image_size`` get boxes in relative units of an assumed square image (see
  :func:`sample_view_params`).
* ColorJitter: brightness, contrast and saturation factors uniform in ``[max(0, 1−x), 1+x]``,
  hue offset uniform in ``[−h, h]`` turns (``h·360`` degrees). Contrast blends with the image's
  mean grey level, like torchvision (not DALI's default mid-grey). torchvision applies the four in
  a random order; here the order is fixed (brightness, contrast, saturation, hue), as in
  solo-learn's DALI pipeline.
* Grayscale: ITU-R 601 luma replicated to three channels.
* Gaussian blur: sigma uniform in ``blur_sigma``, kernel sized from sigma by DALI.
* Solarization: pixels ``>= 128`` become ``255 − x``.

Probabilities of exactly 0 or 1 are resolved when the pipeline is built (no per-sample branch, no
flag fed); others use DALI conditionals (``enable_conditionals=True`` in the pipeline) on the
fed boolean flags.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

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
# Host-side parameter sampler (pure numpy, vectorised over the batch)
# ---------------------------------------------------------------------------------------------

#: Every key of :func:`sample_view_params`' result.
PARAM_KEYS = ("crop_start", "crop_end", "flip", "jitter", "brightness", "contrast", "saturation", "hue", "gray",
              "blur", "sigma", "solarize")
_RRC_ATTEMPTS = 10
# columns of the one (B, _NUM_UNIFORMS) block of uniforms drawn per view and batch
_AREA, _RATIO = slice(0, _RRC_ATTEMPTS), slice(_RRC_ATTEMPTS, 2 * _RRC_ATTEMPTS)
(_TOP, _LEFT, _FLIP, _JITTER, _BRIGHT, _CONTRAST, _SAT, _HUE, _GRAY, _BLUR, _SIGMA,
 _SOLAR) = range(2 * _RRC_ATTEMPTS, 2 * _RRC_ATTEMPTS + 12)
_NUM_UNIFORMS = 2 * _RRC_ATTEMPTS + 12
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

    ``heights`` / ``widths``: (B,) image sizes in pixels, 0 where unknown. One ``rng.random((B, 32))``
    block is drawn per call, whatever the view's probabilities, so the stream does not depend on them.
    Returns a dict of (B,) arrays (``crop_start`` / ``crop_end``: (B, 2), ``(y, x)`` order):

    * ``crop_start``, ``crop_end`` — torchvision's ``RandomResizedCrop.get_params``: area fraction
      uniform in ``crop_scale``, log-uniform aspect ratio (w/h) in ``crop_ratio``, the first of 10
      attempts whose rounded box fits, else the centre crop with the ratio clamped into range. The box is
      ``[start, end)`` in whole pixels where the size is known; where it is unknown (0) it is computed
      in relative units (0…1) of an assumed *square* image without rounding — the area fraction is then
      exact, the aspect ratio is off by the image's own ``W/H``.
    * ``flip``, ``jitter``, ``gray``, ``blur``, ``solarize`` — bool, true with the view's probability.
    * ``brightness``, ``contrast``, ``saturation`` — factors uniform in ``[max(0, 1 − x), 1 + x]``;
      ``hue`` — offset uniform in ``[−h, h]`` turns, in degrees; ``sigma`` — uniform in ``blur_sigma``.
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

    out.update(flip=u[:, _FLIP] < view.flip_p, jitter=u[:, _JITTER] < view.jitter_p,
               brightness=factor(view.brightness, _BRIGHT), contrast=factor(view.contrast, _CONTRAST),
               saturation=factor(view.saturation, _SAT), hue=(2.0 * u[:, _HUE] - 1.0) * (360.0 * view.hue),
               gray=u[:, _GRAY] < view.gray_p, blur=u[:, _BLUR] < view.blur_p,
               sigma=view.blur_sigma[0] + (view.blur_sigma[1] - view.blur_sigma[0]) * u[:, _SIGMA],
               solarize=u[:, _SOLAR] < view.solarize_p)
    return out


def dali_param_names(view: ViewAug) -> tuple[str, ...]:
    """The parameters the DALI graph of ``view`` consumes (p of 0 or 1 needs no flag; unused factors
    are not fed)."""
    names = ["crop_start", "crop_end"]
    if 0 < view.flip_p < 1:
        names.append("flip")
    if _jitter_p(view) > 0:
        names += ["jitter"] if _jitter_p(view) < 1 else []
        names += [k for k in ("brightness", "contrast", "saturation", "hue") if getattr(view, k) > 0]
    if 0 < view.gray_p < 1:
        names.append("gray")
    if view.blur_p > 0:
        names += (["blur"] if view.blur_p < 1 else []) + ["sigma"]
    if 0 < view.solarize_p < 1:
        names.append("solarize")
    return tuple(names)


def dali_param_arrays(view: ViewAug, params: dict[str, np.ndarray], heights, widths,
                      relative: bool) -> list[np.ndarray]:
    """``params`` as the external-source batches :func:`augment_view` expects, in
    :func:`dali_param_names` order: flags as bool (conditions), ``flip`` as int32 (``mirror``), the rest
    float32; with ``relative`` the crop box is divided by the known image sizes (unknown ones already are)."""
    out = []
    for name in dali_param_names(view):
        a = params[name]
        if name in ("crop_start", "crop_end"):
            if relative:
                size = np.stack([np.asarray(heights, np.float64), np.asarray(widths, np.float64)], axis=1)
                a = np.where(size > 0, a / np.where(size > 0, size, 1.0), a)
            a = np.ascontiguousarray(a, dtype=np.float32)
        elif name == "flip":
            a = a.astype(np.int32)
        elif a.dtype != np.bool_:
            a = a.astype(np.float32)
        out.append(a)
    return out


def _jitter_p(view: ViewAug) -> float:
    """The jitter probability, 0 when every jitter strength is 0 (the op would do nothing)."""
    return view.jitter_p if max(view.brightness, view.contrast, view.saturation, view.hue) > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# DALI graph (called inside a @pipeline_def with enable_conditionals=True)
# ---------------------------------------------------------------------------------------------


def augment_view(images, view: ViewAug, params: dict, device: str = "cpu", layout: str = "CHW",
                 relative: bool = False):
    """One augmented view of a batch of decoded HWC uint8 RGB images (a DALI DataNode).

    ``params`` maps each name of :func:`dali_param_names` to a CPU DataNode (an external-source output
    fed with :func:`dali_param_arrays`): no DALI random op is used, so the view is a pure function of
    the images and the parameters. ``device`` is where the data ops run ("cpu" or "gpu"; the images must
    already be there; parameters stay on the CPU as argument inputs and predicates). ``relative``: the
    crop box is in relative units. Returns normalised float32 in ``layout`` ("CHW" or "HWC").
    """
    from nvidia.dali import fn, types

    # RandomResizedCrop: resample the [start, end) box straight to size×size (one op, no copy of the crop)
    images = fn.resize(images, device=device, size=(view.size, view.size), roi_start=params["crop_start"],
                       roi_end=params["crop_end"], roi_relative=relative, interp_type=types.INTERP_CUBIC,
                       antialias=True)
    images = _maybe(images, _jitter_p(view), params.get("jitter"), lambda x: _color_jitter(x, view, params, device))
    images = _maybe(images, view.gray_p, params.get("gray"), lambda x: _grayscale(x, device))
    images = _maybe(images, view.blur_p, params.get("blur"),
                    lambda x: fn.gaussian_blur(x, device=device, sigma=params["sigma"]))
    images = _maybe(images, view.solarize_p, params.get("solarize"), lambda x: _solarize(x, device))
    mirror = params["flip"] if 0 < view.flip_p < 1 else int(view.flip_p >= 1)
    return fn.crop_mirror_normalize(images, device=device, mirror=mirror, dtype=types.FLOAT, output_layout=layout,
                                    mean=[255.0 * m for m in view.mean], std=[255.0 * s for s in view.std])


def _maybe(images, p: float, flag, op):
    """``op(images)`` where ``flag`` (a per-sample bool DataNode) is set; p of 0 or 1 needs no branch."""
    if p <= 0:
        return images
    if p >= 1:
        return op(images)
    if flag:
        images = op(images)
    return images


def _color_jitter(images, view: ViewAug, params: dict, device: str):
    """Brightness and contrast in one ``brightness_contrast``, saturation and hue in one ``hsv``.

    ``brightness_contrast`` computes ``b·(centre + c·(x − centre))``; with ``centre`` the image's mean
    grey level this equals torchvision's brightness-then-contrast (contrast around the brightened
    image's mean grey ``b·centre``), up to torchvision's intermediate clamp. Saturation scales S in HSV
    (as solo-learn's DALI pipeline does) instead of torchvision's blend with the grey image.
    """
    from nvidia.dali import fn, types

    bc = {}
    if view.brightness > 0:
        bc["brightness"] = params["brightness"]
    if view.contrast > 0 and device == "cpu":  # the centre must be a CPU argument input: computed there
        grey = fn.color_space_conversion(images, device=device, image_type=types.RGB, output_type=types.GRAY)
        bc["contrast"] = params["contrast"]
        bc["contrast_center"] = fn.reductions.mean(grey, dtype=types.FLOAT, device=device)
    if bc:
        images = fn.brightness_contrast(images, device=device, dtype=types.UINT8, **bc)
    if view.contrast > 0 and device != "cpu":  # on the GPU: blend with the brightened image's mean grey
        grey = fn.color_space_conversion(images, device=device, image_type=types.RGB, output_type=types.GRAY)
        centre = fn.reductions.mean(fn.cast(grey, dtype=types.FLOAT, device=device), device=device)
        images = _blend(images, centre, _on(params["contrast"], device), device)
    hsv = {}
    if view.saturation > 0:
        hsv["saturation"] = params["saturation"]
    if view.hue > 0:
        hsv["hue"] = params["hue"]
    if hsv:
        images = fn.hsv(images, device=device, dtype=types.UINT8, **hsv)
    return images


def _on(scalar, device: str):
    """A per-sample CPU scalar as an operand of arithmetic on ``device`` data."""
    return scalar.gpu() if device == "gpu" else scalar


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
