"""The colour stage: the release's per-view transform after the crop, as one batched tensor program.

DALI hands over each view's uint8 crops ``(B, S, S, 3)``; this stage applies the rest of the release's
transform (``build_transform_pipeline`` in ``solo-learn/solo/data/pretrain_dataloader.py``, PKU-ML/adainf)
on the device the model runs on, every sample with its own host-drawn parameters (``loaders.batch.params``):

    ColorJitter (p, random order) → Grayscale (p) → GaussianBlur (p) → Solarization (p)
    → HorizontalFlip (p) → ToTensor + Normalize

Shape of the program: no loop over samples, no boolean indexing, no data-dependent shape. Every
per-sample choice is a blend weight or a ``torch.where`` over a per-sample flag, so the number of kernels
per batch is fixed and the whole stage can be compiled (``torch.compile``: Triton on a GPU, C++ on the
CPU) or captured. Values stay float32 holding the integers 0…255 that torchvision's uint8 ops would hold
between operations; each op ends with torchvision's cast (clamp, truncate).

Semantics, op by op (tests/test_loaders_colour.py holds each to its reference on real CIFAR-10 and EDM images):

* ColorJitter — torchvision's functional tensor ops on uint8 images in the drawn order. Brightness,
  contrast and saturation are ``_blend(x, other, f)``, written for a whole batch as *slots*
  ``floor(clamp(f·x + a·mean(grey) + b·grey))`` whose per-sample coefficients make each slot the
  adjustment that sample drew there, or the identity (``loaders.batch.params.jitter_slots``). Hue, the
  expensive one, has one place: the slots before it take the adjustments a sample drew before hue, the
  slots after it the rest. ``adjust_hue`` is torchvision's own algorithm (``_rgb_to_hsv``, shift modulo 1,
  ``_hsv_to_rgb``, ×255.999, truncate) with its sector table as selects instead of a gather.
* Grayscale — ``rgb_to_grayscale`` (0.2989 R + 0.587 G + 0.114 B, truncated), three channels.
* GaussianBlur — the release's blur is PIL's ``ImageFilter.GaussianBlur(radius=sigma)``: three passes
  of an extended box blur per axis with 24-bit fixed-point weights and edge pixels repeated, each pass
  rounded to uint8 (``src/libImaging/BoxBlur.c``). It is computed here exactly so, as weighted shifted
  copies (``loaders.batch.params.pil_blur_taps``) in exact integer arithmetic on float32: equal to PIL's output.
* Solarization — ``ImageOps.solarize`` (threshold 128): ``255 − x`` where ``x ≥ 128``.
* Flip, then ``x / 255``, ``(x − mean) / std`` (``ToTensor``, ``Normalize``).
"""

from __future__ import annotations

import functools

import torch

from loaders.batch.params import ParamLayout, ViewColumns, num_slots
from loaders.recipe.augment import AugConfig, ViewAug

_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_SOLARIZE_MAX = 255.0


