"""Smallest sensible configurations of every variant, shared by the model tests."""

from __future__ import annotations

import pytest
import torch

from bus_mtl.models import create

# Per registry name: the cheapest kwargs (MONAI's minimum SegResNet width 8; B0).
SMALL: dict[str, dict] = {
    "segresnet": {"init_filters": 8},
    "efficientnet": {},
    "shared_encoder": {"init_filters": 8, "hidden_dim": 16},
    "seg_features_effnet": {"init_filters": 8},
    "mask_guided": {"init_filters": 8},
    "cross_stitch": {"init_filters": 8},
    "smp_unet": {},
    "smp_deeplabv3plus": {},
    # Segmentation and crop at 32 px: the grid's 64/96 px inputs are still resampled both ways.
    "seg_crop_effnet": {"init_filters": 8, "seg_size": 32, "crop_size": 32},
}


def small(name: str, in_channels: int = 1, num_classes: int = 1, **extra):
    """The small configuration of ``name`` (seeded, so runs are reproducible)."""
    torch.manual_seed(0)
    return create(
        name, in_channels=in_channels, num_classes=num_classes, **{**SMALL[name], **extra}
    )


@pytest.fixture
def make_net():
    """Factory: ``make_net(name, in_channels=1, num_classes=1, **extra)`` -> small variant."""
    return small


@pytest.fixture(autouse=True)
def _two_threads():
    # These nets are tiny: with several OpenMP threads on a shared 2-core machine, spinning
    # threads cost ~10× more CPU time than the convolutions themselves.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
