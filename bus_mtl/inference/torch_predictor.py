"""The same predictions as :class:`~bus_mtl.inference.predictor.Predictor`, from a PyTorch
network or a training checkpoint (``bus-mtl predict --ckpt``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bus_mtl.inference.metadata import ModelInfo
from bus_mtl.inference.predictor import BasePredictor


def info_from_checkpoint_meta(
    meta: dict[str, Any], net: nn.Module, image_size: int | None = None
) -> ModelInfo:
    """:class:`ModelInfo` from ``checkpoint["bus_mtl"]`` plus the network's head flags;
    ``image_size`` overrides (or fills in) the stored input size."""
    from bus_mtl import __version__

    data = dict(meta)
    if image_size is not None:
        data["image_size"] = int(image_size)
    if data.get("image_size") is None:
        raise ValueError(
            "the checkpoint metadata has no image_size (trained without a datamodule?); "
            "pass the training input size explicitly (--image-size)"
        )
    data["has_seg"] = bool(getattr(net, "has_seg", True))
    data["has_cls"] = bool(getattr(net, "has_cls", True))
    data.setdefault("in_channels", getattr(net, "in_channels", 1))
    data.setdefault("num_classes", getattr(net, "num_classes", 1))
    data["bus_mtl_version"] = __version__
    return ModelInfo.from_dict(data)


def load_checkpoint(
    ckpt_path: str | Path, image_size: int | None = None
) -> tuple[nn.Module, ModelInfo]:
    """Network (eval mode) and :class:`ModelInfo` from a training checkpoint."""
    # From the models layer, not bus_mtl.training: inference needs no training stack. Imported
    # here so that importing this module does not build the model zoo (MONAI, smp).
    from bus_mtl.models.rebuild import load_net

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
    net, meta = load_net(ckpt_path)
    return net.eval(), info_from_checkpoint_meta(meta, net, image_size)


class TorchPredictor(BasePredictor):
    """Predict with a PyTorch network; pre/postprocessing shared with the ONNX Predictor.

    Args:
        net: a ``bus_mtl.models`` network returning ``MTLOutput``.
        info: its preprocessing facts.
        threshold: mask probability threshold (default: ``info.threshold``); given alone it
            also sets the malignancy decision threshold.
        tta: average with the horizontal mirror by default.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        decision_threshold: malignancy decision threshold (default: the fitted one,
            ``info.class_threshold``).
    """

    def __init__(
        self,
        net: nn.Module,
        info: ModelInfo,
        threshold: float | None = None,
        tta: bool = False,
        device: str | torch.device = "cpu",
        decision_threshold: float | None = None,
    ) -> None:
        super().__init__(info, threshold=threshold, tta=tta, decision_threshold=decision_threshold)
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | Path,
        threshold: float | None = None,
        tta: bool = False,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
        decision_threshold: float | None = None,
    ) -> TorchPredictor:
        net, info = load_checkpoint(ckpt_path, image_size=image_size)
        return cls(
            net,
            info,
            threshold=threshold,
            tta=tta,
            device=device,
            decision_threshold=decision_threshold,
        )

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        out = self.net(torch.from_numpy(batch).to(self.device))
        mask, logits = out[0], out[1]
        return (
            None if mask is None else mask.float().cpu().numpy(),
            None if logits is None else logits.float().cpu().numpy(),
        )