def _grey(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_rgb_to_grayscale_image`` before its cast: (B, 1, H, W) float32, not yet truncated."""
    r, g, b = x.unbind(1)
    return torch.add(torch.add(r * _GREY[0], g, alpha=_GREY[1]), b, alpha=_GREY[2]).unsqueeze(1)


def _u8(y: torch.Tensor) -> torch.Tensor:
    """torchvision's cast of a float result back to uint8: clamp to [0, 255], truncate."""
    return torch.floor(y.clamp(0.0, 255.0))


def _blend_slot(x: torch.Tensor, coef: torch.Tensor, ops: frozenset) -> torch.Tensor:
    """One slot: ``_blend(x, other, f)`` = ``f·x + (1 − f)·other`` with ``other`` black, the mean grey or the
    grey image, written as ``f·x + a·mean + b·grey`` with the sample's (B, 3) ``(f, a, b)``; terms of
    adjustments the view does not have are left out. ``a = b = 0`` gives ``f·x`` exactly."""
    f, a, b = (coef[:, i].view(-1, 1, 1, 1) for i in range(3))
    y = x * f
    if ops & {"contrast", "saturation"}:
        grey = torch.floor(_grey(x))
        # one rounding for each term, as torchvision's ``add_(other, alpha=1 - f)`` (a fused multiply-add)
        if "contrast" in ops:
            y = torch.addcmul(y, grey.mean(dim=(1, 2, 3), keepdim=True), a)
        if "saturation" in ops:
            y = torch.addcmul(y, grey, b)
    return _u8(y)


def _adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue_image`` on uint8-valued float images with a per-sample (B,) ``hue``:
    ``_rgb_to_hsv``, ``h + hue`` modulo 1, ``_hsv_to_rgb``, ``to_dtype`` (×255.999, truncated)."""
    img = x * (1.0 / 255.0)
    r, g, b = img.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    crange = maxc - minc
    ones = torch.ones_like(maxc)
    s = crange / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, crange)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    neq_r, eq_g = maxc != r, maxc == g
    hg = ((rc + 2.0) - bc) * (eq_g & neq_r)
    hr = (bc - gc) * ~neq_r
    hb = ((gc + 4.0) - rc) * (neq_r & ~eq_g)
    h = torch.fmod(((hr + hg) + hb) * (1.0 / 6.0) + 1.0, 1.0)
    h = torch.remainder(h + hue.view(-1, 1, 1), 1.0)
    # _hsv_to_rgb
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = torch.remainder(i, 6.0)
    v = maxc
    sxf = s * f
    one_minus_s = 1.0 - s
    q = ((1.0 - sxf) * v).clamp(0.0, 1.0)
    t = ((sxf + one_minus_s) * v).clamp(0.0, 1.0)
    p = (one_minus_s * v).clamp(0.0, 1.0)

    def pick(table):  # torchvision's select table row: sector i -> one of (v, p, q, t)
        out = table[5]
        for k in (4, 3, 2, 1, 0):
            out = torch.where(i == k, table[k], out)
        return out

    rgb = torch.stack([pick((v, q, p, p, t, v)), pick((t, v, v, q, p, p)), pick((p, p, t, v, v, q))], dim=1)
    return torch.floor(rgb * 255.999)


def color_jitter(x: torch.Tensor, view: ViewAug, cols: ViewColumns, packed: torch.Tensor) -> torch.Tensor:
    """torchvision's ``ColorJitter`` on every sample of ``x``, each in its drawn order (the view's ``slots``
    and ``hue`` columns); which samples it applies to is :func:`apply`'s business."""
    ops = frozenset(view.jitter_ops)
    slots = num_slots(view)
    coef = cols.slice(packed, "slots").reshape(-1, slots, 3) if slots else None
    half = slots // 2 if "hue" in ops else slots
    for k in range(slots):
        if k == half:
            x = _adjust_hue(x, cols.slice(packed, "hue")[:, 0])
        x = _blend_slot(x, coef[:, k], ops)
    if "hue" in ops and half == slots:  # hue alone
        x = _adjust_hue(x, cols.slice(packed, "hue")[:, 0])
    return x


def apply(op, x: torch.Tensor, packed: torch.Tensor, cols: ViewColumns, flag: str, p: float, masked: bool):
    """``op(x, packed)`` for the samples whose ``flag`` column is set (all of them when ``p`` is 1, none
    when it is 0). ``masked``: compute ``op`` for the whole batch and select per sample with
    ``torch.where`` (fixed shapes: what a compiled or captured program needs); otherwise compute it only
    for the selected samples (fewer operations in eager mode). Both give the same values."""
    if p <= 0:
        return x
    if p >= 1:
        return op(x, packed)
    on = cols.slice(packed, flag)[:, 0] > 0.5
    if masked:
        return torch.where(on.view(-1, 1, 1, 1), op(x, packed), x)
    idx = on.nonzero()[:, 0]
    if len(idx) == 0:
        return x
    if len(idx) == len(on):
        return op(x, packed)
    return x.index_copy(0, idx, op(x.index_select(0, idx), packed.index_select(0, idx)))


def _edge_pad(x: torch.Tensor, dim: int, reach: int) -> torch.Tensor:
    """``x`` with its first and last row (``dim`` 2) or column (``dim`` 3) repeated ``reach`` times."""
    n, shape = x.shape[dim], list(x.shape)
    shape[dim] = reach
    return torch.cat([x.narrow(dim, 0, 1).expand(shape), x, x.narrow(dim, n - 1, 1).expand(shape)], dim)


