"""Every random parameter of a batch, drawn on the host, and the one contract saying where each one travels.

Randomness lives on the host, not in DALI or on the GPU: :func:`sample_view_params` draws every per-sample
parameter of a view (crop box, flags, jitter factors and order, blur sigma) in numpy, vectorised over the
batch, from :func:`augment_rng` — a counter-based Philox generator keyed by ``(seed, epoch, step)``. The draws
are made for the whole *global* batch of the step (every rank draws them all and keeps its part: ``G`` draws are
microseconds of numpy), so a view is a pure function of (seed, epoch, step, position in the global batch, image),
whatever the number of processes, and a resumed run — on any number of processes — reproduces the uninterrupted
one exactly.

Where the draws go is decided once per recipe by :class:`ParamLayout` (a frozen object built from the
:class:`~loaders.recipe.augment.AugConfig`) and asked by both sides, never re-derived:

* the **crop boxes** of every view, one ``(B, 4·V)`` float32 array ``[y0, x0, y1, x1]`` per view, are what
  the DALI graph reads (``loaders.batch.graph``: ROI resize);
* the **colour parameters** of every view, one ``(B, P)`` float32 array, are what the colour stage reads
  (``loaders.batch.colour``), column by column as :meth:`ViewColumns.slice` says. Which columns a view has
  depends only on its config: a probability of 0 or 1 needs no flag, an adjustment of strength 0 no factor.

The colour columns hold the draws already in the form the stage computes with, so the stage has no
per-sample logic and no data-dependent shape: ColorJitter's drawn order as *slots* (:func:`jitter_slots`),
PIL's Gaussian blur as per-sample integer tap weights (:func:`pil_blur_taps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loaders.recipe.augment import JITTER_OPS, AugConfig, ViewAug

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


#: The rank's place in version 1's key ``(seed, epoch, rank, step)``, now always this: the draws of a step are the
#: global batch's, and a one-process run of version 1 (rank 0 drew them all) is continued exactly by this one.
_GLOBAL_DRAWS = 0


def augment_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The counter-based generator of one training step's augmentation draws, for its whole global batch.

    A Philox generator keyed by ``SeedSequence([stream, seed, epoch, 0, step])``: the draws of a step depend
    on nothing else (not on earlier steps, threads, the number of processes or where a run was resumed).
    """
    entropy = [_AUG_STREAM] + [int(x) % 2**64 for x in (seed, epoch, _GLOBAL_DRAWS, step)]
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


# ---------------------------------------------------------------------------------------------------
# The draws in the form the colour stage computes with
# ---------------------------------------------------------------------------------------------------
def num_slots(view: ViewAug) -> int:
    """Blend slots of the colour jitter: one per adjustment without hue, else two per non-hue adjustment
    (those drawn before hue, then those drawn after it)."""
    n = len([k for k in view.jitter_ops if k != "hue"])
    return 2 * n if "hue" in view.jitter_ops else n


def jitter_slots(view: ViewAug, params: dict) -> np.ndarray:
    """The drawn ColorJitter order and factors as blend slots, (B, S, 3) float32 ``(f, a, b)`` per slot:
    ``y = f·x + a·mean(grey(x)) + b·grey(x)`` — brightness ``(f, 0, 0)``, contrast ``(f, 1 − f, 0)``,
    saturation ``(f, 0, 1 − f)`` (torchvision's ``_blend``: ``1 − f`` in double from the float32 factor,
    then float32, as torch does with a Python scalar) and ``(1, 0, 0)``, an exact identity, for a slot a
    sample does not use. With hue, slots ``0 … S/2 − 1`` hold the adjustments drawn before hue, slots
    ``S/2 …`` those drawn after, each half in drawn order. Samples the jitter skips are handled by the
    ``jitter`` flag (they get identity slots too)."""
    active = [JITTER_OPS.index(k) for k in view.jitter_ops]
    hue = JITTER_OPS.index("hue")
    order = params["jitter_order"]
    n = len(order)
    on = params["jitter"] if view.jitter_p < 1 else np.ones(n, bool)
    order = order[np.isin(order, active)].reshape(n, len(active))  # the view's adjustments, in drawn order
    f32 = np.stack([np.asarray(params[k], np.float64).astype(np.float32) for k in JITTER_OPS], axis=1)  # (B, 4)
    blend = [i for i in active if i != hue]
    if hue not in active:
        slot_ops = order
    else:
        k = len(blend)
        seq = order[order != hue].reshape(n, k)  # the other adjustments, drawn order
        before = np.argmax(order == hue, axis=1)[:, None]  # how many come before hue
        j = np.arange(k)[None, :]
        pre = np.where(j < before, seq, -1)
        post = np.where(j < k - before, np.take_along_axis(seq, np.minimum(before + j, k - 1), axis=1), -1)
        slot_ops = np.concatenate([pre, post], axis=1)
    slot_ops = np.where(on[:, None], slot_ops, -1)
    f = np.where(slot_ops >= 0, np.take_along_axis(f32, np.maximum(slot_ops, 0), axis=1), np.float32(1))
    rest = (1.0 - f.astype(np.float64)).astype(np.float32)
    zero = np.float32(0)
    a = np.where(slot_ops == JITTER_OPS.index("contrast"), rest, zero)
    b = np.where(slot_ops == JITTER_OPS.index("saturation"), rest, zero)
    return np.stack([f, a, b], axis=2).astype(np.float32)


