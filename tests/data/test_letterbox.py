"""``data.resize``: squash vs letterbox, from the geometry (``fit_to_square`` /
``from_square``) through the decode cache to the datamodule's batches."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bus_mtl.data import BUSDataModule, DecodeCache, ManifestSource, sample_key
from bus_mtl.data.io import (
    RESIZE_MODES,
    fit_to_square,
    from_square,
    read_image,
    resize_pair,
    square_geometry,
)


def _ellipse_mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 3, h // 4), 20, 0, 360, 1, -1)
    return mask


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (97, 131), (450, 600)])
def test_mask_round_trip_equals_original_up_to_edges(shape):
    mask = _ellipse_mask(*shape)
    square, geometry = fit_to_square(mask, 64, "letterbox", mask=True)
    assert square.shape == (64, 64) and set(np.unique(square)) <= {0, 1}
    back = from_square(square.astype(np.float32), geometry) > 0.5
    assert back.shape == shape
    # Every disagreement lies on the lesion's edge: within one input pixel of it, in
    # original pixels (one input pixel spans max(H, W) / 64 of them).
    wrong = back != mask.astype(bool)
    edge_band = int(np.ceil(max(shape) / 64)) + 1
    kernel = np.ones((2 * edge_band + 1, 2 * edge_band + 1), np.uint8)
    edge = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    assert not (wrong & ~edge).any()
    inter = (back & mask.astype(bool)).sum()
    assert 2 * inter / (back.sum() + mask.sum()) > 0.95


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (97, 131), (131, 97), (1, 500)])
def test_letterbox_keeps_aspect_ratio(shape):
    h, w = shape
    g = square_geometry(shape, 64, "letterbox")
    assert max(g.inner_height, g.inner_width) == 64  # the longer side fills the square
    # The shorter side is the scaled one, rounded (at least one pixel): the ratio is kept.
    exact = min(h, w) * 64 / max(h, w)
    short = min(g.inner_height, g.inner_width)
    assert abs(short - exact) <= 0.5 or short == 1
    assert (g.inner_height < g.inner_width) == (h < w)


@pytest.mark.parametrize(
    ("shape", "axis"), [((120, 300), "rows"), ((300, 120), "cols"), ((97, 131), "rows")]
)
def test_padding_lies_where_expected(shape, axis):
    """Wide images are padded above and below, tall ones left and right, symmetrically,
    with 0 in the image and in the mask; the image itself stays untouched inside."""
    image = np.full(shape, 200, np.uint8)
    mask = np.ones(shape, np.uint8)
    img, g = fit_to_square(image, 64, "letterbox")
    msk, g_mask = fit_to_square(mask, 64, "letterbox", mask=True)
    assert g == g_mask and img.shape == msk.shape == (64, 64)
    inside = np.zeros((64, 64), bool)
    inside[g.top : g.top + g.inner_height, g.left : g.left + g.inner_width] = True
    assert (img[inside] == 200).all() and (img[~inside] == 0).all()
    assert (msk[inside] == 1).all() and (msk[~inside] == 0).all()
    if axis == "rows":
        assert g.left == 0 and g.inner_width == 64 and g.inner_height < 64
        pad_top, pad_bottom = g.top, 64 - g.top - g.inner_height
    else:
        assert g.top == 0 and g.inner_height == 64 and g.inner_width < 64
        pad_top, pad_bottom = g.left, 64 - g.left - g.inner_width
    assert pad_top > 0 and abs(pad_top - pad_bottom) <= 1
    assert g.padding_fraction == pytest.approx(1 - inside.mean())


def test_square_images_and_squash_are_unchanged():
    rng = np.random.default_rng(0)
    square = (rng.random((90, 90)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        fit_to_square(square, 64, "letterbox")[0], fit_to_square(square, 64, "squash")[0]
    )
    # squash is the plain resize it always was (area when shrinking, nearest for masks).
    img = (rng.random((97, 131)) * 255).astype(np.uint8)
    mask = (rng.random((97, 131)) > 0.5).astype(np.uint8)
    got_img, got_mask = resize_pair(img, mask, 64)
    np.testing.assert_array_equal(got_img, cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(
        got_mask, cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST)
    )
    small = (rng.random((40, 50)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        resize_pair(small, small, 64)[0],
        cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR),
    )
    g = square_geometry((97, 131), 64)
    assert (g.top, g.left, g.inner_height, g.inner_width, g.padding_fraction) == (0, 0, 64, 64, 0)


def test_bad_resize_value_names_the_option_and_the_valid_set(tmp_path: Path):
    img = np.zeros((10, 20), np.uint8)
    for call in (
        lambda: fit_to_square(img, 32, "pad"),
        lambda: square_geometry(img.shape, 32, "pad"),
        lambda: DecodeCache(32, tmp_path, resize="pad"),
        lambda: BUSDataModule(ManifestSource(tmp_path / "m.csv"), resize="pad"),
    ):
        with pytest.raises(
            ValueError, match=r"resize: 'pad' is not one of \('squash', 'letterbox'\)"
        ):
            call()
    assert RESIZE_MODES == ("squash", "letterbox")


def _samples(nonsquare_root: Path):
    return ManifestSource(nonsquare_root / "manifest.csv", centre="nonsquare").samples()


def test_cache_entries_differ_by_mode(nonsquare_root: Path, tmp_path: Path):
    sample = _samples(nonsquare_root)[0]
    key = sample_key(sample)
    squash = DecodeCache(64, tmp_path, "squash")
    letterbox = DecodeCache(64, tmp_path, "letterbox")
    assert squash.pixel_path(key) != letterbox.pixel_path(key)
    # A squash entry already on disk is not served to the letterbox cache.
    first = squash.load(sample, key)
    assert squash.pixel_path(key).is_file() and not letterbox.pixel_path(key).exists()
    second = letterbox.load(sample, key)
    assert letterbox.pixel_path(key).is_file()
    image = read_image(sample.image)
    expected, g = fit_to_square(image, 64, "letterbox")
    assert g.padding_fraction > 0
    np.testing.assert_array_equal(second[0], expected)
    assert not np.array_equal(first[0], second[0])
    np.testing.assert_array_equal(squash.load(sample, key)[0], fit_to_square(image, 64)[0])


def test_datamodule_letterbox_batches_are_square_with_padded_borders(
    nonsquare_root: Path, tmp_path: Path
):
    dm = BUSDataModule(
        ManifestSource(nonsquare_root / "manifest.csv", centre="nonsquare"),
        image_size=64,
        batch_size=4,
        n_folds=2,
        augmentation="none",
        dup_threshold=-1,
        cache_dir=str(tmp_path / "cache"),
        seed=0,
        resize="letterbox",
    )
    assert dm.resize == "letterbox"
    dm.setup("fit")
    by_id = {s.id: s for s in dm.datasets["train"].samples + dm.datasets["test"].samples}
    checked = 0
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert batch["image"].shape[-2:] == (64, 64) and batch["mask"].shape[-2:] == (64, 64)
            for k, sample_id in enumerate(batch["id"]):
                shape = read_image(by_id[sample_id].image).shape
                g = square_geometry(shape, 64, "letterbox")
                assert g.padding_fraction > 0  # every image of this set is non-square
                inside = torch.zeros(64, 64, dtype=torch.bool)
                inside[g.top : g.top + g.inner_height, g.left : g.left + g.inner_width] = True
                image, mask = batch["image"][k, 0], batch["mask"][k, 0]
                assert (image[~inside] == 0).all() and (mask[~inside] == 0).all()
                assert image[inside].float().mean() > 20  # the speckle is there, not padding
                assert mask.sum() > 0
                if "orig_mask" in batch:  # test part: the clinician's mask at its own size
                    assert tuple(batch["orig_mask"][k].shape) == shape
                checked += 1
    assert checked == 16 - len(dm.datasets["val"])
    # setup()'s check pass filled the letterbox cache the loaders read, not a squash one.
    assert (tmp_path / "cache" / "decoded" / "s64_letterbox").is_dir()
    assert not (tmp_path / "cache" / "decoded" / "s64").exists()
    assert dm.state_dict()["resize"] == "letterbox"
