"""Ultrasound augmentations: uint8 in and out, masks untouched by intensity changes,
geometry shared by image and mask, seeded, and bad arguments named."""

from __future__ import annotations

import numpy as np
import pytest

from bus_mtl.data.transforms import PRESETS, build_pipeline
from bus_mtl.data.us_augment import CaliperMarks, DepthGain


def _pair(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, size=(h, w), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[30:60, 50:90] = 1
    return image, mask


def test_depth_gain_scales_rows_by_a_smooth_curve() -> None:
    image = np.full((100, 40), 100, np.uint8)
    out = DepthGain(gain_range=(0.5, 1.5), knots=3, p=1.0)(image=image)["image"]
    assert out.dtype == np.uint8 and out.shape == image.shape
    rows = out[:, 0].astype(float)
    assert np.all(out == out[:, :1])  # one gain per row
    assert rows.min() >= 50 - 1 and rows.max() <= 150 + 1
    assert np.abs(np.diff(rows)).max() <= 3  # smooth over depth, no steps


def test_caliper_marks_paint_bright_marks_and_leave_the_mask() -> None:
    image, mask = _pair()
    image[:] = 0
    out = CaliperMarks(max_marks=3, text_prob=1.0, p=1.0)(image=image, mask=mask)
    assert out["image"].dtype == np.uint8
    assert (out["image"] >= 180).sum() > 10  # crosses and text are drawn
    assert np.array_equal(out["mask"], mask)


def test_ultrasound_preset_keeps_pairs_aligned_and_binary() -> None:
    assert "ultrasound" in PRESETS
    image, mask = _pair()
    pipe = build_pipeline("ultrasound", seed=3)
    changed = 0
    for _ in range(20):
        out = pipe(image=image, mask=mask)
        assert out["image"].dtype == np.uint8 and out["image"].shape == image.shape
        assert set(np.unique(out["mask"])) <= {0, 1}
        changed += int(not np.array_equal(out["image"], image))
    assert changed >= 15  # p is high enough that most samples differ


def test_ultrasound_preset_is_seeded() -> None:
    image, mask = _pair()
    a = [build_pipeline("ultrasound", seed=7)(image=image, mask=mask)["image"] for _ in range(1)]
    b = [build_pipeline("ultrasound", seed=7)(image=image, mask=mask)["image"] for _ in range(1)]
    assert np.array_equal(a[0], b[0])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DepthGain(gain_range=(0.0, 1.0)), "gain_range"),
        (lambda: DepthGain(knots=1), "knots"),
        (lambda: CaliperMarks(max_marks=1), "max_marks"),
        (lambda: CaliperMarks(text_prob=2.0), "text_prob"),
    ],
)
def test_bad_arguments_are_named(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()