#: PIL's GaussianBlur: three passes of an "extended" box blur (Gwosdek et al. 2011) per axis
PIL_BLUR_PASSES = 3


def pil_box_radius(sigma) -> np.ndarray:
    """PIL's ``_gaussian_blur_radius(sigma, 3)`` (``src/libImaging/BoxBlur.c``), float32 as in C: the
    fractional radius of the box whose three passes approximate a Gaussian of standard deviation ``sigma``."""
    f = np.float32
    s = np.asarray(sigma, np.float64).astype(f)  # PIL parses the radius as a C float
    sigma2 = (s * s / f(PIL_BLUR_PASSES)).astype(f)
    big_l = np.sqrt(12.0 * sigma2.astype(np.float64) + 1.0).astype(f)  # 12.0 is a double in C
    small_l = np.floor((big_l.astype(np.float64) - 1.0) / 2.0).astype(f)
    a = ((f(2) * small_l + f(1)) * (small_l * (small_l + f(1)) - f(3) * sigma2)).astype(f)
    a = (a / (f(6) * (sigma2 - (small_l + f(1)) * (small_l + f(1))))).astype(f)
    return (small_l + a).astype(f)


def blur_reach(view: ViewAug) -> int:
    """Taps on each side of a pixel that PIL's blur can reach for the view's largest sigma."""
    return int(pil_box_radius(view.blur_sigma[1])) + 1


