"""Every method × inflation mode resolves to the release's recipe, checked through `train.py --print-config`.

The expected values are the AdaInf release's CIFAR augmentation files (PKU-ML/adainf,
solo-learn/scripts/pretrain/cifar/augmentations/*.yaml), written out literally; the method → file map is
its scripts/pretrain/cifar/{simclr,mocov2plus,byol,barlow}.yaml and README commands.
"""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

import train

# crop min, jitter p, (brightness, contrast, saturation, hue), gray p, blur p, solarize p per view
SYMMETRIC = dict(crop=0.08, jitter_p=0.8, jitter=(0.8, 0.8, 0.8, 0.2), gray_p=0.2, blur_p=0.5, solarize=(0.0, 0.0))
SYMMETRIC_WEAK = dict(crop=0.08, jitter_p=0.8, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=0.2, blur_p=0.5, solarize=(0.0, 0.0))
SYMMETRIC_ADAINF = dict(
    crop=0.2, jitter_p=0.4, jitter=(0.4, 0.4, 0.4, 0.1), gray_p=0.2, blur_p=0.5, solarize=(0.0, 0.0)
)
ASYMMETRIC = dict(crop=0.08, jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2, blur_p=0.0, solarize=(0.0, 0.2))
ASYMMETRIC_ADAINF = dict(
    crop=0.2, jitter_p=0.4, jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2, blur_p=0.0, solarize=(0.0, 0.2)
)
RELEASE = {  # method: (no inflation / vanilla, AdaInf)
    "simclr": (SYMMETRIC, SYMMETRIC_ADAINF),
    "mocov2plus": (SYMMETRIC_WEAK, SYMMETRIC_ADAINF),
    "byol": (ASYMMETRIC, ASYMMETRIC_ADAINF),
    "barlow": (ASYMMETRIC, ASYMMETRIC_ADAINF),
}
WEIGHTS = {"none": (1.0, 0.0), "vanilla": (1.0, 1.0), "adainf": (10.0, 1.0)}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from shards.packing.demo import make_demo

    root = tmp_path_factory.mktemp("recipes")
    make_demo(root, n_real=40, n_generated=30, n_test=20, seed=0, shard_size=64)
    return root


def resolved(sets, *args) -> dict:
    result = CliRunner().invoke(
        train.main,
        [
            "--shards",
            str(sets / "real"),
            "--shards",
            str(sets / "generated"),
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--print-config",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)["resolved"]


@pytest.mark.parametrize("mode", [None, "none", "vanilla", "adainf"])
@pytest.mark.parametrize("method", list(RELEASE))
def test_every_method_and_mode_gets_the_release_recipe(sets, method, mode):
    r = resolved(sets, "--method", method, *(["--inflation", mode] if mode else []))
    expected = RELEASE[method][1 if mode in (None, "adainf") else 0]  # no flag = the release's AdaInf recipe
    assert tuple(r["inflation"]["weights"].values()) == WEIGHTS[mode or "adainf"]
    views = r["augmentation"]["views"]
    assert len(views) == 2
    for i, v in enumerate(views):
        got = dict(
            crop=v["crop_scale"][0],
            jitter_p=v["jitter_p"],
            jitter=(v["brightness"], v["contrast"], v["saturation"], v["hue"]),
            gray_p=v["gray_p"],
            blur_p=v["blur_p"],
            solarize=expected["solarize"][:i] + (v["solarize_p"],) + expected["solarize"][i + 1 :],
        )
        assert got == expected, (method, mode, i)
        assert (
            v["crop_scale"][1] == 1.0 and v["flip_p"] == 0.5 and tuple(v["crop_ratio"]) == pytest.approx((3 / 4, 4 / 3))
        )
        assert tuple(v["blur_sigma"]) == (0.1, 2.0) and v["size"] == 32 and v["solarize_threshold"] == 128
        assert tuple(v["mean"]) == (0.4914, 0.4822, 0.4465) and tuple(v["std"]) == (0.247, 0.2435, 0.2616)
        assert "jitter_impl" not in v  # one jitter: torchvision's, as the release runs it


def test_a_config_of_the_retired_fused_jitter_is_refused_in_one_line(sets, tmp_path):
    """--jitter-impl is gone (the exact colour stage is fast); an old config.yaml with jitter_impl: exact still
    reads, one with fused is refused naming the key."""
    from models.training import Settings

    assert Settings.from_dict({"jitter_impl": "exact"}) == Settings()
    with pytest.raises(ValueError, match="jitter_impl: fused is gone"):
        Settings.from_dict({"jitter_impl": "fused"})


def test_real_data_alone_gets_the_no_inflation_recipe(sets):
    r = resolved(sets, "--method", "mocov2plus")
    r_real = CliRunner().invoke(
        train.main,
        [
            "--shards",
            str(sets / "real"),
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--method",
            "mocov2plus",
            "--print-config",
        ],
    )
    assert r_real.exit_code == 0, r_real.output
    views = yaml.safe_load(r_real.stdout)["resolved"]["augmentation"]["views"]
    assert views[0]["crop_scale"][0] == 0.08 and views[0]["jitter_p"] == 0.8 and views[0]["brightness"] == 0.4
    assert r["augmentation"]["views"][0]["crop_scale"][0] == 0.2  # with generated data: AdaInf
