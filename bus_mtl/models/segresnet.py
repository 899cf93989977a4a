"""SegResNet (MONAI) alone: the segmentation baseline, and the builder the others share."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import SegResNet
from torch import Tensor, nn

from bus_mtl.models.base import MTLNet, check_probability
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import apply_pretrained

# MONAI's default SegResNet: 4 resolution levels (strides 1, 2, 4, 8) with (1, 2, 2, 4)
# residual blocks, channels init_filters × (1, 2, 4, 8).
SEGRESNET_STRIDES = (1, 2, 4, 8)
SEGRESNET_DIVISOR = 8
# Normalisation inside SegResNet. "group" is MONAI's default (GroupNorm, 8 groups) and the
# paper's. "batch" (BatchNorm2d) is the deployment-minded choice: at inference BatchNorm is
# a fixed per-channel affine that onnxruntime folds into the convolutions (or runs in their
# NCHWc layout), while GroupNorm's per-image statistics leave the layout on every block, so
# the deployed net is faster with "batch" (latency and BUSI 5-fold accuracy of both:
# docs/results.md; `bus-mtl bench deploy-routes` measures it).
SEGRESNET_NORMS = ("group", "batch")


class ChannelsFirstGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same state-dict keys, same values) that runs on a
    contiguous copy of a channels-last input and hands back channels-last.

    Why: on CPU, PyTorch's GroupNorm kernels are several times slower on channels-last
    tensors than on contiguous ones, while the convolutions around them are faster in
    channels-last; the two copies cost less than that difference (the step times are in
    docs/results.md). Contiguous inputs (and any input on a GPU) take the plain path, so
    tracing and export see an ordinary GroupNorm.
    """

    def forward(self, x: Tensor) -> Tensor:
        # CPU only: on a GPU this was not measured, so GroupNorm keeps its own path there.
        if (
            x.device.type == "cpu"
            and x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def use_channels_first_group_norm(module: nn.Module) -> nn.Module:
    """Swap every plain ``nn.GroupNorm`` under ``module`` for :class:`ChannelsFirstGroupNorm`
    (in place; parameters are moved, not copied, so an optimizer built before still holds
    them). Returns ``module``."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm:
                norm = ChannelsFirstGroupNorm(
                    child.num_groups, child.num_channels, child.eps, child.affine
                )
                if child.affine:
                    norm.weight, norm.bias = child.weight, child.bias
                setattr(parent, name, norm)
    return module


def build_segresnet(
    in_channels: int,
    init_filters: int,
    dropout_prob: float | None,
    norm: Literal["group", "batch"] = "group",
) -> SegResNet:
    """A 2-D MONAI SegResNet with one output channel (the lesion logit).

    ``norm``: ``"group"`` (MONAI's default, ``GroupNorm(num_groups=8)``; ``init_filters``
    must then be a positive multiple of 8) or ``"batch"`` (``BatchNorm2d``, PyTorch's
    momentum), see :data:`SEGRESNET_NORMS`.
    """
    if norm not in SEGRESNET_NORMS:
        raise ValueError(f"norm must be one of {SEGRESNET_NORMS}, got {norm!r}")
    if norm == "group" and (init_filters < 8 or init_filters % 8):
        raise ValueError(
            f"init_filters must be a positive multiple of 8 (SegResNet uses GroupNorm with "
            f"8 groups), got {init_filters!r}"
        )
    if init_filters < 1:
        raise ValueError(f"init_filters must be a positive integer, got {init_filters!r}")
    check_probability("dropout_prob", dropout_prob)
    net = SegResNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        init_filters=init_filters,
        dropout_prob=dropout_prob,
        norm=("GROUP", {"num_groups": 8}) if norm == "group" else ("BATCH", {}),
    )
    return use_channels_first_group_norm(net)


def segresnet_channels(init_filters: int) -> dict[int, int]:
    """Stride -> channels of each SegResNet encoder stage (the last one is the bottleneck)."""
    return {s: init_filters * s for s in SEGRESNET_STRIDES}


class SegResNetOnly(MTLNet):
    """MONAI SegResNet alone (registry name ``segresnet``): the segmentation baseline.

    ::

        x ─► SegResNet encoder ─► SegResNet decoder ─► mask
                                                        (no class logits)

    Shared: nothing (single task). Parameters at in_channels=1, num_classes=1,
    init_filters=16: 1.58 M (0.39 M with MONAI's default 8).

    ``init_filters=16`` is the default rather than MONAI's 8 (chosen for 3-D MRI, where
    memory rules): in 2-D it costs 1.6 M parameters and 7.8 GFLOPs at 256² (8: 0.4 M,
    about 2 GFLOPs), the same compute class as the smp U-Net comparator (5.8 M, 5.9
    GFLOPs), so the comparison is not won or lost by width; it also doubles the width of
    the shared features the multi-task variants hand to the classifier.

    Args:
        in_channels: image channels, 1 (grey) or 3.
        num_classes: kept for a uniform signature; this variant has no class logits.
        init_filters: SegResNet width (multiple of 8).
        dropout_prob: dropout after SegResNet's first convolution, ``None`` for none.
        pretrained: ``None`` or a checkpoint path of this variant.
        norm: SegResNet's normalisation, ``"group"`` (the paper's) or ``"batch"`` (folds
            into the convolutions when deployed; see ``SEGRESNET_NORMS``).

    Shapes: B×C×H×W (H, W multiples of 8) -> ``MTLOutput(mask=B×1×H×W, logits=None)``.
    """

    has_seg = True
    has_cls = False
    size_divisor = SEGRESNET_DIVISOR

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        init_filters: int = 16,
        dropout_prob: float | None = None,
        pretrained: str | None = None,
        norm: Literal["group", "batch"] = "group",
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.segresnet = build_segresnet(in_channels, init_filters, dropout_prob, norm)
        apply_pretrained(self, pretrained)

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        return MTLOutput(mask=self.segresnet(x), logits=None)
