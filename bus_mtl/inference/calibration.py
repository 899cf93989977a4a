"""Calibration helpers for inference and reports.

Temperature scaling is fitted by the training side (``TemperatureCalibration`` on the
validation fold, stored in the checkpoint and in every export); ``fit_temperature`` is
re-exported here so scripts that calibrate saved logits find it next to the diagram.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bus_mtl.training.calibration import expected_calibration_error, fit_temperature

__all__ = ["expected_calibration_error", "fit_temperature", "reliability_diagram"]


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, path: str | Path, n_bins: int = 15, title: str = ""
) -> float:
    """Save a reliability diagram PNG of malignancy ``probs`` against binary ``labels``
    (labels other than 0/1 and NaN probabilities are dropped); returns the ECE.

    The figure is the one ``bus_mtl.experiments.plots`` draws for ``bus-mtl cv``.
    """
    from bus_mtl.experiments.plots import reliability_diagram as draw

    probs = np.asarray(probs, dtype=float).ravel()
    labels = np.asarray(labels, dtype=float).ravel()
    if probs.shape != labels.shape:
        raise ValueError(f"probs and labels differ in length: {probs.shape} vs {labels.shape}")
    keep = np.isfinite(probs) & np.isin(labels, (0, 1))
    if not keep.any():
        raise ValueError("no image with a malignancy probability and a 0/1 label to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return draw(labels[keep], probs[keep], path, n_bins=n_bins, title=title)
