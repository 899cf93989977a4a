"""State-of-the-art comparators: smp U-Net and DeepLabV3+ with an auxiliary class head."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.encoders.efficientnet import EfficientNetEncoder
from torch import Tensor, nn

from bus_mtl.models.base import MTLNet, PretrainedPart, check_probability
from bus_mtl.models.efficientnet_parts import use_pytorch_bn_momentum
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import IMAGENET, LITE0_OFFLINE, apply_pretrained


def _check_encoder_name(encoder_name: str) -> None:
    valid = smp.encoders.get_encoder_names()
    if encoder_name not in valid:
        effnets = [n for n in valid if "efficientnet" in n]
        raise ValueError(
            f"encoder_name {encoder_name!r} is not an smp encoder; EfficientNet ones: "
            f"{', '.join(effnets)} (and every name in smp.encoders.get_encoder_names())"
        )


def _drop_unused_head(encoder: nn.Module) -> None:
    # smp's EfficientNetEncoder keeps efficientnet-pytorch's 1280-channel head conv + BN but
    # never runs them: dead parameters inflate the count and break DDP without
    # find_unused_parameters.
    if isinstance(encoder, EfficientNetEncoder):
        del encoder._conv_head, encoder._bn1


class _SMPComparator(MTLNet):
    """smp model with ``aux_params`` (classification head on the deepest encoder features)."""

    has_seg = True
    has_cls = True
    size_divisor = 32
    arch: type[nn.Module]

    def _build(self, encoder_name: str, cls_dropout: float | None, pretrained: str | None) -> None:
        _check_encoder_name(encoder_name)
        check_probability("cls_dropout", cls_dropout)
        if pretrained == LITE0_OFFLINE:
            raise ValueError(
                f"{type(self).__name__} cannot use pretrained='lite0-offline' (no smp encoder "
                f"for it); use 'imagenet' (download) or a checkpoint path"
            )
        self.encoder_name = encoder_name
        self.model = self.arch(
            encoder_name=encoder_name,
            encoder_weights="imagenet" if pretrained == IMAGENET else None,
            in_channels=self.in_channels,
            classes=1,
            aux_params={"classes": self.num_classes, "dropout": cls_dropout},
        )
        _drop_unused_head(self.model.encoder)
        # smp's EfficientNet encoders inherit efficientnet-pytorch's momentum 0.01.
        use_pytorch_bn_momentum(self.model)
        if pretrained != IMAGENET:
            apply_pretrained(self, pretrained)

    def pretrained_part(self) -> PretrainedPart:
        return PretrainedPart(self.model.encoder, self.in_channels, None)

    def forward(self, x: Tensor) -> MTLOutput:
        self.check_input(x)
        mask, logits = self.model(x)
        return MTLOutput(mask=mask, logits=logits)


class SMPUnet(_SMPComparator):
    """smp U-Net comparator (registry name ``smp_unet``).

    ::

        x ─► EfficientNet encoder (/2…/32) ─┬─► U-Net decoder (skips at /2…/16) ─► mask
                                            └─► /32 features ─► avg pool ─► dropout ─► FC ─► logits

    Shared: the whole encoder (hard sharing, smp's ``aux_params`` head). Parameters at
    in_channels=1, num_classes=1, efficientnet-b0: 5.84 M.

    Args:
        in_channels: image channels, 1 or 3.
        num_classes: K, 1 or 3.
        encoder_name: smp encoder (default ``efficientnet-b0``, the efficientnet-pytorch one).
        cls_dropout: dropout of the auxiliary head.
        pretrained: ``None``, a checkpoint path (this variant, or an EfficientNet state dict
            for the encoder) or ``"imagenet"`` (smp download).

    Shapes: B×C×H×W (H, W multiples of 32) -> ``MTLOutput(mask=B×1×H×W, logits=B×K)``.
    """

    arch = smp.Unet

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        encoder_name: str = "efficientnet-b0",
        cls_dropout: float | None = 0.2,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        self._build(encoder_name, cls_dropout, pretrained)


class SMPDeepLabV3Plus(_SMPComparator):
    """smp DeepLabV3+ comparator (registry name ``smp_deeplabv3plus``).

    ::

        x ─► EfficientNet encoder (dilated, output stride 16) ─┬─► ASPP + decoder (skip /4) ─► mask
                                                               └─► deepest features ─► pool ─► FC ─► logits

    Shared: the whole encoder. Parameters at in_channels=1, num_classes=1,
    efficientnet-b0: 4.50 M.

    Args:
        in_channels: image channels, 1 or 3.
        num_classes: K, 1 or 3.
        encoder_name: smp encoder (default ``efficientnet-b0``).
        cls_dropout: dropout of the auxiliary head.
        pretrained: ``None``, a checkpoint path or ``"imagenet"`` (smp download).

    Shapes: B×C×H×W (H, W multiples of 32) -> ``MTLOutput(mask=B×1×H×W, logits=B×K)``.
    """

    arch = smp.DeepLabV3Plus

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        encoder_name: str = "efficientnet-b0",
        cls_dropout: float | None = 0.2,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        self._build(encoder_name, cls_dropout, pretrained)
