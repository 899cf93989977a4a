"""Training: ``MultiTaskModule``, losses, loss weighting, metrics, callbacks, checkpoints.

Heavy imports (Lightning, MONAI) happen on first attribute access, so the losses can be
imported without pulling in the whole training stack. Reading checkpoints and rebuilding their
net live in :mod:`bus_mtl.models.rebuild` (``load_net``, ``load_inference_net``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MultiTaskModule": "bus_mtl.training.module",
    "FiniteLossGuard": "bus_mtl.training.callbacks",
    "LoggedSaveConfigCallback": "bus_mtl.training.callbacks",
    "PerImagePredictions": "bus_mtl.training.callbacks",
    "TemperatureCalibration": "bus_mtl.training.calibration",
    "TimeBudget": "bus_mtl.training.budget",
    "SchedulePlan": "bus_mtl.training.budget",
    "EMA": "bus_mtl.training.ema",
    "ValidationImages": "bus_mtl.training.visualization",
    "DiceBCELoss": "bus_mtl.training.losses",
    "BCEClassLoss": "bus_mtl.training.losses",
    "FocalLoss": "bus_mtl.training.losses",
    "CrossEntropyClassLoss": "bus_mtl.training.losses",
    "FixedWeighting": "bus_mtl.training.weighting",
    "UncertaintyWeighting": "bus_mtl.training.weighting",
    "SegmentationMetrics": "bus_mtl.training.metrics",
    "ClassificationMetrics": "bus_mtl.training.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bus_mtl.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
