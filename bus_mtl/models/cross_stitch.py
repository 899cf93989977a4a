"""Soft sharing: SegResNet and EfficientNet in parallel, exchanging features (cross-stitch)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from bus_mtl.models.base import MTLNet, PretrainedPart
from bus_mtl.models.efficientnet_parts import (
    batch_norm_like,
    build_efficientnet,
    classify,
    effnet_layout,
    run_blocks,
    run_head,
    run_stem,
)
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import apply_pretrained
from bus_mtl.models.segresnet import build_segresnet, segresnet_channels

STITCH_STRIDES = (2, 4, 8)


class CrossStitchUnit(nn.Module):
    """Cross-stitch unit (Misra et al. 2016) between two maps of different widths.

    ``seg' = a_ss·seg + a_sc·P_cs(cls)`` and ``cls' = a_cc·cls + a_cs·P_sc(seg)``, with
    per-channel learnable α (initialised 0.9 self / 0.1 other, as in the paper) and 1×1
    conv + BN projections P between the two channel widths.

    Shapes: seg B×Cs×h×w, cls B×Ce×h×w -> the same shapes.
    """

    def __init__(
        self, seg_channels: int, cls_channels: int, effnet: nn.Module, self_weight: float = 0.9
    ) -> None:
        super().__init__()
        if not 0.0 <= self_weight <= 1.0:
            raise ValueError(f"self_weight must be in [0, 1], got {self_weight!r}")
        self.to_seg = nn.Sequential(
            nn.Conv2d(cls_channels, seg_channels, 1, bias=False), nn.BatchNorm2d(seg_channels)
        )
        self.to_cls = nn.Sequential(
            nn.Conv2d(seg_channels, cls_channels, 1, bias=False),
            batch_norm_like(effnet, cls_channels),
        )
        self.seg_alpha = nn.Parameter(
            torch.tensor([self_weight, 1 - self_weight]).repeat(seg_channels, 1)
        )
        self.cls_alpha = nn.Parameter(
            torch.tensor([self_weight, 1 - self_weight]).repeat(cls_channels, 1)
        )

    def forward(self, seg: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
        sa = self.seg_alpha[:, :, None, None]
        ca = self.cls_alpha[:, :, None, None]
        new_seg = sa[:, 0] * seg + sa[:, 1] * self.to_seg(cls)
        new_cls = ca[:, 0] * cls + ca[:, 1] * self.to_cls(seg)
        return new_seg, new_cls


class CrossStitch(MTLNet):
    """Soft sharing (registry name ``cross_stitch``).

    ::

        x ─► SegResNet: s1 ─► s2 ──X──► s4 ──X──► s8 ──X──► decoder (skips s1, s2', s4') ─► mask
                               │        │         │
        x ─► EfficientNet:  e/2 ──X──► e/4 ──X──► e/8 ──X──► blocks /16…/32 ─► head ─► pool ─► FC ─► logits

        X = cross-stitch unit at strides 2, 4, 8 (1×1 projections between the widths)

    Two complete networks run side by side; after each matching stride (2, 4, 8: SegResNet
    stages 2f/4f/8f, EfficientNet endpoints 16/24/40 for B0) a cross-stitch unit mixes them,
    and both continue on the mixed features (SegResNet's decoder uses the mixed stages as
    skips, its bottleneck is the mixed s8).

    Shared: nothing hard; the α and projections learn how much to share. Parameters at
    in_channels=1, num_classes=1, init_filters=16, B0: 5.60 M.

    Args:
        in_channels: image channels, 1 or 3.
        num_classes: K, 1 or 3.
        model_name: the EfficientNet (B0–B7, Lite0–4).
        init_filters: SegResNet width (multiple of 8).
        self_weight: initial α of a branch's own features (Misra et al.: 0.9).
        dropout_prob: SegResNet's dropout after its first convolution.
        pretrained: ``None``, a checkpoint path, ``"imagenet"`` or ``"lite0-offline"``.
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
        self_weight: float = 0.9,
        dropout_prob: float | None = None,
        pretrained: str | None = None,
        norm: Literal["group", "batch"] = "group",
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.model_name = model_name
        self.segresnet = build_segresnet(in_channels, init_filters, dropout_prob, norm)
        self.effnet = build_efficientnet(model_name, in_channels, num_classes)
        layout = effnet_layout(self.effnet)
        seg = segresnet_channels(init_filters)
        self.splits = [layout.split[r] for r in STITCH_STRIDES]
        self.stitches = nn.ModuleList(
            CrossStitchUnit(seg[r], layout.channels[r], self.effnet, self_weight)
            for r in STITCH_STRIDES
        )
        apply_pretrained(self, pretrained)

    def pretrained_part(self) -> PretrainedPart:
        return PretrainedPart(self.effnet, self.in_channels, self.model_name)

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        seg, e = self.segresnet, self.effnet
        s = seg.convInit(x)
        if seg.dropout_prob is not None:
            s = seg.dropout(s)
        s = seg.down_layers[0](s)
        stages = [s]
        h, i = run_stem(e, x), 0
        for k, stitch in enumerate(self.stitches):
            s = seg.down_layers[k + 1](s)
            h = run_blocks(e, h, i, self.splits[k])
            i = self.splits[k]
            s, h = stitch(s, h)
            stages.append(s)
        mask = seg.decode(s, stages[::-1])
        h = run_blocks(e, h, i, len(e._blocks))
        return MTLOutput(mask=mask, logits=classify(e, run_head(e, h)))
