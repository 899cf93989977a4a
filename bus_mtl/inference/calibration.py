"""Calibration helpers for inference and reports.

Temperature scaling is fitted by the training side (``TemperatureCalibration`` on the
validation fold, stored in the checkpoint and in every export); ``fit_temperature`` is
re-exported here so scripts that calibrate saved logits find it next to the diagram
(``reliability_diagram(probs, labels, path)``, the one ``bus-mtl cv`` draws).
"""

from __future__ import annotations

from bus_mtl.training.calibration import expected_calibration_error, fit_temperature
from bus_mtl.training.visualization import reliability_diagram

__all__ = ["expected_calibration_error", "fit_temperature", "reliability_diagram"]
