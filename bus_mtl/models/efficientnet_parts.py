"""Building EfficientNets (B0–B7, Lite0–4) and running them piece by piece.

efficientnet-pytorch only exposes ``extract_endpoints`` (and the Lite fork not even that), so
the fusion variants need to enter and leave the block sequence at a given stride. These
helpers do exactly what ``EfficientNet.extract_features`` does (same drop-connect schedule),
split at the stride boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from efficientnet_pytorch import EfficientNet as _EfficientNet
from torch import Tensor, nn

EFFICIENTNET_NAMES: tuple[str, ...] = tuple(f"efficientnet-b{i}" for i in range(8))
LITE_NAMES: tuple[str, ...] = tuple(f"efficientnet-lite{i}" for i in range(5))
VALID_MODEL_NAMES: tuple[str, ...] = EFFICIENTNET_NAMES + LITE_NAMES

# PyTorch's BatchNorm momentum (weight of the *new* batch statistic). efficientnet-pytorch
# keeps TensorFlow's ``batch_norm_momentum=0.99`` (weight of the *old* value), i.e. PyTorch
# momentum 0.01: after a few hundred steps the running statistics still hold ~10 % of their
# initial values and eval-mode outputs collapse to a constant (docs/results.md). Every BatchNorm of
# every variant uses this value instead.
BN_MOMENTUM = 0.1


def use_pytorch_bn_momentum(module: nn.Module, momentum: float = BN_MOMENTUM) -> nn.Module:
    """Set ``momentum`` on every BatchNorm layer of ``module`` (in place; returns it).

    For networks built by libraries that carry TensorFlow's convention (efficientnet-pytorch
    and its Lite fork, smp's EfficientNet encoders). Epsilon is left as the library set it:
    pretrained weights were trained with it.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum
    return module


def check_model_name(model_name: str) -> None:
    """Raise ``ValueError`` listing the valid names when ``model_name`` is unknown."""
    if model_name not in VALID_MODEL_NAMES:
        raise ValueError(
            f"model_name {model_name!r} is not a known EfficientNet; valid: "
            f"{', '.join(VALID_MODEL_NAMES)}"
        )


def is_lite(model_name: str) -> bool:
    return model_name in LITE_NAMES


def build_efficientnet(model_name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A randomly initialised EfficientNet (efficientnet-pytorch, or its Lite fork).

    Lite models use ReLU6 and no squeeze-excitation; they must never get ``set_swish`` (it
    would swap their ReLU6 for swish). BatchNorm momentum is PyTorch's (``BN_MOMENTUM``), not
    the library's TensorFlow-style 0.01.
    """
    check_model_name(model_name)
    if is_lite(model_name):
        from efficientnet_lite_pytorch import EfficientNet as LiteEfficientNet

        net = LiteEfficientNet.from_name(
            model_name, in_channels=in_channels, num_classes=num_classes
        )
    else:
        net = _EfficientNet.from_name(model_name, in_channels=in_channels, num_classes=num_classes)
    return use_pytorch_bn_momentum(net)


def activation_like(effnet: nn.Module) -> nn.Module:
    """A fresh, exportable activation of the kind the EfficientNet uses (ReLU6 for Lite)."""
    return nn.ReLU6() if isinstance(effnet._swish, nn.ReLU6) else nn.SiLU()


def batch_norm_like(effnet: nn.Module, channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the EfficientNet's epsilon and PyTorch's momentum (``BN_MOMENTUM``)."""
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=effnet._bn1.eps)


@dataclass(frozen=True)
class EffNetLayout:
    """Where the stride changes in an EfficientNet's block list.

    Attributes:
        stem_channels: output channels of the stem (stride 2), input of block 0.
        split: stride r -> index of the first block that leaves stride r (the stride-2 block
            whose input is at stride r); ``len(blocks)`` for the last stride (32).
        channels: stride r -> channels of the feature entering ``split[r]`` (the endpoint
            ``extract_endpoints`` reports at that stride: 16/24/40/112/320 for B0).
        head_channels: output channels of the head conv (1280 for B0).
    """

    stem_channels: int
    split: dict[int, int]
    channels: dict[int, int]
    head_channels: int


def effnet_layout(effnet: nn.Module) -> EffNetLayout:
    """Read the stride boundaries from the block arguments of an efficientnet-pytorch model."""
    stride = 2
    split: dict[int, int] = {}
    channels: dict[int, int] = {}
    blocks = effnet._blocks
    for i, block in enumerate(blocks):
        args = block._block_args
        s = args.stride[0] if isinstance(args.stride, list | tuple) else args.stride
        if s == 2:
            split[stride] = i
            channels[stride] = args.input_filters
            stride *= 2
    split[stride] = len(blocks)
    channels[stride] = blocks[-1]._block_args.output_filters
    return EffNetLayout(
        stem_channels=effnet._conv_stem.out_channels,
        split=split,
        channels=channels,
        head_channels=effnet._conv_head.out_channels,
    )


def run_stem(effnet: nn.Module, x: Tensor) -> Tensor:
    """B×C×H×W -> B×stem×H/2×W/2."""
    return effnet._swish(effnet._bn0(effnet._conv_stem(x)))


def run_blocks(effnet: nn.Module, x: Tensor, start: int, stop: int) -> Tensor:
    """Blocks ``start..stop-1`` with efficientnet-pytorch's drop-connect schedule."""
    n = len(effnet._blocks)
    rate = effnet._global_params.drop_connect_rate
    for i in range(start, stop):
        x = effnet._blocks[i](x, drop_connect_rate=rate * i / n if rate else rate)
    return x


def run_head(effnet: nn.Module, x: Tensor) -> Tensor:
    """Last block output -> B×head×h×w (head 1×1 conv, BN, activation)."""
    return effnet._swish(effnet._bn1(effnet._conv_head(x)))


def classify(effnet: nn.Module, features: Tensor) -> Tensor:
    """Head features B×head×h×w -> B×K logits (average pooling, dropout, FC)."""
    z = effnet._avg_pooling(features).flatten(1)
    return effnet._fc(effnet._dropout(z))


def remove_stem(effnet: nn.Module) -> None:
    """Drop the stem (replaced by an adapter); keeps every other state-dict key unchanged."""
    effnet._conv_stem = nn.Identity()
    effnet._bn0 = nn.Identity()


def remove_blocks_before(effnet: nn.Module, start: int) -> None:
    """Replace blocks ``0..start-1`` by ``nn.Identity`` so later blocks keep their indices
    (and so their efficientnet-pytorch state-dict names, which pretrained loading relies on)."""
    for i in range(start):
        effnet._blocks[i] = nn.Identity()


def prepare_for_export(net: nn.Module) -> nn.Module:
    """Swap efficientnet-pytorch's MemoryEfficientSwish (a custom autograd function ONNX
    cannot export) for the plain, numerically identical Swish. Lite models are left alone."""
    for module in net.modules():
        if isinstance(module, _EfficientNet):
            module.set_swish(memory_efficient=False)
    return net
