"""Reliability diagram helper used by ``bus-mtl cv`` reports (``bus_mtl.training.visualization``;
it was re-exported as ``bus_mtl.inference.calibration`` before inference stopped importing
training)."""

from __future__ import annotations

import numpy as np
import pytest

from bus_mtl.training.visualization import reliability_diagram


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


def test_one_reliability_diagram_with_the_logged_ece(tmp_path):
    """``bus-mtl cv`` draws this one diagram, (probs, labels) in that order, and its ECE is
    the one the training logs report (a probability of exactly 1 included)."""
    import torch

    import bus_mtl.experiments.plots as plots
    from bus_mtl.training.metrics import ClassificationMetrics

    assert not hasattr(plots, "reliability_diagram")
    logits = torch.tensor([-3.0, -1.0, 0.2, 0.4, 2.0, 40.0, 40.0, 1.5])
    labels = torch.tensor([0, 1, 0, 1, 1, 1, 0, 1])
    metric = ClassificationMetrics()
    metric.update(logits[:, None], labels)
    probs = torch.sigmoid(logits).numpy()
    assert probs[5] == 1.0
    ece = reliability_diagram(probs, labels.numpy(), tmp_path / "r.png")
    assert ece == pytest.approx(metric.compute()["ece"].item(), abs=1e-7)
