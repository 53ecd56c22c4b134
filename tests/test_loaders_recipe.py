"""The release's presets per (family, inflation mode) and the preview (the colour stage itself: test_colour.py)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from loaders.recipe.augment import JITTER_OPS, PRESET_ALIASES, PRESETS, ViewAug, preset
from loaders.recipe.mixture import parse_shards_args
from loaders.recipe.policy import SourceInfo, decide
from loaders.recipe.resolve import resolve_recipe

# ---- the release's table, written out (PKU-ML/adainf) ----------------------------------------------------
# solo-learn/solo/data/pretrain_dataloader.py: RandomResizedCrop's default ratio, GaussianBlur's sigma,
# ImageOps.solarize's threshold, MEANS_N_STD["cifar10"]; every yaml: crop_size 32, horizontal_flip 0.5.
COMMON = dict(
    size=32,
    crop_ratio=(3 / 4, 4 / 3),
    blur_sigma=(0.1, 2.0),
    solarize_threshold=128,
    flip_p=0.5,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
# solo-learn/scripts/pretrain/cifar/augmentations/<file>: one row per crop
_SYM = dict(
    crop_scale=(0.08, 1.0),
    jitter_p=0.8,
    brightness=0.8,
    contrast=0.8,
    saturation=0.8,
    hue=0.2,
    gray_p=0.2,
    blur_p=0.5,
    solarize_p=0.0,
)
_WEAK = dict(
    crop_scale=(0.08, 1.0),
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    gray_p=0.2,
    blur_p=0.5,
    solarize_p=0.0,
)
_SYM_ADA = dict(
    crop_scale=(0.2, 1.0),
    jitter_p=0.4,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    gray_p=0.2,
    blur_p=0.5,
    solarize_p=0.0,
)
_ASYM = dict(
    crop_scale=(0.08, 1.0), jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, gray_p=0.2, blur_p=0.0
)
_ASYM_ADA = dict(
    crop_scale=(0.2, 1.0), jitter_p=0.4, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, gray_p=0.2, blur_p=0.0
)
RELEASE = {
    "symmetric.yaml": [_SYM, _SYM],
    "symmetric_weak.yaml": [_WEAK, _WEAK],
    "symmetric_adainf.yaml": [_SYM_ADA, _SYM_ADA],
    "asymmetric.yaml": [{**_ASYM, "solarize_p": 0.0}, {**_ASYM, "solarize_p": 0.2}],
    "asymmetric_adainf.yaml": [{**_ASYM_ADA, "solarize_p": 0.0}, {**_ASYM_ADA, "solarize_p": 0.2}],
}
# (family, mode) -> (release file, weights of (real, generated)); the README's no-inflation / vanilla / AdaInf runs
TABLE = {
    ("symmetric", "none"): ("symmetric.yaml", (1.0, 0.0)),
    ("symmetric", "vanilla"): ("symmetric.yaml", (1.0, 1.0)),
    ("symmetric", "adainf"): ("symmetric_adainf.yaml", (10.0, 1.0)),
    ("symmetric_weak", "none"): ("symmetric_weak.yaml", (1.0, 0.0)),
    ("symmetric_weak", "vanilla"): ("symmetric_weak.yaml", (1.0, 1.0)),
    ("symmetric_weak", "adainf"): ("symmetric_adainf.yaml", (10.0, 1.0)),
    ("asymmetric", "none"): ("asymmetric.yaml", (1.0, 0.0)),
    ("asymmetric", "vanilla"): ("asymmetric.yaml", (1.0, 1.0)),
    ("asymmetric", "adainf"): ("asymmetric_adainf.yaml", (10.0, 1.0)),
}
BASELINE = {"symmetric": "symmetric.yaml", "symmetric_weak": "symmetric_weak.yaml", "asymmetric": "asymmetric.yaml"}


def assert_views_are(views, release_file):
    rows = RELEASE[release_file]
    assert len(views) == len(rows)
    for i, (view, row) in enumerate(zip(views, rows)):
        got = dataclasses.asdict(view)
        want = {**COMMON, **row}
        assert got == want, (release_file, i, {k: (got[k], want[k]) for k in want if got[k] != want[k]})


@pytest.fixture(scope="module")
def mix(demo_shards):
    return demo_shards


@pytest.mark.parametrize("family,mode", sorted(TABLE))
def test_recipe_is_the_release_table(mix, family, mode):
    release_file, weights = TABLE[(family, mode)]
    r = resolve_recipe(parse_shards_args([str(mix["real"]), str(mix["generated"])]), family=family, inflation=mode)
    assert tuple(r.mixture.weights) == weights
    assert r.aug_name == release_file.removesuffix(".yaml") and r.aug_overrides == {}
    assert_views_are(r.aug.views, release_file)


@pytest.mark.parametrize("family", sorted(BASELINE))
def test_default_is_adainf_and_without_generated_data_the_no_inflation_recipe(mix, family):
    both = resolve_recipe(parse_shards_args([str(mix["real"]), str(mix["generated"])]), family=family)
    assert both.decision.mode == "adainf" and tuple(both.mixture.weights) == (10.0, 1.0)
    assert_views_are(both.aug.views, TABLE[(family, "adainf")][0])
    alone = resolve_recipe(parse_shards_args([str(mix["real"])]), family=family)
    assert tuple(alone.mixture.weights) == (1.0,)
    assert_views_are(alone.aug.views, BASELINE[family])
    assert any("no-inflation recipe" in r for r in alone.decision.reasons)
    # a generated source switched off by hand is no inflation either
    off = resolve_recipe(parse_shards_args([str(mix["real"]), f"{mix['generated']}:0"]), family=family)
    assert tuple(off.mixture.weights) == (1.0, 0.0)
    assert_views_are(off.aug.views, BASELINE[family])


@pytest.mark.parametrize("family", sorted(BASELINE))
def test_auto_at_150k_reproduces_the_adainf_preset(family):
    """auto (this project's extrapolation) interpolates between the family's two presets and meets the
    AdaInf one at 150k distinct images, where Figure 4's crop optimum is the preset's 0.2."""
    d = decide(
        [SourceInfo("cifar10", "real", 50_000), SourceInfo("edm", "generated", 100_000, 1.96)], "auto", family=family
    )
    assert d.weights == (10.0, 1.0)
    assert_views_are(preset(d.aug_preset, **d.aug_overrides).views, TABLE[(family, "adainf")][0])
    assert any("extrapolation" in r for r in d.reasons)
    small = decide([SourceInfo("cifar10", "real", 50_000)], "auto", family=family)
    assert_views_are(preset(small.aug_preset, **small.aug_overrides).views, BASELINE[family])


def test_only_crop_and_jitter_differ_within_a_family():
    """What the policy's knobs can express: a family's two presets differ in nothing else."""
    from loaders.recipe.augment import FAMILIES

    for baseline, adainf in FAMILIES.values():
        for a, b in zip(PRESETS[baseline], PRESETS[adainf]):
            differ = {f.name for f in dataclasses.fields(ViewAug) if getattr(a, f.name) != getattr(b, f.name)}
            assert differ <= {"crop_scale", "jitter_p", *JITTER_OPS}, (baseline, adainf, differ)


def test_aliases_name_the_release_presets():
    assert {k: preset(k) for k in PRESET_ALIASES} == {k: preset(v) for k, v in PRESET_ALIASES.items()}
    with pytest.raises(ValueError, match="symmetric_adainf"):
        preset("strong")
    from loaders.recipe.augment import family_presets

    with pytest.raises(ValueError, match="unknown augmentation family 'byol'"):
        family_presets("byol")


# ---- preview -------------------------------------------------------------------------------------------------
def test_preview_draws_real_and_generated_rows(mix, tmp_path, read_samples):
    from click.testing import CliRunner
    from PIL import Image

    from loaders.__main__ import main

    out = tmp_path / "grid.png"
    res = CliRunner().invoke(
        main,
        [
            "preview",
            "--shards",
            str(mix["real"]),
            "--shards",
            str(mix["generated"]),
            "--out",
            str(out),
            "--n",
            "3",
            "--scale",
            "2",
            "--family",
            "asymmetric",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "real 3, generated 3" in res.output and "asymmetric_adainf" in res.output
    img = np.asarray(Image.open(out).convert("RGB"))
    cell, gap = 32 * 2, 4
    # two groups of three columns (as stored, view 1, view 2), three rows of cells, header and title above
    assert img.shape[1] == 2 * 8 + 2 * (3 * cell + 2 * gap) + 20
    assert not list(tmp_path.glob(".grid.png.*"))  # no temporary left
    assert out.stat().st_mode & 0o044  # readable by others, as any file the user writes (umask permitting)
    # the "as stored" cells (rows counted from the bottom, ×2 nearest) are images of their own kind's set,
    # unchanged (±1 level: normalised and back), three different ones each
    for kind, x in (("real", 8), ("generated", 8 + 3 * cell + 2 * gap + 20)):
        stored = np.stack(
            [np.asarray(Image.open(io.BytesIO(s["image"])).convert("RGB")) for s in read_samples(mix[kind])]
        ).astype(int)
        shown = []
        for r in range(3):
            y = img.shape[0] - 8 - cell - (2 - r) * (cell + gap)
            tile = img[y : y + cell, x : x + cell].astype(int)
            assert np.array_equal(tile[::2, ::2], tile[1::2, 1::2])  # scaled ×2, nearest
            match = np.flatnonzero(np.abs(stored - tile[::2, ::2]).max(axis=(1, 2, 3)) <= 1)
            assert len(match) >= 1, (kind, r)
            shown.append(int(match[0]))
        assert len(set(shown)) == 3, (kind, shown)
    from loaders.preview import sample_views

    r = resolve_recipe(parse_shards_args([str(mix["real"])]), family="symmetric", inflation="none")
    stored, v1, _ = sample_views(r.mixture, r.aug, "real", n=2)
    assert stored.shape == v1.shape == (2, 32, 32, 3) and not np.array_equal(stored, v1)
    bad = CliRunner().invoke(main, ["preview", "--shards", str(mix["real"]), "--out", str(tmp_path / "no" / "x.png")])
    assert bad.exit_code != 0 and "does not exist" in bad.output and "Traceback" not in bad.output
