"""Shared argument checks and the base class of every variant."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from bus_mtl.models.output import MTLOutput

VALID_IN_CHANNELS = (1, 3)
VALID_NUM_CLASSES = (1, 3)


def check_in_channels_num_classes(in_channels: int, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``in_channels`` ∈ {1, 3} and ``num_classes`` ∈ {1, 3}."""
    if in_channels not in VALID_IN_CHANNELS:
        raise ValueError(
            f"in_channels must be one of {VALID_IN_CHANNELS} (grey or RGB), got {in_channels!r}"
        )
    if num_classes not in VALID_NUM_CLASSES:
        raise ValueError(
            f"num_classes must be one of {VALID_NUM_CLASSES} (1: malignancy logit, "
            f"3: benign/malignant/normal), got {num_classes!r}"
        )


def check_probability(name: str, value: float | None) -> None:
    """Raise ``ValueError`` unless ``value`` is None or in [0, 1)."""
    if value is not None and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class PretrainedPart(NamedTuple):
    """The EfficientNet-style sub-module of a variant that ImageNet weights can initialise.

    Attributes:
        module: the module whose ``state_dict`` keys follow efficientnet-pytorch names.
        image_channels: how many input channels of its stem carry the image (the rest, e.g.
            the mask channel of the cascade, start at zero weight).
        model_name: the EfficientNet name (``None`` for smp encoders).
    """

    module: nn.Module
    image_channels: int
    model_name: str | None


class MTLNet(nn.Module):
    """Base of every variant: stores the common arguments and checks the input size.

    Subclasses set ``has_seg``, ``has_cls`` and ``size_divisor`` and return
    :class:`MTLOutput` from ``forward``.
    """

    has_seg: bool = True
    has_cls: bool = True
    size_divisor: int = 32

    def __init__(self, in_channels: int = 1, num_classes: int = 1) -> None:
        super().__init__()
        check_in_channels_num_classes(in_channels, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes

    def store_init_args(self, arguments: dict[str, Any]) -> None:
        """Keep the constructor arguments (call with ``locals()`` first thing in ``__init__``)
        as ``self.init_args``, so checkpoints can rebuild the variant without its config."""
        self.init_args = {k: v for k, v in arguments.items() if k not in ("self", "__class__")}

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the shape when ``x`` is not B×C×H×W with H, W fitting."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects a B×{self.in_channels}×H×W tensor, "
                f"got shape {tuple(x.shape)}"
            )
        h, w = int(x.shape[-2]), int(x.shape[-1])
        d = self.size_divisor
        if h % d or w % d:
            fit_h, fit_w = -(-h // d) * d, -(-w // d) * d
            raise ValueError(
                f"{type(self).__name__} needs H and W to be multiples of {d}, got an input of "
                f"size {h}×{w}; resize or pad it (e.g. to {fit_h}×{fit_w})"
            )

    def pretrained_part(self) -> PretrainedPart | None:
        """The sub-module ImageNet/EfficientNet weights go into, ``None`` when there is none."""
        return None

    def forward(self, x: Tensor) -> MTLOutput:  # pragma: no cover - abstract
        raise NotImplementedError
