"""Export helpers: a tuple-returning wrapper and the output names that go with it."""

from __future__ import annotations

from torch import Tensor, nn

from bus_mtl.models.efficientnet_parts import prepare_for_export


class ExportWrapper(nn.Module):
    """Wraps a variant so ``forward`` returns a plain tuple (mask logits and/or class logits,
    the ``None`` ones dropped), as ONNX / TorchScript export need.

    Shapes: B×C×H×W -> ``(B×1×H×W, B×K)``, ``(B×1×H×W,)`` or ``(B×K,)``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = prepare_for_export(net)
        self.output_names = export_output_names(net)
        self.eval()  # export is for inference: BN running statistics, no dropout

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for t in self.net(x) if t is not None)


def export_wrapper(net: nn.Module) -> ExportWrapper:
    """``ExportWrapper(net)`` in eval mode; also swaps efficientnet-pytorch's MemoryEfficientSwish for the
    exportable Swish in ``net`` (in place, same numbers)."""
    return ExportWrapper(net)


def export_output_names(net: nn.Module) -> list[str]:
    """``["mask", "logits"]`` restricted to the heads ``net`` has, in the wrapper's order."""
    names = []
    if getattr(net, "has_seg", True):
        names.append("mask")
    if getattr(net, "has_cls", True):
        names.append("logits")
    return names
