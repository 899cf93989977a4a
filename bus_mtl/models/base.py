"""Shared argument checks and the base class of every variant."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
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

    Every instance records the arguments it was built with as ``self.init_args`` (a dict of
    every ``__init__`` parameter of its class, defaults included), before its ``__init__``
    body runs: ``type(net)(**net.init_args)`` rebuilds the architecture, which is how a
    checkpoint is turned back into a network (:func:`bus_mtl.models.rebuild.net_config`).
    Subclasses need not do anything for it; the record is the outermost ``__init__``'s,
    i.e. that of the class actually built, never that of the ``super().__init__`` calls.
    """

    has_seg: bool = True
    has_cls: bool = True
    size_divisor: int = 32
    # {parameter: value} of the outermost __init__ call, set by _recording_init; None when
    # that call cannot be replayed by keyword (extra positional ``*args``).
    init_args: dict[str, Any] | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__init__)  # type: ignore[method-assign]

    def __init__(self, in_channels: int = 1, num_classes: int = 1) -> None:
        super().__init__()
        check_in_channels_num_classes(in_channels, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes

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


def _recordable(value: Any) -> Any:
    # A path is recorded as the string it names: checkpoints hold plain values only
    # (torch.load(weights_only=True) refuses a pickled PosixPath).
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _recording_init(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` that first records its bound arguments (defaults applied) as ``init_args``,
    unless an outer ``__init__`` of the same instance already did."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: MTLNet, *args: Any, **kwargs: Any) -> None:
        # Written straight into __dict__: nn.Module.__init__ has not run yet, and it does not
        # clear the dict, so the inner super().__init__ calls find the outer record here.
        if "init_args" not in self.__dict__:
            self.__dict__["init_args"] = _bind(signature, self, args, kwargs)
        init(self, *args, **kwargs)

    return __init__


def _bind(
    signature: inspect.Signature, self: MTLNet, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    """``{name: value}`` of one ``__init__`` call with defaults applied (``**kwargs``
    flattened); ``None`` when it got extra positional ``*args``, which no keyword call
    replays. A call that does not bind is left for ``__init__`` itself to reject."""
    try:
        bound = signature.bind(self, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    record: dict[str, Any] = {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if i == 0:
            continue  # self
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
        elif kind is inspect.Parameter.VAR_KEYWORD:
            record.update({k: _recordable(v) for k, v in value.items()})
        else:
            record[name] = _recordable(value)
    return record


# MTLNet itself (built directly, or reached without a subclass __init__) records too.
MTLNet.__init__ = _recording_init(MTLNet.__init__)  # type: ignore[method-assign]
