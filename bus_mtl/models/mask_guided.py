"""Mask-guided cascade: the predicted soft mask guides the EfficientNet."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bus_mtl.models.base import MTLNet, PretrainedPart
from bus_mtl.models.efficientnet_parts import (
    build_efficientnet,
    classify,
    effnet_layout,
    run_blocks,
    run_head,
    run_stem,
)
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import apply_pretrained
from bus_mtl.models.segresnet import build_segresnet


class MaskGuidedCascade(MTLNet):
    """Cascade (registry name ``mask_guided``).

    ::

        x ─► SegResNet ─► mask logits ─► sigmoid ─► p ─┐ (optionally detached)
        │                                              │
        └────────────── concat [x, p] (C+1 channels) ◄─┘
                              ▼
             EfficientNet stem … blocks … head conv ─► F (B×1280×H/32×W/32)
                              ▼
             [avg-pool(F) ‖ Σ F·p↓ / Σ p↓] ─► dropout ─► FC ─► logits

    The EfficientNet sees the image and the soft mask as C+1 input channels. With
    ``attention_pooling`` (default) its pooled feature is the concatenation of the global
    average and a mask-weighted average (p average-pooled to the /32 grid), so the FC reads
    2×head channels. End-to-end differentiable: the classification loss reaches SegResNet
    through p unless ``detach_mask=True``.

    Shared: nothing but the predicted mask (two separate networks, coupled through p).
    Parameters at in_channels=1, num_classes=1, init_filters=16, B0: 5.59 M.

    Args:
        in_channels: image channels, 1 or 3.
        num_classes: K, 1 or 3.
        model_name: the EfficientNet (B0–B7, Lite0–4).
        init_filters: SegResNet width (multiple of 8).
        attention_pooling: add the mask-weighted pooled feature.
        detach_mask: stop the classification gradient at p.
        dropout_prob: SegResNet's dropout after its first convolution.
        pretrained: ``None``, a checkpoint path, ``"imagenet"`` or ``"lite0-offline"``;
            the mask channel of the pretrained stem starts at zero.
        norm: SegResNet's normalisation, ``"group"`` (the paper's) or ``"batch"`` (folds
            into the convolutions when deployed; see ``SEGRESNET_NORMS``).

    Shapes: B×C×H×W (H, W multiples of 32) -> ``MTLOutput(mask=B×1×H×W, logits=B×K)``.
    """

    has_seg = True
    has_cls = True
    size_divisor = 32

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        model_name: str = "efficientnet-b0",
        init_filters: int = 16,
        attention_pooling: bool = True,
        detach_mask: bool = False,
        dropout_prob: float | None = None,
        pretrained: str | None = None,
        norm: Literal["group", "batch"] = "group",
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.model_name = model_name
        self.attention_pooling = attention_pooling
        self.detach_mask = detach_mask
        self.segresnet = build_segresnet(in_channels, init_filters, dropout_prob, norm)
        self.effnet = build_efficientnet(model_name, in_channels + 1, num_classes)
        if attention_pooling:
            head = effnet_layout(self.effnet).head_channels
            self.effnet._fc = nn.Linear(2 * head, num_classes)
        apply_pretrained(self, pretrained)

    def pretrained_part(self) -> PretrainedPart:
        return PretrainedPart(self.effnet, self.in_channels, self.model_name)

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        mask = self.segresnet(x)
        p = torch.sigmoid(mask)
        if self.detach_mask:
            p = p.detach()
        e = self.effnet
        h = run_blocks(e, run_stem(e, torch.cat([x, p], dim=1)), 0, len(e._blocks))
        features = run_head(e, h)
        if not self.attention_pooling:
            return MTLOutput(mask=mask, logits=classify(e, features))
        # Head features are at stride 32 (size_divisor), so this pools p onto their grid.
        weight = F.avg_pool2d(p, kernel_size=self.size_divisor)
        roi = (features * weight).sum(dim=(2, 3)) / (weight.sum(dim=(2, 3)) + 1e-6)
        pooled = torch.cat([features.mean(dim=(2, 3)), roi], dim=1)
        return MTLOutput(mask=mask, logits=e._fc(e._dropout(pooled)))
