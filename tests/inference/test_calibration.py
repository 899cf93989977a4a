"""Reliability diagram helper used by ``bus-mtl cv`` reports."""

from __future__ import annotations

import numpy as np
import pytest

from bus_mtl.inference.calibration import reliability_diagram


def test_reliability_diagram_writes_png_and_returns_ece(tmp_path):
    probs = np.array([0.05, 0.15, 0.85, 0.95, 0.9, np.nan, 0.5])
    labels = np.array([0, 0, 1, 0, 1, 1, -1])  # the NaN and the -1 rows are dropped
    path = tmp_path / "sub" / "reliability.png"
    ece = reliability_diagram(probs, labels, path, n_bins=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # by hand, 10 equal bins: {0.05} 0 malignant, {0.15} 0, {0.85} 1 of 1, {0.9, 0.95} share
    # bin 9 with 1 of 2 malignant: (|0-.05| + |0-.15| + |1-.85| + 2*|0.5-0.925|) / 5 images
    expected = (0.05 + 0.15 + 0.15 + 2 * 0.425) / 5
    assert ece == pytest.approx(expected)


def test_reliability_diagram_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        reliability_diagram(np.zeros(3), np.zeros(2), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no image"):
        reliability_diagram(np.array([np.nan]), np.array([1]), tmp_path / "x.png")
