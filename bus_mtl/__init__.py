"""bus_mtl: joint breast-lesion segmentation and malignancy classification in ultrasound.

Sub-packages:
    bus_mtl.data        sources (BUSI, UDIAT, manifest CSV, synthetic), splits, BUSDataModule
    bus_mtl.models      the multi-task model zoo (``create``, ``list_variants``)
    bus_mtl.training    MultiTaskModule, losses, loss weighting, metrics, callbacks
    bus_mtl.experiments cross-validation, variant comparison, local sweeps
    bus_mtl.inference   export, ONNX Runtime Predictor, batch prediction
"""

import os

# albumentations checks PyPI for a newer release on import; this library must work offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