def pil_blur_taps(view: ViewAug, sigma) -> np.ndarray:
    """Per-sample integer weights (B, 2K + 1) of one pass of PIL's box blur, K = :func:`blur_reach`:
    ``ww = ⌊2²⁴ / (2r + 1)⌋`` (a float32 division, as C does) on the ``2⌊r⌋ + 1`` centre taps and
    ``fw = (2²⁴ − (2⌊r⌋ + 1)·ww) / 2`` on the two next to them; a pass is then
    ``(Σ w·x + 2²³) >> 24`` with edge pixels repeated (``ImagingHorizontalBoxBlur``). Stored as float32:
    every weight is an integer below 2²⁴, exact."""
    reach = blur_reach(view)
    r = pil_box_radius(sigma)
    ri = r.astype(np.int64)
    ww = np.trunc(np.float32(1 << 24) / (r * np.float32(2) + np.float32(1))).astype(np.int64)
    fw = ((1 << 24) - (ri * 2 + 1) * ww) // 2
    k = np.abs(np.arange(-reach, reach + 1))[None, :]
    taps = np.where(k <= ri[:, None], ww[:, None], np.where(k == ri[:, None] + 1, fw[:, None], 0))
    return taps.astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# The contract: which parameters a view feeds, in which columns
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewColumns:
    """The colour-stage columns of one view inside the packed (B, P) array: ``(name, start, width)``.

    Names: ``flip``, ``jitter`` (flags, 0/1), ``slots`` (S·3 blend coefficients, :func:`jitter_slots`),
    ``hue`` (torchvision's hue factor), ``gray``, ``blur`` (flags), ``taps`` (2K + 1 blur weights,
    :func:`pil_blur_taps`), ``solarize`` (flag). A flag is present only when its probability is strictly
    between 0 and 1; an adjustment only when its strength is positive."""

    view: ViewAug
    columns: tuple[tuple[str, int, int], ...]

    @classmethod
    def build(cls, view: ViewAug, start: int = 0) -> ViewColumns:
        widths = []
        if 0 < view.flip_p < 1:
            widths.append(("flip", 1))
        if view.jitter_p > 0 and view.jitter_ops:
            if view.jitter_p < 1:
                widths.append(("jitter", 1))
            if num_slots(view):
                widths.append(("slots", 3 * num_slots(view)))
            if "hue" in view.jitter_ops:
                widths.append(("hue", 1))
        if 0 < view.gray_p < 1:
            widths.append(("gray", 1))
        if view.blur_p > 0:
            if view.blur_p < 1:
                widths.append(("blur", 1))
            widths.append(("taps", 2 * blur_reach(view) + 1))
        if 0 < view.solarize_p < 1:
            widths.append(("solarize", 1))
        cols, at = [], start
        for name, width in widths:
            cols.append((name, at, width))
            at += width
        return cls(view, tuple(cols))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.columns)

    @property
    def stop(self) -> int:
        return self.columns[-1][1] + self.columns[-1][2] if self.columns else 0

    def slice(self, packed, name: str):
        """Columns ``name`` of ``packed`` (numpy or torch, (B, P)): (B, width)."""
        for n, start, width in self.columns:
            if n == name:
                return packed[:, start : start + width]
        raise KeyError(f"view has no {name!r} parameter (has {', '.join(self.names) or 'none'})")

    def fill(self, out: np.ndarray, params: dict[str, np.ndarray]) -> None:
        """Write the drawn ``params`` (:func:`sample_view_params`) into this view's columns of ``out``."""
        values = {
            "flip": lambda: params["flip"],
            "jitter": lambda: params["jitter"],
            "slots": lambda: jitter_slots(self.view, params).reshape(len(out), -1),
            "hue": lambda: np.asarray(params["hue"], np.float64).astype(np.float32),
            "gray": lambda: params["gray"],
            "blur": lambda: params["blur"],
            "taps": lambda: pil_blur_taps(self.view, params["sigma"]),
            "solarize": lambda: params["solarize"],
        }
        for name, start, width in self.columns:
            out[:, start : start + width] = np.asarray(values[name]()).reshape(len(out), width)


@dataclass(frozen=True)
class ParamLayout:
    """Where every drawn parameter of a recipe travels: crop boxes to DALI, the rest to the colour stage.

    Built once from the :class:`AugConfig` (:meth:`of`); :meth:`draw` makes both arrays of a planned batch."""

    aug: AugConfig
    views: tuple[ViewColumns, ...]
    width: int  # P, the colour columns of all views

    @classmethod
    def of(cls, aug: AugConfig) -> ParamLayout:
        views, start = [], 0
        for view in aug.views:
            cols = ViewColumns.build(view, start)
            views.append(cols)
            start = max(start, cols.stop)
        return cls(aug, tuple(views), start)

    def draw(self, rng: np.random.Generator, heights, widths, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(crops (B, 4·V), colour (B, P))`` float32 for images of ``heights`` × ``widths`` (0: unknown),
        view after view from ``rng``. ``crops`` row: ``[y0, x0, y1, x1]`` per view, in pixels, or — with
        ``relative`` — in units of each image's size (unknown sizes are relative already)."""
        n = len(heights)
        crops = np.empty((n, 4 * len(self.views)), np.float32)
        colour = np.zeros((n, self.width), np.float32)
        size = np.stack([np.asarray(heights, np.float64), np.asarray(widths, np.float64)], axis=1)
        for v, cols in enumerate(self.views):
            p = sample_view_params(rng, cols.view, heights, widths)
            box = np.concatenate([p["crop_start"], p["crop_end"]], axis=1)
            if relative:
                box = np.where(np.tile(size, 2) > 0, box / np.where(np.tile(size, 2) > 0, np.tile(size, 2), 1), box)
            crops[:, 4 * v : 4 * v + 4] = box
            cols.fill(colour, p)
        return crops, colour
