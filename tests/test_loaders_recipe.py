"""The recipe (loaders/recipe: augment presets, resolve): each (family, inflation mode) and each method gets the
release's augmentation and weights, in the library and through ``train.py --print-config`` and ``loaders audit``;
--aug, aliases and explicit knobs; the preset overrides. The policy's rules alone: test_loaders_policy.py; the
colour stage that applies the recipe: test_loaders_colour.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import train
from loaders.recipe.augment import (
    JITTER_OPS,
    PRESET_ALIASES,
    PRESETS,
    ViewAug,
    preset,
)
from loaders.recipe.mixture import parse_shards_args
from loaders.recipe.policy import DEFAULT_MODE, SourceInfo, decide, preset_knobs
from loaders.recipe.resolve import resolve_recipe
from shards.packing.writer import ShardSetWriter

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
    """The rule at the library level, in the policy (``decide``) and in the recipe built on it (``resolve_recipe``);
    on the command lines: test_the_command_lines_default_to_adainf_and_real_data_alone_to_no_inflation."""
    adainf_file = TABLE[(family, "adainf")][0]
    real, generated = SourceInfo("cifar10", "real", 50_000), SourceInfo("edm", "generated", 1_000_000, 1.96)
    d = decide([real, generated], family=family)
    assert DEFAULT_MODE == "adainf" and d.mode == "adainf" and d.weights == (10.0, 1.0)
    assert d.aug_preset == adainf_file.removesuffix(".yaml") and d.aug_overrides == {}
    assert d.knobs == preset_knobs(d.aug_preset, family)
    for sources in (
        [real],
        [real, SourceInfo("edm", "generated", 1_000_000, 1.96, 0)],
        [SourceInfo("cifar10", "real", 50_000, None, 3), SourceInfo("edm", "generated", 0, 1.96)],
    ):
        d = decide(sources, "adainf", family=family)
        assert d.aug_preset == family and d.weights[0] == (3.0 if sources[0].weight else 1.0)
        assert any("no generated source of positive weight" in r and "no-inflation recipe" in r for r in d.reasons)
    both = resolve_recipe(parse_shards_args([str(mix["real"]), str(mix["generated"])]), family=family)
    assert both.decision.mode == "adainf" and tuple(both.mixture.weights) == (10.0, 1.0)
    assert both.aug_name == adainf_file.removesuffix(".yaml")
    assert_views_are(both.aug.views, adainf_file)
    unset = resolve_recipe(parse_shards_args([str(mix["real"]), str(mix["generated"])]), family=family, inflation=None)
    assert unset.aug_name == both.aug_name and unset.aug == both.aug
    alone = resolve_recipe(parse_shards_args([str(mix["real"])]), family=family)
    assert tuple(alone.mixture.weights) == (1.0,)
    assert_views_are(alone.aug.views, BASELINE[family])
    assert any("no-inflation recipe" in r for r in alone.decision.reasons)
    # a generated source switched off by hand is no inflation either
    off = resolve_recipe(parse_shards_args([str(mix["real"]), f"{mix['generated']}:0"]), family=family)
    assert tuple(off.mixture.weights) == (1.0, 0.0)
    assert_views_are(off.aug.views, BASELINE[family])


# symmetric's AdaInf preset halves the jitter strength (0.8 → 0.4); the other families keep theirs
AUTO_JITTER_STRENGTH_AT_150K = {"symmetric": {"jitter_strength": 0.5}}


@pytest.mark.parametrize("family", sorted(BASELINE))
def test_auto_at_150k_reproduces_the_adainf_preset(family):
    """auto (this project's extrapolation) interpolates between the family's two presets and meets the
    AdaInf one at 150k distinct images, where Figure 4's crop optimum is the preset's 0.2."""
    d = decide(
        [SourceInfo("cifar10", "real", 50_000), SourceInfo("edm", "generated", 100_000, 1.96)], "auto", family=family
    )
    assert d.weights == (10.0, 1.0)
    assert d.aug_overrides == {"crop_min_scale": 0.2, "jitter_p": 0.4, **AUTO_JITTER_STRENGTH_AT_150K.get(family, {})}
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


def test_preset_overrides():
    c = preset("symmetric", crop_min_scale=0.3, jitter_strength=0.5, jitter_p=None, view2_blur_p=0.0, num_views=3)
    assert len(c.views) == 3 and c.views[0].crop_scale == (0.3, 1.0)
    assert c.views[0].brightness == pytest.approx(0.4) and c.views[0].hue == pytest.approx(0.1)
    assert c.views[0].jitter_p == 0.8 and c.views[1].blur_p == 0.0 and c.views[0].blur_p == 0.5
    with pytest.raises(ValueError, match="unknown"):
        preset("symmetric", crop_size=3)
    with pytest.raises(ValueError, match="preset"):
        preset("dino")
    with pytest.raises(ValueError, match="probability"):
        preset("symmetric", gray_p=2)


# ---- the recipe from small sets: --aug, aliases, explicit knobs, auto -------------------------------------
def _pack(out, name, kind, n, fid=None):
    rng = np.random.default_rng(0)
    with ShardSetWriter(
        out, name, kind=kind, format="raw", shard_size=8, fid=fid, classes=("a", "b") if kind == "real" else ()
    ) as w:
        for i in range(n):
            w.add(
                f"{i:06d}",
                rng.integers(0, 255, (8, 8, 3), np.uint8).tobytes(),
                i % 2 if kind == "real" else -1,
                size=(8, 8),
            )
    return str(out)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    t = tmp_path_factory.mktemp("recipe")
    return {"real": _pack(t / "real", "real", "real", 20), "gen": _pack(t / "gen", "gen", "generated", 40, fid=8.0)}


def test_baseline_aug_with_adainf_weights(dirs):
    r = resolve_recipe(parse_shards_args([dirs["real"], dirs["gen"]]), family="asymmetric", aug="baseline", size=8)
    assert r.aug.size == 8
    assert r.mixture.weights == [10.0, 1.0] and r.aug_name == "asymmetric" and r.decision.mode == "adainf"
    assert r.aug.views[1].solarize_p == 0.2 and r.aug.views[0].solarize_p == 0.0


def test_a_written_weight_wins_over_the_policy_and_the_reasons_say_so(dirs):
    r = resolve_recipe(parse_shards_args([f"{dirs['real']}:3", dirs["gen"]]), family="symmetric")
    assert r.mixture.weights == [3.0, 1.0] and any("given explicitly" in x for x in r.decision.reasons)


def test_auto_uses_fid_and_size_and_explicit_knobs_win(dirs):
    r = resolve_recipe(
        parse_shards_args([dirs["real"], dirs["gen"]]),
        family="symmetric",
        inflation="auto",
        overrides={"jitter_p": 0.7, "crop_min_scale": None},
    )
    assert r.mixture.weights == [20.0, 1.0]  # FID 8 → 10·sqrt(8/2) = 20
    assert r.aug.views[0].jitter_p == 0.7
    assert r.aug.views[0].crop_scale[0] == pytest.approx(0.02)  # 60 distinct images: below the smallest anchor


def test_explicit_preset_and_aliases_beat_policy_preset(dirs):
    r = resolve_recipe(parse_shards_args([dirs["real"], dirs["gen"]]), family="symmetric", aug="symmetric")
    assert r.mixture.weights == [10.0, 1.0] and r.aug_name == "symmetric" and r.aug.views[0].crop_scale[0] == 0.08
    assert "chosen with --aug: symmetric" in r.describe()
    old = resolve_recipe(parse_shards_args([dirs["real"], dirs["gen"]]), family="symmetric", aug="byol-adainf")
    assert (
        old.aug_name == "asymmetric_adainf"
        and old.aug == resolve_recipe(parse_shards_args([dirs["real"], dirs["gen"]]), family="asymmetric").aug
    )
    with pytest.raises(ValueError, match="--aug"):
        resolve_recipe(parse_shards_args([dirs["real"]]), family="symmetric", aug="strong")
    with pytest.raises(ValueError, match="unknown augmentation family 'byol'"):
        resolve_recipe(parse_shards_args([dirs["real"]]), family="byol")


# ---- through the command lines ---------------------------------------------------------------------------
# the release's method -> augmentation family: scripts/pretrain/cifar/{simclr,mocov2plus,byol,barlow}.yaml
METHOD_FAMILY = {"simclr": "symmetric", "mocov2plus": "symmetric_weak", "byol": "asymmetric", "barlow": "asymmetric"}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from shards.packing.demo import make_demo

    root = tmp_path_factory.mktemp("recipes")
    make_demo(root, n_real=40, n_generated=30, n_test=20, seed=0, shard_size=64)
    return root


def resolved(sets, *args, kinds=("real", "generated")) -> dict:
    """The ``resolved`` section of ``train.py --print-config`` on the ``kinds`` of ``sets``, batch 16 on the CPU."""
    shards = [a for kind in kinds for a in ("--shards", str(sets / kind))]
    result = CliRunner().invoke(train.main, [*shards, "--batch-size", "16", "--device", "cpu", "--print-config", *args])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)["resolved"]


def assert_printed_views_are(views: list[dict], release_file: str) -> None:
    """``--print-config``'s views (YAML lists for tuples) are the release file's, field by field."""
    assert all("jitter_impl" not in v for v in views)  # one jitter: torchvision's, as the release runs it
    assert_views_are(
        [ViewAug(**{k: tuple(x) if isinstance(x, list) else x for k, x in v.items()}) for v in views], release_file
    )


@pytest.mark.parametrize("mode", ["none", "vanilla", "adainf"])
@pytest.mark.parametrize("method", list(METHOD_FAMILY))
def test_every_method_and_mode_gets_the_release_recipe(sets, method, mode):
    release_file, weights = TABLE[(METHOD_FAMILY[method], mode)]
    r = resolved(sets, "--method", method, "--inflation", mode)
    assert tuple(r["inflation"]["weights"].values()) == weights
    assert_printed_views_are(r["augmentation"]["views"], release_file)


def test_the_command_lines_default_to_adainf_and_real_data_alone_to_no_inflation(sets, dirs):
    """The rule of test_default_is_adainf_and_without_generated_data_the_no_inflation_recipe where users meet it:
    ``train.py`` (every method) and ``loaders audit`` with no --inflation."""
    for method, family in METHOD_FAMILY.items():
        both = resolved(sets, "--method", method)
        assert tuple(both["inflation"]["weights"].values()) == (10.0, 1.0)
        assert_printed_views_are(both["augmentation"]["views"], TABLE[(family, "adainf")][0])
        alone = resolved(sets, "--method", method, kinds=("real",))
        assert tuple(alone["inflation"]["weights"].values()) == (1.0,)
        assert_printed_views_are(alone["augmentation"]["views"], BASELINE[family])
    from loaders.__main__ import main

    res = CliRunner().invoke(
        main, ["audit", "--shards", dirs["real"], "--shards", dirs["gen"], "--plan-only", "--json"]
    )
    rep = json.loads(res.stdout)
    assert rep["recipe"]["inflation"]["weights"] == {"real": 10.0, "gen": 1.0}
    assert rep["recipe"]["aug_preset"] == "symmetric_adainf" and rep["recipe"]["inflation"]["mode"] == "adainf"


def test_audit_shows_policy_choice(dirs):
    from loaders.__main__ import main

    res = CliRunner().invoke(
        main,
        [
            "audit",
            "--shards",
            dirs["real"],
            "--shards",
            dirs["gen"],
            "--inflation",
            "none",
            "--batch-size",
            "4",
            "--json",
            "--family",
            "symmetric_weak",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["recipe"]["inflation"]["weights"] == {"real": 1.0, "gen": 0.0}
    assert rep["recipe"]["aug_preset"] == "symmetric_weak"
    assert rep["epochs"][0]["per_source"] == {"real": 20, "gen": 0}
    res = CliRunner().invoke(main, ["audit", "--shards", dirs["gen"], "--inflation", "adainf", "--plan-only"])
    assert res.exit_code != 0 and "needs a real source" in res.output and "Traceback" not in res.output
