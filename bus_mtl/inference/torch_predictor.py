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
    ``image_size`` overrides (or fills in) the stored input size. ``tta`` is the
    checkpoint's (``"none"`` when it has none): ``net`` must run it
    (:func:`load_net_and_info` wraps it so; :class:`TorchPredictor` and the exporters check)."""
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
    data["tta"] = data.get("tta") or "none"  # checkpoints from before TTA
    data["resize"] = data.get("resize") or "squash"  # checkpoints from before letterbox
    data["bus_mtl_version"] = __version__
    return ModelInfo.from_dict(data)


def load_net_and_info(
    ckpt_path: str | Path, image_size: int | None = None, tta: str | None = None
) -> tuple[nn.Module, ModelInfo]:
    """Network (eval mode) and :class:`ModelInfo` from a training checkpoint: the network as
    the checkpoint was validated and calibrated, i.e. wrapped in its test-time augmentation
    (``checkpoint["bus_mtl"]["tta"]``), so eager predictions, exports and the accuracy gate
    all compute what the fitted temperature and threshold apply to. (The checkpoint file
    itself, as a dict: :func:`bus_mtl.models.rebuild.load_checkpoint`.)

    ``tta``: another test-time augmentation of the same weights (``"none"``: the single
    pass of an ``"hflip"`` checkpoint), with the operating point fitted for it
    (:func:`bus_mtl.models.rebuild.operating_point`; ``ValueError`` when there is none)."""
    # From the models layer, not bus_mtl.training: inference needs no training stack. Imported
    # here so that importing this module does not build the model zoo (MONAI, smp).
    from bus_mtl.models.rebuild import load_inference_net

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
    net, meta = load_inference_net(ckpt_path, tta=tta)
    return net.eval(), info_from_checkpoint_meta(meta, net, image_size)


class TorchPredictor(BasePredictor):
    """Predict with a PyTorch network; pre/postprocessing shared with the ONNX Predictor.

    Args:
        net: a ``bus_mtl.models`` network returning ``MTLOutput``; wrapped in
            :class:`~bus_mtl.models.FlipTTA` when ``info.tta == "hflip"`` (checked).
        info: its preprocessing facts.
        threshold: mask probability threshold (default: ``info.threshold``); given alone it
            also sets the malignancy decision threshold.
        mirror_average: average the probabilities with the horizontal mirror by default
            (skipped when the network has its own TTA, ``info.tta``; see
            :meth:`~bus_mtl.inference.predictor.BasePredictor.predict`).
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        decision_threshold: malignancy decision threshold (default: the fitted one,
            ``info.class_threshold``).
    """

    def __init__(
        self,
        net: nn.Module,
        info: ModelInfo,
        threshold: float | None = None,
        mirror_average: bool = False,
        device: str | torch.device = "cpu",
        decision_threshold: float | None = None,
    ) -> None:
        from bus_mtl.models.tta import tta_of

        if tta_of(net) != info.tta:
            raise ValueError(
                f"the network runs test-time augmentation {tta_of(net)!r} but its metadata "
                f"says tta={info.tta!r}: the temperature and threshold were fitted with "
                f"{info.tta!r}; wrap the net with bus_mtl.models.with_tta(net, {info.tta!r}) "
                "(TorchPredictor.from_checkpoint and load_inference_net do)"
            )
        super().__init__(
            info,
            threshold=threshold,
            mirror_average=mirror_average,
            decision_threshold=decision_threshold,
        )
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | Path,
        threshold: float | None = None,
        mirror_average: bool = False,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
        decision_threshold: float | None = None,
        tta: str | None = None,
    ) -> TorchPredictor:
        """``tta``: the test-time augmentation run in the network, as ``model.tta``
        (default: the checkpoint's own; ``"none"`` for the single pass of a TTA checkpoint,
        with its own operating point), see :func:`load_net_and_info`."""
        net, info = load_net_and_info(ckpt_path, image_size=image_size, tta=tta)
        return cls(
            net,
            info,
            threshold=threshold,
            mirror_average=mirror_average,
            device=device,
            decision_threshold=decision_threshold,
        )

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        return self._forward(self.net, batch)

    def _run_views(self, batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The bare network (inside its :class:`~bus_mtl.models.FlipTTA`, if wrapped) on the
        image and its mirror: both views of a TTA checkpoint are observable here."""
        from bus_mtl.models.tta import FlipTTA

        net = self.net.net if isinstance(self.net, FlipTTA) else self.net
        return self._forward(net, batch)

    @torch.inference_mode()
    def _forward(
        self, net: nn.Module, batch: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        out = net(torch.from_numpy(batch).to(self.device))
        mask, logits = out[0], out[1]
        return (
            None if mask is None else mask.float().cpu().numpy(),
            None if logits is None else logits.float().cpu().numpy(),
        )
