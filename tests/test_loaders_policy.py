"""The AdaInf inflation policy (loaders/recipe/policy.py): modes, the auto rule's anchors and monotonicity, overrides,
errors. The default mode and the no-inflation rule, with the recipe they give: test_loaders_recipe.py."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from loaders.recipe.policy import (
    CROP_ANCHORS,
    InflationDecision,
    SourceInfo,
    crop_min_scale_for_size,
    decide,
    jitter_for_size,
    preset_knobs,
    real_weight_for_fid,
    sources_from_mixture,
)


def cifar(count=50_000, weight=None):
    return SourceInfo("cifar10", "real", count, None, weight)


def gen(count=1_000_000, fid=1.96, name="edm", weight=None):
    return SourceInfo(name, "generated", count, fid, weight)


# ---- modes ------------------------------------------------------------------------------------------


def test_none_keeps_real_only():
    d = decide([cifar(), gen()], "none", family="symmetric")
    assert d.weights == (1.0, 0.0)
    assert d.aug_preset == "symmetric" and d.aug_overrides == {}
    assert d.effective_size == 50_000


def test_vanilla_weights_everything_once():
    d = decide([cifar(), gen()], "vanilla", family="asymmetric")
    assert d.weights == (1.0, 1.0)
    assert d.aug_preset == "asymmetric" and d.aug_overrides == {}
    assert d.effective_size == 1_050_000


def test_vanilla_allows_generated_only():
    assert decide([gen()], "vanilla", family="symmetric").weights == (1.0,)


def test_none_and_vanilla_use_the_family_baseline():
    assert decide([cifar(), gen()], "none", family="symmetric_weak").aug_preset == "symmetric_weak"
    assert decide([cifar(), gen()], "vanilla", family="symmetric_weak").aug_preset == "symmetric_weak"


def test_preset_knobs_are_read_from_the_presets():
    assert preset_knobs("symmetric_adainf", "symmetric") == {
        "crop_min_scale": 0.2,
        "jitter_strength": 0.5,
        "jitter_p": 0.4,
    }
    assert preset_knobs("symmetric_adainf", "symmetric_weak")["jitter_strength"] == 1.0
    assert preset_knobs("asymmetric_adainf", "asymmetric") == {
        "crop_min_scale": 0.2,
        "jitter_strength": 1.0,
        "jitter_p": 0.4,
    }


def test_auto_on_cifar10_plus_1m_edm():
    d = decide([cifar(), gen()], "auto", family="symmetric")
    assert d.weights == (10.0, 1.0)
    assert d.effective_size == 1_050_000
    assert d.aug_preset == "symmetric"
    assert d.aug_overrides == {"crop_min_scale": 0.3, "jitter_strength": 0.5, "jitter_p": 0.4}
    assert any("'edm' has FID 1.96" in r and r.startswith("real weight 10") for r in d.reasons)
    assert any("effective size 1,050,000" in r for r in d.reasons)


def test_auto_on_equal_halves_is_between_anchors():
    d = decide([cifar(), gen(count=50_000)], "auto", family="symmetric")
    assert d.effective_size == 100_000
    assert 0.08 < d.aug_overrides["crop_min_scale"] < 0.2
    assert 0.5 < d.aug_overrides["jitter_strength"] < 1.0
    assert 0.4 < d.aug_overrides["jitter_p"] < 0.8


def test_auto_on_data_scarce_cifar_raises_real_weight():
    d = decide([cifar(count=5_000), gen(count=500_000, fid=18.27, name="subset5k")], "auto", family="symmetric")
    assert d.weights == (30.0, 1.0)  # 10*sqrt(18.27/2) = 30.2, rounded
    assert d.effective_size == 505_000
    assert 0.2 < d.aug_overrides["crop_min_scale"] < 0.3


def test_auto_asymmetric_leaves_jitter_strength_alone():
    d = decide([cifar(), gen()], "auto", family="asymmetric")
    assert d.aug_preset == "asymmetric"
    assert d.aug_overrides == {"crop_min_scale": 0.3, "jitter_p": 0.4}


def test_auto_without_generated_does_not_reweight():
    d = decide([cifar()], "auto", family="symmetric")
    assert d.weights == (1.0,)
    assert d.aug_overrides["crop_min_scale"] == 0.08
    assert d.aug_overrides["jitter_strength"] == 1.0 and d.aug_overrides["jitter_p"] == 0.8
    assert any("nothing to reweight" in r for r in d.reasons)


def test_auto_without_fid_falls_back_to_10_and_says_so():
    d = decide([cifar(), gen(fid=None)], "auto", family="symmetric")
    assert d.weights == (10.0, 1.0)
    assert any("no FID in the manifest of 'edm'" in r and "falling back" in r for r in d.reasons)


def test_auto_uses_count_weighted_fid_and_names_missing_fid():
    sources = [cifar(), gen(count=100_000, fid=18.27, name="bad"), gen(count=100_000, fid=None, name="nofid")]
    d = decide(sources, "auto", family="symmetric")
    assert d.weights[0] == real_weight_for_fid((18.27 + 2.0) / 2)
    assert any("count-weighted mean FID" in r and "'nofid'" in r for r in d.reasons)


def test_auto_ignores_generated_sources_switched_off():
    d = decide([cifar(), gen(fid=40.0, weight=0)], "auto", family="symmetric")
    assert d.weights == (1.0, 0.0)
    assert d.effective_size == 50_000


# ---- the rule -----------------------------------------------------------------------------------------


def test_crop_anchors_exact_and_clamped():
    for size, crop in CROP_ANCHORS:
        assert crop_min_scale_for_size(size) == crop
    assert crop_min_scale_for_size(1_000) == 0.02
    assert crop_min_scale_for_size(10_000_000) == 0.3


def test_crop_and_jitter_monotone_in_size():
    sizes = np.unique(np.geomspace(1, 1e8, 2_000).astype(np.int64))
    crops = [crop_min_scale_for_size(int(s)) for s in sizes]
    assert np.all(np.diff(crops) >= 0)
    for family in ("symmetric", "asymmetric"):
        strength, p = np.array([jitter_for_size(int(s), family) for s in sizes]).T
        assert np.all(np.diff(strength) <= 0) and np.all(np.diff(p) <= 0)
        assert p[0] == 0.8 and p[-1] == 0.4
    assert jitter_for_size(50_000, "symmetric") == (1.0, 0.8)
    assert jitter_for_size(150_000, "symmetric") == (0.5, 0.4)
    assert jitter_for_size(10**6, "asymmetric") == (1.0, 0.4)


def test_weight_monotone_in_fid_and_bounded():
    fids = np.linspace(0, 200, 4_001)
    w = np.array([real_weight_for_fid(float(f)) for f in fids])
    assert np.all(np.diff(w) >= 0)
    assert w.min() == 10 and w.max() == 50
    assert np.all(w == np.round(w))
    assert real_weight_for_fid(1.94) == real_weight_for_fid(2.0) == 10
    assert real_weight_for_fid(8.0) == 20
    assert real_weight_for_fid(3.14) > 10  # the CIFAR-100 STF set is worse than the CIFAR-10 ones


def test_decide_weight_monotone_in_fid():
    weights = [decide([cifar(), gen(fid=f)], "auto", family="symmetric").weights[0] for f in np.linspace(0, 100, 201)]
    assert np.all(np.diff(weights) >= 0) and weights[-1] > weights[0]


# ---- explicit settings win ---------------------------------------------------------------------------


def test_explicit_weights_win_in_every_mode():
    for mode in ("none", "vanilla", "adainf", "auto"):
        d = decide([cifar(weight=3), gen(weight=2)], mode, family="symmetric")
        assert d.weights == (3.0, 2.0)
    d = decide([cifar(weight=3), gen()], "adainf", family="symmetric")
    assert d.weights == (3.0, 1.0)
    assert any("weight 3 for 'cifar10' given explicitly (policy adainf would use 10)" in r for r in d.reasons)


def test_explicit_weight_equal_to_policy_is_not_called_an_override():
    d = decide([cifar(weight=10), gen()], "adainf", family="symmetric")
    assert not any("explicitly" in r for r in d.reasons)


def test_explicit_augmentation_knobs_win_and_are_named():
    d = decide(
        [cifar(), gen()], "auto", explicit={"crop_min_scale": 0.5, "jitter_p": None, "blur_p": 0.0}, family="symmetric"
    )
    assert d.aug_overrides == {"crop_min_scale": 0.5, "jitter_strength": 0.5, "jitter_p": 0.4, "blur_p": 0.0}
    assert any("crop_min_scale 0.5 given explicitly (policy auto would use 0.3)" in r for r in d.reasons)
    assert any("blur_p 0.0 given explicitly" == r for r in d.reasons)
    d = decide([cifar(), gen()], "adainf", explicit={"jitter_strength": 2.0}, family="symmetric")
    assert d.aug_preset == "symmetric_adainf" and d.aug_overrides == {"jitter_strength": 2.0}
    assert any("jitter_strength 2.0 given explicitly (policy adainf would use 1)" in r for r in d.reasons)
    assert d.knobs == {"crop_min_scale": 0.2, "jitter_strength": 1.0, "jitter_p": 0.4}  # 2 x the preset's 0.5


# ---- output ------------------------------------------------------------------------------------------


def test_to_dict_is_json_and_describe_states_values_and_reasons():
    d = decide([cifar(), gen()], "auto", family="symmetric")
    assert isinstance(d, InflationDecision)
    data = json.loads(json.dumps(d.to_dict()))
    assert data["weights"] == {"cifar10": 10.0, "edm": 1.0}
    assert data["aug_overrides"]["crop_min_scale"] == 0.3
    assert data["effective_size"] == 1_050_000 and len(data["reasons"]) == len(d.reasons)
    text = d.describe()
    assert "inflation auto" in text and "cifar10 x10" in text and "edm x1" in text
    assert "crop_min_scale=0.3" in text and "1,050,000" in text
    assert all(r in text for r in d.reasons)


def test_sources_from_mixture_reads_manifests():
    manifest = SimpleNamespace(kind="generated", count=7, fid=2.5)
    mixture = SimpleNamespace(sources=(SimpleNamespace(name="g", path="x", manifest=manifest, weight=None),))
    assert sources_from_mixture(mixture) == [SourceInfo("g", "generated", 7, 2.5, None)]


def test_module_is_pure_python():
    import ast

    import loaders.recipe.policy as policy

    tree = ast.parse(open(policy.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # loaders.recipe.augment: the presets; shards.base.errors: the one-line error classes, themselves pure Python
    pure = {"__future__", "math", "dataclasses", "typing", "collections", "collections.abc", "numpy"}
    assert imported <= pure | {"loaders.recipe.augment", "shards.base.errors"}
    from pathlib import Path

    from loaders.recipe import augment

    tree = ast.parse(Path(augment.__file__).read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top <= {"__future__", "dataclasses", "numpy", "shards"}  # DALI only inside the graph functions


# ---- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: decide([cifar()], "lots", family="symmetric"), "unknown inflation mode 'lots'"),
        (lambda: decide([cifar()], "auto", family="weird"), "unknown augmentation family"),
        (lambda: decide([], "auto", family="symmetric"), "no sources"),
        (lambda: decide([gen()], "none", family="symmetric"), "needs a real source"),
        (lambda: decide([gen()], "adainf", family="symmetric"), "needs a real source"),
        (lambda: decide([gen()], "auto", family="symmetric"), "needs a real source"),
        (lambda: decide([cifar(weight=0)], "vanilla", family="symmetric"), "every source has weight 0"),
        (lambda: cifar(weight=-1), "weight -1 must be a finite number >= 0"),
        (lambda: gen(fid=float("nan")), "fid nan"),
        (lambda: SourceInfo("x", "fake", 1), "kind 'fake'"),
        (lambda: SourceInfo("x", "real", -3), "count -3 is negative"),
    ],
)
def test_errors_are_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
