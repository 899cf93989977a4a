"""The multi-task model zoo: SegResNet × EfficientNet schemes and smp comparators.

Every variant is a plain ``nn.Module`` with a typed ``__init__(in_channels=1, num_classes=1,
..., pretrained=None)`` (so ``class_path: bus_mtl.models.<Class>`` works in LightningCLI
YAML), attributes ``has_seg``, ``has_cls``, ``size_divisor``, and ``forward(x)`` returning
:class:`MTLOutput`. Build one by name with :func:`create`. Each records the arguments it was
built with (``net.init_args``, by :class:`MTLNet`), from which :mod:`bus_mtl.models.rebuild`
rebuilds it, e.g. out of a training checkpoint (``load_net``). :class:`FlipTTA` (``with_tta``)
wraps a net in horizontal-flip test-time augmentation.
"""

from bus_mtl.models.base import MTLNet, PretrainedPart
from bus_mtl.models.cross_stitch import CrossStitch, CrossStitchUnit
from bus_mtl.models.efficientnet import EfficientNetOnly
from bus_mtl.models.efficientnet_parts import VALID_MODEL_NAMES, prepare_for_export
from bus_mtl.models.ensemble import NetEnsemble
from bus_mtl.models.export import ExportWrapper, export_output_names, export_wrapper
from bus_mtl.models.mask_guided import MaskGuidedCascade
from bus_mtl.models.output import MTLOutput
from bus_mtl.models.pretrained import count_parameters
from bus_mtl.models.registry import (
    BEST_VARIANT,
    VARIANTS,
    create,
    list_variants,
    variant_class,
    variant_name,
)
from bus_mtl.models.seg_crop_effnet import SegCropEffNet
from bus_mtl.models.seg_features_effnet import SegResNetEffNetFeatures
from bus_mtl.models.segresnet import SegResNetOnly
from bus_mtl.models.shared_encoder import SharedEncoder
from bus_mtl.models.smp_comparators import SMPDeepLabV3Plus, SMPUnet
from bus_mtl.models.tta import TTA_MODES, FlipTTA, check_tta, hflip_average, tta_of, with_tta

__all__ = [
    "BEST_VARIANT",
    "TTA_MODES",
    "VALID_MODEL_NAMES",
    "VARIANTS",
    "CrossStitch",
    "CrossStitchUnit",
    "EfficientNetOnly",
    "ExportWrapper",
    "FlipTTA",
    "MTLNet",
    "MTLOutput",
    "MaskGuidedCascade",
    "NetEnsemble",
    "PretrainedPart",
    "SMPDeepLabV3Plus",
    "SMPUnet",
    "SegCropEffNet",
    "SegResNetEffNetFeatures",
    "SegResNetOnly",
    "SharedEncoder",
    "check_tta",
    "count_parameters",
    "create",
    "export_output_names",
    "export_wrapper",
    "hflip_average",
    "list_variants",
    "prepare_for_export",
    "tta_of",
    "variant_class",
    "variant_name",
    "with_tta",
]
