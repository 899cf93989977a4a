"""Original-size segmentation metrics undo the input's geometry: squash or letterbox."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bus_mtl.data.io import fit_to_square
from bus_mtl.training.metrics import SegmentationMetrics, original_size_seg_metrics


def _logits(mask01: torch.Tensor) -> torch.Tensor:
    return (mask01 * 2 - 1) * 10  # confident logits of a 0/1 mask


def _target(h: int, w: int) -> torch.Tensor:
    target = torch.zeros(h, w)
    target[h // 4 : 3 * h // 4, w // 5 : w // 2] = 1  # off-centre, so a wrong geometry shows
    return target


@pytest.mark.parametrize("shape", [(40, 100), (100, 40)])
def test_letterboxed_logits_are_scored_against_the_original(shape):
    target = _target(*shape)
    boxed, _ = fit_to_square(target.numpy().astype(np.uint8), 64, "letterbox", mask=True)
    logits = _logits(torch.from_numpy(boxed).float())[None, None]
    right = original_size_seg_metrics(logits, [target], resize="letterbox")
    assert right["dice"].item() > 0.9 and right["target_area"].item() == target.sum().item()
    # Read as a squash, the same logits land on the wrong pixels.
    wrong = original_size_seg_metrics(logits, [target])
    assert wrong["dice"].item() < right["dice"].item() - 0.2
    # The metric object passes the mode through.
    values = SegmentationMetrics().per_image_values(logits, [target], resize="letterbox")
    assert values["dice"].item() == pytest.approx(right["dice"].item())
    with pytest.raises(ValueError, match="resize: 'pad'"):
        original_size_seg_metrics(logits, [target], resize="pad")
