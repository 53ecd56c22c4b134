"""loaders/batch/params.py, the host-drawn augmentation parameters: keyed by seed, epoch and step, one draw per view,
the crop box semantics and the draws' statistics. Resume through the loader: test_loaders_loader.py."""

import numpy as np
import pytest
import torch

from loaders.batch.loader import TrainLoader
from loaders.batch.params import PARAM_KEYS, ParamLayout, ViewColumns, augment_rng, sample_view_params
from loaders.recipe.augment import CIFAR_MEAN, CIFAR_STD, AugConfig, ViewAug, preset
from loaders.recipe.mixture import parse_shards_args


@pytest.fixture(scope="module")
def data(small_shards):
    """The session's small mixture (tests/conftest.py): jpg real 30, png gen 45, raw rawgen 20, png test 23."""
    return small_shards


def test_seed_and_step_change_the_draws(data):
    m = parse_shards_args([f"{data['gen']}:1"])
    aug = preset("simclr")
    a = next(iter(TrainLoader(m, aug, 15, seed=0).epoch(0)))
    b = next(iter(TrainLoader(m, aug, 15, seed=1).epoch(0)))
    assert not torch.equal(a.views[0], b.views[0]) and not torch.equal(a.views[1], b.views[1])
    loader = TrainLoader(m, aug, 15, seed=0)
    ids = np.arange(15)
    p0, p0_again, p1 = (loader.aug_params(0, s, ids) for s in (0, 0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(p0, p0_again))
    assert not any(np.array_equal(x, y) for x, y in zip(p0, p1))
    assert not np.array_equal(loader.aug_params(1, 0, ids)[0], p0[0])  # the epoch is part of the key
    crops, colour = p0
    assert crops.shape == (15, 8) and colour.shape == (15, loader.layout.width)


def test_each_view_draws_its_own_parameters(data, plain_view):
    m = parse_shards_args([f"{data['gen']}:1"])
    b = next(
        iter(
            TrainLoader(m, AugConfig((ViewAug(**{**plain_view.__dict__, "crop_scale": (0.1, 0.5)}),) * 2), 15).epoch(0)
        )
    )
    assert not torch.equal(b.views[0], b.views[1])  # same recipe, different crops
    rng = augment_rng(0, 0, 0)
    v1, v2 = preset("byol").views
    n = 20_000
    p1, p2 = (
        sample_view_params(rng, v1, np.full(n, 32), np.full(n, 32)),
        sample_view_params(rng, v2, np.full(n, 32), np.full(n, 32)),
    )
    assert p1["solarize"].mean() == 0.0 and abs(p2["solarize"].mean() - 0.2) < 0.02
    assert not np.array_equal(p1["crop_start"], p2["crop_start"])


# -- the crop box: [start, end) in pixels or relative ------------------------------------------------
def normalised(img: np.ndarray) -> np.ndarray:
    mean, std = np.array(CIFAR_MEAN)[:, None, None], np.array(CIFAR_STD)[:, None, None]
    return (img.transpose(2, 0, 1) / 255.0 - mean) / std


@pytest.mark.parametrize("relative", [False, True])
def test_a_known_crop_box_yields_exactly_that_region(relative, plain_view, run_augment):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # noise: any shift or blur would show
    boxes = np.array([[8, 4, 24, 20], [0, 0, 16, 16], [16, 16, 32, 32]], np.float64)  # y0, x0, y1, x1
    view = ViewAug(**{**plain_view.__dict__, "size": 16})
    params = {"crop_start": boxes[:, :2], "crop_end": boxes[:, 2:]}
    full = {"crop_start": np.zeros((3, 2)), "crop_end": np.full((3, 2), 32.0)}
    [out] = run_augment(imgs, [view], [params], relative=relative)
    assert out.shape == (3, 3, 16, 16)
    for k, (y0, x0, y1, x1) in enumerate(boxes.astype(int)):
        np.testing.assert_allclose(out[k], normalised(imgs[k, y0:y1, x0:x1]), atol=1e-5)
    [whole] = run_augment(imgs, [plain_view], [full], relative=relative)  # the box of min area 1.0 is the full image
    for k in range(3):
        np.testing.assert_allclose(whole[k], normalised(imgs[k]), atol=1e-5)


def test_flags_drive_the_ops_per_sample(plain_view, run_augment):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    view = ViewAug(**{**plain_view.__dict__, "flip_p": 0.5, "solarize_p": 0.5, "gray_p": 0.5})
    full = {"crop_start": np.zeros((4, 2)), "crop_end": np.full((4, 2), 32.0)}
    flags = {
        "flip": np.array([1, 0, 0, 0], bool),
        "solarize": np.array([0, 1, 0, 0], bool),
        "gray": np.array([0, 0, 1, 0], bool),
    }
    [out] = run_augment(imgs, [view], [{**full, **flags}])
    np.testing.assert_allclose(out[0], normalised(imgs[0, :, ::-1]), atol=1e-5)
    np.testing.assert_allclose(out[1], normalised(np.where(imgs[1] >= 128, 255 - imgs[1], imgs[1])), atol=1e-5)
    g = out[2] * np.array(CIFAR_STD)[:, None, None] + np.array(CIFAR_MEAN)[:, None, None]  # back to [0, 1]
    assert np.allclose(g[0], g[1], atol=1e-5) and np.allclose(g[1], g[2], atol=1e-5)  # three equal channels
    np.testing.assert_allclose(out[3], normalised(imgs[3]), atol=1e-5)


# -- the host-side sampler (pure numpy) ----------------------------------------------------------------
def test_columns_resolve_p0_and_p1_at_build_time(plain_view):
    """The one contract of which parameters a view feeds: a probability of 0 or 1 needs no flag, an adjustment
    of strength 0 no factor; the DALI graph reads only crop boxes."""
    assert ViewColumns.build(plain_view).names == ()
    v = preset("symmetric").views[0]
    assert ViewColumns.build(v).names == ("flip", "jitter", "slots", "hue", "gray", "blur", "taps")
    cols = ViewColumns.build(v)
    assert [w for _, _, w in cols.columns] == [1, 1, 18, 1, 1, 1, 5]  # 6 slots of (f, a, b); 5 blur taps
    always = ViewAug(flip_p=1.0, jitter_p=1.0, brightness=0.8, contrast=0.8, blur_p=1.0, gray_p=0.0, solarize_p=1.0)
    assert ViewColumns.build(always).names == ("slots", "taps")
    assert ViewColumns.build(ViewAug(jitter_p=1.0, hue=0.1)).names == ("hue",)
    # two views: the second view's columns follow the first's; draw fills every column, crops go apart
    lay = ParamLayout.of(preset("byol"))
    assert lay.views[1].columns[0][1] == lay.views[0].stop and lay.width == lay.views[1].stop
    crops, colour = lay.draw(augment_rng(0, 0, 0), np.full(7, 32), np.full(7, 32))
    assert crops.shape == (7, 8) and colour.shape == (7, lay.width) and np.isfinite(colour).all()
    with pytest.raises(KeyError, match="no 'blur'"):
        lay.views[0].slice(colour, "blur")


@pytest.mark.parametrize("name", ["symmetric", "symmetric_adainf", "asymmetric"])
def test_sampler_statistics_match_the_preset(name):
    n = 200_000
    h = np.where(np.arange(n) % 2 == 0, 32, 24)  # square and non-square images
    w = np.where(np.arange(n) % 2 == 0, 32, 40)
    for view in preset(name).views:
        p = sample_view_params(augment_rng(0, 1, 7), view, h, w)
        assert set(p) == set(PARAM_KEYS) and all(len(a) == n for a in p.values())
        tol = 5 * np.sqrt(0.25 / n)
        for flag, prob in (
            ("flip", view.flip_p),
            ("jitter", view.jitter_p),
            ("gray", view.gray_p),
            ("blur", view.blur_p),
            ("solarize", view.solarize_p),
        ):
            assert p[flag].dtype == bool and abs(p[flag].mean() - prob) < tol, flag
        for k in ("brightness", "contrast", "saturation"):
            x = getattr(view, k)
            lo, hi = max(0.0, 1 - x), 1 + x
            assert lo <= p[k].min() and p[k].max() <= hi and abs(p[k].mean() - (lo + hi) / 2) < 0.01 * hi
        assert np.abs(p["hue"]).max() <= view.hue and abs(p["hue"].mean()) < view.hue * 0.01  # turns
        assert view.blur_sigma[0] <= p["sigma"].min() and p["sigma"].max() <= view.blur_sigma[1]
        # integer boxes inside the image
        s, e = p["crop_start"], p["crop_end"]
        assert np.array_equal(s, np.round(s)) and np.array_equal(e, np.round(e))
        assert (s >= 0).all() and (e[:, 0] <= h).all() and (e[:, 1] <= w).all() and (e > s).all()
        ch, cw = e[:, 0] - s[:, 0], e[:, 1] - s[:, 1]
        # area inside crop_scale × H×W and aspect inside crop_ratio, up to the rounding of h and w
        area, slack = ch * cw / (h * w), (0.5 * (ch + cw) + 0.25) / (h * w)
        assert (area >= view.crop_scale[0] - slack).all() and (area <= view.crop_scale[1] + slack).all()
        r_lo, r_hi = view.crop_ratio
        assert ((cw + 0.5) / (ch - 0.5) >= r_lo).all() and ((cw - 0.5) / (ch + 0.5) <= r_hi).all()


def test_unknown_size_gives_relative_boxes_of_a_square():
    n = 50_000
    view = preset("simclr").views[0]
    p = sample_view_params(augment_rng(1, 0, 0), view, np.zeros(n), np.zeros(n))
    s, e = p["crop_start"], p["crop_end"]
    assert (s >= 0).all() and (e <= 1 + 1e-12).all()
    ch, cw = e[:, 0] - s[:, 0], e[:, 1] - s[:, 1]
    assert (ch * cw >= view.crop_scale[0] - 1e-9).all() and (ch * cw <= 1 + 1e-9).all()
    assert (cw / ch >= view.crop_ratio[0] - 1e-9).all() and (cw / ch <= view.crop_ratio[1] + 1e-9).all()
    # a mixed batch: the known rows are pixels, and the layout makes everything relative
    lay = ParamLayout.of(AugConfig((view,)))
    p = sample_view_params(augment_rng(1, 0, 0), view, np.array([32, 0]), np.array([32, 0]))
    crops, _ = lay.draw(augment_rng(1, 0, 0), np.array([32, 0]), np.array([32, 0]), relative=True)
    assert crops.dtype == np.float32 and (crops[:, 2:] <= 1).all() and (crops[:, :2] >= 0).all()
    np.testing.assert_allclose(crops[0, :2], p["crop_start"][0] / 32, rtol=1e-6)


def test_crops_follow_torchvision_distribution():
    """The vectorised RandomResizedCrop against torchvision's own get_params on an elongated image, where
    many attempts fail and the fallback matters."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(3, 12, 40)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    tv = np.array([RandomResizedCrop.get_params(img, scale, ratio) for _ in range(4000)], np.float64)  # i, j, h, w
    n = 200_000
    p = sample_view_params(
        augment_rng(0, 0, 0), ViewAug(crop_scale=scale, crop_ratio=ratio), np.full(n, 12), np.full(n, 40)
    )
    ours = np.concatenate([p["crop_start"], p["crop_end"] - p["crop_start"]], axis=1)
    for col in range(4):
        assert abs(ours[:, col].mean() - tv[:, col].mean()) < 5 * tv[:, col].std() / np.sqrt(len(tv)) + 1e-9, col
    fallback = (tv[:, 2] == 12) & (tv[:, 3] == 16)  # the centre crop with the ratio clamped to 4/3
    ours_fallback = (ours[:, 2] == 12) & (ours[:, 3] == 16)
    assert abs(ours_fallback.mean() - fallback.mean()) < 0.03


# The colour stage against torchvision's functional ops and PIL, op by op and in random order:
# tests/test_loaders_colour.py
