"""Grad-CAM's automatic target layer (:func:`bus_mtl.inference.cam.grad_cam_full`) on every
variant with a classifier: the last feature map the malignancy logit depends on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bus_mtl.inference.cam import grad_cam_full
from bus_mtl.models import list_variants, variant_class, with_tta

# The map each variant's classifier pools, at a 96 px input (64 px crops for seg_crop_effnet,
# so its head map has 2×2 cells).
EXPECTED = {
    "efficientnet": "effnet._swish",  # run_head: head conv -> BN -> activation
    "seg_features_effnet": "effnet._swish",
    "mask_guided": "effnet._swish",
    "cross_stitch": "effnet._swish",
    "seg_crop_effnet": "effnet._swish",  # over the crop, pasted back through its window
    "shared_encoder": "segresnet.down_layers.3",  # the bottleneck its MLP pools
    "smp_unet": "model.encoder._blocks.15",  # the deepest encoder stage (aux head input)
    "smp_deeplabv3plus": "model.encoder._blocks.15",
}


def test_every_classifier_variant_has_an_expected_layer():
    with_cls = [v for v in list_variants() if variant_class(v).has_cls]
    assert sorted(with_cls) == sorted(EXPECTED), "a new variant: add its CAM layer to EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cam_layer_shape_and_range(make_net, name):
    extra = {"crop_size": 64} if name == "seg_crop_effnet" else {}
    net = make_net(name, **extra).eval()
    x = torch.randn(1, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    result = grad_cam_full(net, x)
    assert result.layer == EXPECTED[name]
    assert result.cam.shape == (96, 96)
    assert np.isfinite(result.cam).all()
    assert result.cam.min() >= 0.0 and result.cam.max() <= 1.0
    tta = grad_cam_full(with_tta(net, "hflip"), x)
    assert tta.layer == EXPECTED[name] and tta.cam.shape == (96, 96)
    # The net is left as it was: no hooks, eval mode, no gradients kept.
    assert not net.training and all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks for m in net.modules())