def _box_pass(x: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, dim: int) -> torch.Tensor:
    """One pass of PIL's box blur along ``dim`` with per-sample integer weights ``w = hi·2¹² + lo`` (each
    (B, 2K + 1), below 2¹²): ``(Σ w·x + 2²³) >> 24`` with edge pixels repeated. Exact in float32: both
    partial sums are integers below 2²⁴, and ``⌊(2¹²·Sh + Sl + 2²³) / 2²⁴⌋ = ⌊(Sh + ⌊(Sl + 2²³) / 2¹²⌋) / 2¹²⌋``."""
    reach = (hi.shape[1] - 1) // 2
    n = x.shape[dim]
    xp = _edge_pad(x, dim, reach)
    sh = sl = None
    for k in range(2 * reach + 1):
        shifted = xp.narrow(dim, k, n)
        w_hi, w_lo = hi[:, k].view(-1, 1, 1, 1), lo[:, k].view(-1, 1, 1, 1)
        sh = shifted * w_hi if sh is None else torch.addcmul(sh, shifted, w_hi)
        sl = shifted * w_lo if sl is None else torch.addcmul(sl, shifted, w_lo)
    carry = torch.floor((sl + float(1 << 23)) * (1.0 / (1 << 12)))
    return torch.floor((sh + carry) * (1.0 / (1 << 12)))


def pil_gaussian_blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """PIL's ``GaussianBlur`` on uint8-valued float (B, 3, H, W) images: three passes along each row, then
    three along each column (``ImagingBoxBlur``, which transposes between them: so does this, so that every
    pass runs along contiguous memory); ``taps``: (B, 2K + 1) integer weights below 2²⁴."""
    hi = torch.floor(taps * (1.0 / (1 << 12)))
    lo = taps - hi * float(1 << 12)
    y = x.transpose(2, 3).contiguous()
    for _ in range(3):
        y = _box_pass(y, hi, lo, 2)
    y = y.transpose(2, 3).contiguous()
    for _ in range(3):
        y = _box_pass(y, hi, lo, 2)
    return y


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale(x, 3)`` on uint8-valued images."""
    return torch.floor(_grey(x)).expand_as(x)


def solarize(x: torch.Tensor, threshold: int) -> torch.Tensor:
    """PIL's ``ImageOps.solarize``: ``255 − x`` where ``x ≥ threshold``."""
    return torch.where(x >= threshold, _SOLARIZE_MAX - x, x)


def to_float(crops: torch.Tensor) -> torch.Tensor:
    """uint8 HWC crops (B, S, S, 3) → float32 (B, 3, S, S), contiguous, values 0…255."""
    return crops.permute(0, 3, 1, 2).float().contiguous()


def jitter_gray(x, view: ViewAug, cols: ViewColumns, packed, masked: bool = True) -> torch.Tensor:
    """ColorJitter (p) then Grayscale (p)."""
    if view.jitter_ops:
        x = apply(lambda y, q: color_jitter(y, view, cols, q), x, packed, cols, "jitter", view.jitter_p, masked)
    return apply(lambda y, q: grayscale(y), x, packed, cols, "gray", view.gray_p, masked)


def blur(x, view: ViewAug, cols: ViewColumns, packed, masked: bool = True) -> torch.Tensor:
    """GaussianBlur (p), PIL's."""
    op = lambda y, q: pil_gaussian_blur(y, cols.slice(q, "taps"))  # noqa: E731
    return apply(op, x, packed, cols, "blur", view.blur_p, masked)


