"""loaders.recipe.resolve: --inflation / --aug / explicit knobs → the run's mixture and augmentation."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from loaders.recipe.mixture import parse_shards_args
from loaders.recipe.resolve import resolve_recipe
from shards.packing.writer import ShardSetWriter


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


def test_default_is_adainf_and_written_weights_win(dirs):
    r = resolve_recipe(parse_shards_args([dirs["real"], dirs["gen"]]), family="symmetric")
    assert r.mixture.weights == [10.0, 1.0] and r.aug_name == "symmetric_adainf"
    assert r.aug.views[0].crop_scale[0] == 0.2 and r.aug.views[0].jitter_p == 0.4
    assert (
        resolve_recipe(parse_shards_args([dirs["real"], dirs["gen"]]), family="symmetric", inflation=None).aug_name
        == "symmetric_adainf"
    )
    # a weight the user wrote wins over the policy, and the reasons say so
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
    # no flags: the release's AdaInf recipe
    res = CliRunner().invoke(
        main, ["audit", "--shards", dirs["real"], "--shards", dirs["gen"], "--plan-only", "--json"]
    )
    rep = json.loads(res.stdout)
    assert rep["recipe"]["inflation"]["weights"] == {"real": 10.0, "gen": 1.0}
    assert rep["recipe"]["aug_preset"] == "symmetric_adainf" and rep["recipe"]["inflation"]["mode"] == "adainf"
    res = CliRunner().invoke(main, ["audit", "--shards", dirs["gen"], "--inflation", "adainf", "--plan-only"])
    assert res.exit_code != 0 and "needs a real source" in res.output and "Traceback" not in res.output
