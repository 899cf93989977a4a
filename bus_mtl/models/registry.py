"""Variants by name: ``create`` and ``list_variants``."""

from __future__ import annotations

import importlib

from torch import nn

from bus_mtl.models.base import MTLNet
from bus_mtl.models.cross_stitch import CrossStitch
from bus_mtl.models.efficientnet import EfficientNetOnly
from bus_mtl.models.mask_guided import MaskGuidedCascade
from bus_mtl.models.seg_crop_effnet import SegCropEffNet
from bus_mtl.models.seg_features_effnet import SegResNetEffNetFeatures
from bus_mtl.models.segresnet import SegResNetOnly
from bus_mtl.models.shared_encoder import SharedEncoder
from bus_mtl.models.smp_comparators import SMPDeepLabV3Plus, SMPUnet

VARIANTS: dict[str, type[MTLNet]] = {
    "segresnet": SegResNetOnly,
    "efficientnet": EfficientNetOnly,
    "shared_encoder": SharedEncoder,
    "seg_features_effnet": SegResNetEffNetFeatures,
    "mask_guided": MaskGuidedCascade,
    "cross_stitch": CrossStitch,
    "smp_unet": SMPUnet,
    "smp_deeplabv3plus": SMPDeepLabV3Plus,
    "seg_crop_effnet": SegCropEffNet,
}

BEST_VARIANT = "seg_features_effnet"


def list_variants() -> list[str]:
    """Registry names, in the order of the README's table."""
    return list(VARIANTS)


def variant_class(name: str) -> type[MTLNet]:
    """The class registered as ``name``; ``KeyError`` listing the valid names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown model variant {name!r}; valid: {', '.join(VARIANTS)}") from None


def create(name: str, in_channels: int = 1, num_classes: int = 1, **kwargs) -> MTLNet:
    """Build the variant registered as ``name``, e.g. ``create("seg_features_effnet")``."""
    return variant_class(name)(in_channels=in_channels, num_classes=num_classes, **kwargs)


def variant_name(net: nn.Module | type | str) -> str | None:
    """Registry name of a net, a net class, or a class path (``"bus_mtl.models.SMPUnet"``,
    short or full); ``None`` if it is not a registered variant (or cannot be imported)."""
    if isinstance(net, str):
        module_name, _, attr = net.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            return None
    else:
        cls = net if isinstance(net, type) else type(net)
    return next((name for name, variant in VARIANTS.items() if variant is cls), None)
