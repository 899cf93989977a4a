"""Hard parameter sharing: one SegResNet encoder, two heads."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from bus_mtl.models.base import MTLNet, check_probability
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import apply_pretrained
from bus_mtl.models.segresnet import SEGRESNET_DIVISOR, build_segresnet


class SharedEncoder(MTLNet):
    """Hard sharing (registry name ``shared_encoder``).

    ::

        x ─► SegResNet encoder ─┬─► SegResNet decoder (skips from every stage) ─► mask
                                └─► bottleneck ─► [avg ‖ max] pool ─► MLP ─► logits

    Shared: the whole SegResNet encoder (both losses train it). The classification head is
    light: global average and max pooling of the stride-8 bottleneck (8·init_filters
    channels each), ``Linear → ReLU → Dropout → Linear``. Parameters at in_channels=1,
    num_classes=1, init_filters=16: 1.61 M.

    Args:
        in_channels: image channels, 1 or 3.
        num_classes: K, 1 or 3.
        init_filters: SegResNet width (multiple of 8).
        hidden_dim: width of the MLP's hidden layer.
        cls_dropout: dropout before the last linear layer.
        dropout_prob: SegResNet's dropout after its first convolution.
        pretrained: ``None`` or a checkpoint path of this variant.
        norm: SegResNet's normalisation, ``"group"`` (the paper's) or ``"batch"`` (folds
            into the convolutions when deployed; see ``SEGRESNET_NORMS``).

    Shapes: B×C×H×W (H, W multiples of 8) -> ``MTLOutput(mask=B×1×H×W, logits=B×K)``.
    """

    has_seg = True
    has_cls = True
    size_divisor = SEGRESNET_DIVISOR

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        init_filters: int = 16,
        hidden_dim: int = 128,
        cls_dropout: float = 0.3,
        dropout_prob: float | None = None,
        pretrained: str | None = None,
        norm: Literal["group", "batch"] = "group",
    ) -> None:
        super().__init__(in_channels, num_classes)
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be positive, got {hidden_dim!r}")
        check_probability("cls_dropout", cls_dropout)
        self.segresnet = build_segresnet(in_channels, init_filters, dropout_prob, norm)
        bottleneck = init_filters * SEGRESNET_DIVISOR
        self.cls_head = nn.Sequential(
            nn.Linear(2 * bottleneck, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(cls_dropout),
            nn.Linear(hidden_dim, num_classes),
        )
        apply_pretrained(self, pretrained)

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        bottleneck, stages = self.segresnet.encode(x)
        mask = self.segresnet.decode(bottleneck, stages[::-1])
        pooled = torch.cat([bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))], dim=1)
        return MTLOutput(mask=mask, logits=self.cls_head(pooled))