def finish(x, view: ViewAug, cols: ViewColumns, packed, masked: bool = True) -> torch.Tensor:
    """Solarization (p), HorizontalFlip (p), ToTensor's ``/ 255`` and Normalize."""
    x = apply(lambda y, q: solarize(y, view.solarize_threshold), x, packed, cols, "solarize", view.solarize_p, masked)
    x = apply(lambda y, q: y.flip(3), x, packed, cols, "flip", view.flip_p, masked)
    return normalise(x, view.mean, view.std)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``x / 255``, then ``(x − mean) / std`` per channel (torchvision's ``ToTensor`` + ``Normalize``)."""
    if torch.compiler.is_compiling():  # constants of the compiled program
        m, s = (torch.tensor(v, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    else:
        m, s = _channel_constants(tuple(mean), tuple(std), x.device)
    return (x / 255.0 - m) / s


@functools.lru_cache(maxsize=64)
def _channel_constants(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (1, 3, 1, 1) float32 tensors on ``device``, made once (a new one per batch would be a
    synchronous host-to-device copy on a GPU)."""
    return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (mean, std))


def colour_view(crops, view: ViewAug, cols: ViewColumns, packed, masked: bool = True) -> torch.Tensor:
    """One view: uint8 HWC crops (B, S, S, 3) and the packed (B, P) float32 parameters → the normalised
    float32 view (B, 3, S, S)."""
    x = jitter_gray(to_float(crops), view, cols, packed, masked)
    return finish(blur(x, view, cols, packed, masked), view, cols, packed, masked)


class ColourStage:
    """Every view of a recipe: ``stage(crops, packed) -> views``.

    ``crops``: one uint8 (B, S, S, 3) tensor per view, on the stage's device; ``packed``: the (B, P)
    float32 colour parameters (:class:`~loaders.batch.params.ParamLayout`) on the same device. Returns float
    views (B, 3, S, S) in ``dtype``, channels-last strided when ``channels_last``.

    ``compile``: run each phase of a view (to float; jitter and grayscale; blur; the rest) through
    ``torch.compile`` — Triton kernels on a GPU, vectorised C++ on the CPU. The first batches pay the
    compilation (inductor caches the result on disk for later runs); views with the same config share the
    compiled code. The phases are compiled apart because inductor fused them into slower loops
    (``docs/design.md``, "Why some code is the way it is"). ``chunk``: process the batch in pieces of
    this many samples when compiled (the last one padded, so compiled shapes never change): on a CPU a piece
    then stays in cache between phases; on a GPU the loader sets it to the batch size (a batch that lost
    corrupt samples is padded back). Eager mode on a CPU computes each op only for the samples it applies
    to (:func:`apply`); compiled, or on a GPU, it selects with masks. Both give the same values."""

    def __init__(
        self,
        aug: AugConfig,
        layout: ParamLayout | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        compile: bool = False,
        chunk: int | None = None,
    ):
        self.aug, self.layout = aug, layout or ParamLayout.of(aug)
        self.dtype, self.channels_last, self.compiled, self.chunk = dtype, channels_last, bool(compile), chunk
        self._programs: dict[ViewAug, tuple] = {}

    def _program(self, view: ViewAug, cols: ViewColumns, masked: bool) -> tuple:
        key = (view, cols.columns, masked)
        if key not in self._programs:

            def wrap(fn):
                return torch.compile(fn, dynamic=False) if self.compiled else fn

            phases = [lambda x, p: jitter_gray(x, view, cols, p, masked)]
            if view.blur_p > 0:
                phases.append(lambda x, p: blur(x, view, cols, p, masked))
            phases.append(lambda x, p: finish(x, view, cols, p, masked))
            self._programs[key] = (wrap(to_float), [wrap(f) for f in phases])
        return self._programs[key]

    def _views(self, crops: list[torch.Tensor], packed: torch.Tensor) -> list[torch.Tensor]:
        out = []
        # masks when compiled (fixed shapes) or on a GPU (selecting samples would sync with the host); eager on
        # a CPU computes each op only for the samples it applies to
        masked = self.compiled or packed.device.type != "cpu"
        for x, view, cols in zip(crops, self.aug.views, self.layout.views):
            ingest, phases = self._program(view, cols, masked)
            y = ingest(x)
            for phase in phases:
                y = phase(y, packed)
            out.append(y)
        return out

    def __call__(self, crops: list[torch.Tensor], packed: torch.Tensor) -> list[torch.Tensor]:
        n = packed.shape[0]
        if not self.compiled or not self.chunk:  # eager: whole batch, fewest calls
            views = self._views(crops, packed)
        else:
            pieces = []
            for a in range(0, n, self.chunk):
                b = min(a + self.chunk, n)
                c, p = [x[a:b] for x in crops], packed[a:b]
                if b - a < self.chunk:  # pad the last piece: a compiled program sees one shape
                    c = [torch.cat([x, x[-1:].expand(self.chunk - (b - a), *x.shape[1:])]) for x in c]
                    p = torch.cat([p, p[-1:].expand(self.chunk - (b - a), -1)])
                pieces.append([v[: b - a] for v in self._views(c, p)])
            views = [torch.cat(parts) for parts in zip(*pieces)]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return [v.to(dtype=self.dtype, memory_format=fmt) for v in views]
