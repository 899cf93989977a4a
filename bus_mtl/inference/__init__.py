"""Inference and deployment: export (ONNX / TorchScript + metadata, optional int8
quantisation), the ONNX Runtime :class:`Predictor`, the accuracy gate of deployed forms, and
batch prediction on image files.

Attributes are imported lazily so that ``from bus_mtl.inference import Predictor`` needs only
onnxruntime, numpy and OpenCV (no torch, Lightning, MONAI or smp).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "ModelInfo": "bus_mtl.inference.metadata",
    "PredictionResult": "bus_mtl.inference.predictor",
    "Predictor": "bus_mtl.inference.predictor",
    "TorchPredictor": "bus_mtl.inference.torch_predictor",
    "predict_files": "bus_mtl.inference.predict",
    "PredictSummary": "bus_mtl.inference.predict",
    "make_overlay": "bus_mtl.inference.overlay",
    "export_onnx": "bus_mtl.inference.export",
    "export_torchscript": "bus_mtl.inference.export",
    "export_checkpoint": "bus_mtl.inference.export",
    "ParityError": "bus_mtl.inference.export",
    "session_options": "bus_mtl.inference.predictor",
    "quantize_onnx": "bus_mtl.inference.quantize",
    "check_accuracy": "bus_mtl.inference.gate",
    "gate_model": "bus_mtl.inference.gate",
    "load_fold_samples": "bus_mtl.inference.gate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'bus_mtl.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return __all__
