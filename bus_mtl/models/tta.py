"""Test-time augmentation (TTA): the net's outputs averaged over the image and its mirror.

Ultrasound lesions have no left-right semantics, so the image mirrored along W is as valid a
view as the image itself. :class:`FlipTTA` runs both views through the net in one batch and
averages the logits (the mirrored mask flipped back first). It raised the validation AUC of
the CPU recipe's checkpoint with the same weights, which is why the recipe uses it
(docs/results.md).

The mode is a plain string (``"none"`` or ``"hflip"``), recorded in a training module's
hparams and in ``checkpoint["bus_mtl"]["tta"]``; :func:`with_tta` turns a net and a mode into
the network that is evaluated. Training never uses it (``MultiTaskModule`` calls the bare
net in its training steps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bus_mtl.models.output import MTLOutput

# The valid modes; bus_mtl.inference.metadata repeats them (it must not import torch), and a
# test checks that both agree.
TTA_MODES = ("none", "hflip")


def check_tta(value: Any, what: str = "tta") -> str:
    """``value`` when it is one of :data:`TTA_MODES`; ``ValueError`` naming it otherwise."""
    if value not in TTA_MODES:
        raise ValueError(
            f"{what} must be one of {TTA_MODES} ('none': the net alone; 'hflip': the average "
            f"of the net on the image and on its left-right mirror), got {value!r}; set "
            "model.tta: hflip (or none) in the config, or MultiTaskModule(..., tta='hflip')"
        )
    return str(value)


def _average(plain: Tensor | None, mirrored: Tensor | None, flip_back: bool) -> Tensor | None:
    if plain is None or mirrored is None:
        return None
    if flip_back:
        mirrored = mirrored.flip(-1)
    return (plain + mirrored) / 2


def hflip_average(net: nn.Module, x: Tensor) -> MTLOutput:
    """``net`` on ``x`` and on ``x`` mirrored along W, averaged: B×C×H×W ->
    ``MTLOutput(mask=B×1×H×W | None, logits=B×K | None)``.

    Mask logits = (net(x).mask + flip_W(net(flip_W(x)).mask)) / 2, class logits = the mean
    of the two views' logits; a head that gives ``None`` stays ``None``. Both views run as
    one 2B batch (one call: half the kernel launches of two calls). In eval mode that equals
    two calls of B up to float rounding; in training mode BatchNorm would take its batch
    statistics over both views, which is why training steps never use it.
    """
    b = x.shape[0]
    out = net(torch.cat([x, x.flip(-1)], dim=0))
    mask, logits = out[0], out[1]
    # Split the 2B batch by slicing at the traced batch size, so an ONNX / TorchScript
    # export keeps a dynamic batch dimension.
    return MTLOutput(
        mask=_average(mask[:b], mask[b:], flip_back=True) if mask is not None else None,
        logits=_average(logits[:b], logits[b:], flip_back=False) if logits is not None else None,
    )


class FlipTTA(nn.Module):
    """A multi-task net with horizontal-flip test-time augmentation (:func:`hflip_average`).

    ``forward``: B×C×H×W -> ``MTLOutput(mask=B×1×H×W | None, logits=B×K | None)``, the mean
    of the net's logits on the image and on its left-right mirror (the mirrored mask flipped
    back). The net's ``has_seg``, ``has_cls``, ``in_channels``, ``num_classes`` and
    ``size_divisor`` show through. Its weights are the net's, under ``net.`` in the
    wrapper's own ``state_dict``: a training module keeps the bare net as its ``net`` and
    applies the wrapper only when it evaluates, so checkpoints hold the same keys with or
    without TTA. Meant for eval mode (see :func:`hflip_average`).
    """

    tta = "hflip"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if isinstance(net, FlipTTA):
            raise ValueError("the net is already wrapped in FlipTTA: wrap the bare net once")
        self.net = net

    @property
    def has_seg(self) -> bool:
        return bool(getattr(self.net, "has_seg", True))

    @property
    def has_cls(self) -> bool:
        return bool(getattr(self.net, "has_cls", True))

    @property
    def in_channels(self) -> int:
        return int(getattr(self.net, "in_channels", 1))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 1))

    @property
    def size_divisor(self) -> int:
        return int(getattr(self.net, "size_divisor", 1))

    def forward(self, x: Tensor) -> MTLOutput:
        return hflip_average(self.net, x)


def with_tta(net: nn.Module, tta: str) -> nn.Module:
    """The network evaluated under ``tta``: ``net`` itself for ``"none"``,
    ``FlipTTA(net)`` for ``"hflip"``; ``ValueError`` naming any other value."""
    if check_tta(tta) == "hflip":
        return FlipTTA(net)
    return net


def tta_of(net: nn.Module) -> str:
    """The test-time augmentation ``net`` runs: ``"hflip"`` for a :class:`FlipTTA`,
    ``"none"`` for a bare net."""
    return "hflip" if isinstance(net, FlipTTA) else "none"
