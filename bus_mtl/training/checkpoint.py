"""Checkpoint metadata (``checkpoint["bus_mtl"]``), written by ``MultiTaskModule``.

Reading checkpoints and rebuilding their net live one layer down, in
:mod:`bus_mtl.models.rebuild` (``load_checkpoint``, ``load_net``, ``load_inference_net``):
inference uses them without the training stack.
"""

from __future__ import annotations

from typing import Any

from bus_mtl.data.sample import CLASS_NAMES
from bus_mtl.models.rebuild import class_path_of

__all__ = ["build_metadata"]


def build_metadata(module: Any, datamodule: Any | None) -> dict[str, Any]:
    """The ``checkpoint["bus_mtl"]`` dict of ARCHITECTURE.md for a ``MultiTaskModule``."""
    from bus_mtl.models.registry import variant_name

    net = module.net
    # None when the net records no init args (MultiTaskModule warned): load_net then says so.
    config = module.net_config or {"class_path": class_path_of(net), "init_args": None}
    init_args = config["init_args"] or {}
    normalization = getattr(datamodule, "normalization", None)
    image_size = getattr(datamodule, "image_size", None)
    if isinstance(image_size, (list, tuple)):
        image_size = [int(s) for s in image_size]
    class_names = getattr(datamodule, "class_names", None)
    num_classes = int(getattr(net, "num_classes", 1))
    if class_names is None:
        class_names = list(CLASS_NAMES[:2] if num_classes == 1 else CLASS_NAMES)
    return {
        "variant": variant_name(config["class_path"]),
        "net_class_path": config["class_path"],
        "net_init_args": dict(init_args) if config["init_args"] is not None else None,
        "in_channels": int(getattr(net, "in_channels", init_args.get("in_channels", 1))),
        "num_classes": num_classes,
        "image_size": image_size,
        # How images became the square input (data.resize); inference undoes the same.
        "resize": str(getattr(datamodule, "resize", "squash")),
        "normalization": dict(normalization) if normalization is not None else None,
        "class_names": list(class_names),
        "temperature": float(module.temperature),
        "threshold": float(module.threshold),
        "decision_threshold": float(module.decision_threshold),
        "threshold_rule": str(module.threshold_rule),
        "train_class_counts": module.class_counts,
        # The prevalence the probabilities refer to (0.5 under the class-balanced loss):
        # where a site's prior-shift correction starts from.
        "source_prior": module.source_prior,
        "has_seg": bool(module.has_seg),
        "has_cls": bool(module.has_cls),
        # The test-time augmentation the fitted temperature/threshold and every validation
        # and test metric were computed with: inference must evaluate the net the same way.
        "tta": str(getattr(module, "tta", "none")),
        # {mode: {temperature, decision_threshold, threshold_rule, calibration}} when fitted:
        # a TTA checkpoint also serves its single pass (rebuild.operating_point).
        "operating_points": getattr(module, "operating_points", None),
    }
