"""See what you train on: a picture of real and generated samples, as stored and as the views a recipe makes.

``python -m loaders preview --shards DIR[:W] ... --out grid.png [--family F] [--inflation MODE]`` draws,
for each kind of source in the mixture (real, generated), ``n`` samples side by side: each as stored and
as its augmented views under the recipe ``loaders.recipe.resolve.resolve_recipe`` resolves (the one training
uses). The views come out of the real :class:`~loaders.batch.loader.TrainLoader` on the CPU backend — the
same plan, host-drawn parameters and DALI graph as training — and are de-normalised for display; the
"as stored" column is the same loader with a full-image, augmentation-free view. A glance shows what a
weaker augmentation means, and whether the generated set looks like the real one.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np

from loaders.recipe.augment import AugConfig, ViewAug
from loaders.recipe.mixture import Mixture
from shards.base.errors import ConfigError
from shards.base.host import LOADER_THREADS
from shards.format.schema import KINDS

_GAP, _GROUP_GAP, _PAD = 4, 20, 8


def sample_views(
    mixture: Mixture, aug: AugConfig, kind: str, *, n: int, seed: int = 0, num_threads: int = LOADER_THREADS
) -> list[np.ndarray]:
    """``[stored, view 1, view 2, …]`` for ``n`` samples of the ``kind`` sources of ``mixture`` (each source
    weighted 1 for the draw, whatever its training weight): uint8 arrays (k, size, size, 3), k <= n (fewer
    when the sources hold fewer samples), or ``[]`` when the mixture has no such source."""
    from loaders.batch.loader import TrainLoader

    sources = tuple(dataclasses.replace(s, weight=1.0) for s in mixture.sources if s.kind == kind and s.count > 0)
    if not sources:
        return []
    size = aug.size
    sizes = {s.manifest.image_size for s in sources}
    ratio = 1.0
    if len(sizes) == 1 and None not in sizes:
        ((h, w),) = sizes
        ratio = w / h
    stored = ViewAug(
        size=size, crop_scale=(1.0, 1.0), crop_ratio=(ratio, ratio), mean=aug.views[0].mean, std=aug.views[0].std
    )
    loader = TrainLoader(
        Mixture(sources),
        AugConfig((stored, *aug.views)),
        min(n, sum(s.count for s in sources)),
        seed=seed,
        device="cpu",
        num_threads=num_threads,
        drop_last=False,
    )
    batch = next(iter(loader.epoch(0)))
    out = []
    for view, t in zip((stored, *aug.views), batch.views):
        mean = np.asarray(view.mean, np.float32)[None, :, None, None]
        std = np.asarray(view.std, np.float32)[None, :, None, None]
        x = (t.float().numpy() * std + mean) * 255.0
        out.append(np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def describe_view(view: ViewAug) -> str:
    """One line of a view's recipe, as the release's yaml names its knobs."""
    jitter = ", ".join(f"{getattr(view, k):g}" for k in ("brightness", "contrast", "saturation", "hue"))
    return (
        f"crop {view.crop_scale[0]:g}-{view.crop_scale[1]:g}, jitter p {view.jitter_p:g} ({jitter}), "
        f"gray {view.gray_p:g}, blur {view.blur_p:g}, solarize {view.solarize_p:g}, flip {view.flip_p:g}"
    )


def render_grid(groups: list[tuple[str, list[np.ndarray]]], title_lines: list[str], *, scale: int = 3):
    """A PIL image: one column group per ``(header, [stored, view 1, …])``, samples as rows, column headers
    "as stored", "view 1", …; ``title_lines`` above."""
    from PIL import Image, ImageDraw

    groups = [(h, arrays) for h, arrays in groups if arrays]
    if not groups:
        raise ConfigError("nothing to draw: the mixture has no sample")
    cell = groups[0][1][0].shape[1] * scale
    rows = max(len(arrays[0]) for _, arrays in groups)
    font, small = _font(14), _font(12)
    line = 18
    group_w = [len(arrays) * cell + (len(arrays) - 1) * _GAP for _, arrays in groups]
    width = 2 * _PAD + sum(group_w) + _GROUP_GAP * (len(groups) - 1)
    # wrap the title to the picture's width (about 7 px per character at this font size)
    chars = max(40, (width - 2 * _PAD) // 7)
    wrapped = []
    for text in title_lines:
        while len(text) > chars:
            cut = text.rfind(" ", 0, chars)
            cut = cut if cut > 0 else chars
            wrapped.append(text[:cut])
            text = "  " + text[cut:].lstrip()
        wrapped.append(text)
    top = _PAD + line * len(wrapped) + _PAD + 2 * line
    height = top + rows * cell + (rows - 1) * _GAP + _PAD
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(wrapped):
        draw.text((_PAD, _PAD + i * line), text, fill="black", font=small)
    x0 = _PAD
    for (header, arrays), gw in zip(groups, group_w):
        y_head = top - 2 * line
        draw.text((x0, y_head), header, fill="black", font=font)
        for c, arr in enumerate(arrays):
            x = x0 + c * (cell + _GAP)
            draw.text((x, y_head + line), "as stored" if c == 0 else f"view {c}", fill=(90, 90, 90), font=small)
            for r in range(len(arr)):
                tile = Image.fromarray(arr[r]).resize((cell, cell), Image.NEAREST)
                img.paste(tile, (x, top + r * (cell + _GAP)))
        x0 += gw + _GROUP_GAP
    return img


def preview(
    recipe,
    out: str | Path,
    *,
    n: int = 8,
    seed: int = 0,
    scale: int = 3,
    num_threads: int = LOADER_THREADS,
    family: str = "",
    inflation: str = "",
) -> dict:
    """Draw the preview of ``recipe`` (a ``loaders.recipe.resolve.Recipe``) to the PNG ``out`` (written atomically);
    returns ``{"path", "size": (w, h), "rows": {kind: samples}}``."""
    out = Path(out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it or pick another path")
    groups, rows = [], {}
    for kind in KINDS:
        arrays = sample_views(recipe.mixture, recipe.aug, kind, n=n, seed=seed, num_threads=num_threads)
        if not arrays:
            continue
        names = ", ".join(f"{s.name} x{s.weight:g}" for s in recipe.mixture.sources if s.kind == kind)
        groups.append((f"{kind}: {names}", arrays))
        rows[kind] = len(arrays[0])
    d = recipe.decision
    title = [
        f"family {family or d.family}, inflation {inflation or d.mode}: preset {recipe.aug_name}"
        + (f" with {recipe.aug_overrides}" if recipe.aug_overrides else "")
    ]
    views = recipe.aug.views
    if all(v == views[0] for v in views):
        title.append(f"views 1-{len(views)}: {describe_view(views[0])}")
    else:
        title += [f"view {i + 1}: {describe_view(v)}" for i, v in enumerate(views)]
    img = render_grid(groups, title, scale=scale)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG", optimize=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary only
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"path": str(out), "size": img.size, "rows": rows}
