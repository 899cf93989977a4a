"""EfficientNet alone: the classification baseline."""

from __future__ import annotations

from torch import Tensor

from bus_mtl.models.base import MTLNet, PretrainedPart
from bus_mtl.models.efficientnet_parts import (
    build_efficientnet,
    classify,
    run_blocks,
    run_head,
    run_stem,
)
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import apply_pretrained


class EfficientNetOnly(MTLNet):
    """EfficientNet B0–B7 or Lite0–4 on the image (registry name ``efficientnet``).

    ::

        x ─► stem ─► MBConv blocks (strides 2…32) ─► head conv ─► avg pool ─► FC ─► logits
                                                                        (no mask)

    Shared: nothing (single task). Parameters at in_channels=1, num_classes=1:
    4.01 M (B0), 3.37 M (Lite0).

    Args:
        in_channels: image channels, 1 (grey) or 3.
        num_classes: K, 1 (malignancy logit) or 3 (benign/malignant/normal).
        model_name: ``efficientnet-b0`` … ``efficientnet-b7``, ``efficientnet-lite0`` … ``-lite4``.
        pretrained: ``None``, a checkpoint path, ``"imagenet"`` or ``"lite0-offline"``
            (see :mod:`bus_mtl.models.pretrained`).

    Shapes: B×C×H×W (H, W multiples of 32) -> ``MTLOutput(mask=None, logits=B×K)``.
    """

    has_seg = False
    has_cls = True
    size_divisor = 32

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        model_name: str = "efficientnet-b0",
        pretrained: str | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.model_name = model_name
        self.effnet = build_efficientnet(model_name, in_channels, num_classes)
        apply_pretrained(self, pretrained)

    def pretrained_part(self) -> PretrainedPart:
        return PretrainedPart(self.effnet, self.in_channels, self.model_name)

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        h = run_blocks(self.effnet, run_stem(self.effnet, x), 0, len(self.effnet._blocks))
        return MTLOutput(mask=None, logits=classify(self.effnet, run_head(self.effnet, h)))
