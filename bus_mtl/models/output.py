"""The one output type every variant returns."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class MTLOutput(NamedTuple):
    """Output of every ``bus_mtl.models`` variant.

    Attributes:
        mask: B×1×H×W segmentation logits, ``None`` for classification-only variants.
        logits: B×K class logits (K = 1: malignancy logit; K = 3: benign/malignant/normal),
            ``None`` for segmentation-only variants.
    """

    mask: Tensor | None
    logits: Tensor | None
