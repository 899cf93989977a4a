"""Backward passes reach the intended branches (and only those)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def _backward(net, which: str, size: int = 64):
    net.train()
    net.zero_grad(set_to_none=True)
    out = net(torch.randn(2, net.in_channels, size, size))
    target = {"seg": out.mask, "cls": out.logits, "both": None}[which]
    loss = (
        (out.mask.square().mean() + out.logits.square().mean())
        if target is None
        else target.square().mean()
    )
    loss.backward()
    return out


def _segresnet_encoder(seg) -> list[nn.Module]:
    return [seg.convInit, *seg.down_layers]


def _segresnet_decoder(seg) -> list[nn.Module]:
    return [*seg.up_layers, *seg.up_samples, seg.conv_final]


# name -> (classification-only modules, segmentation-only modules, shared modules)
def _branches(name: str, net) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    if name == "shared_encoder":
        s = net.segresnet
        return [net.cls_head], _segresnet_decoder(s), _segresnet_encoder(s)
    if name == "seg_features_effnet":
        s = net.segresnet
        cls = [net.effnet, net.adapter, *net.laterals.values()]
        return cls, _segresnet_decoder(s), _segresnet_encoder(s)
    if name == "mask_guided":
        # The cascade shares nothing but p: the cls loss reaches the whole SegResNet.
        return [net.effnet], [], [net.segresnet]
    if name == "cross_stitch":
        e = net.effnet
        cls_only = [e._conv_head, e._bn1, e._fc, *e._blocks[net.splits[-1] :]]
        return cls_only, _segresnet_decoder(net.segresnet), [*net.stitches, e._conv_stem]
    if name == "seg_crop_effnet":
        # The crop box is detached: each loss trains its own network, nothing is shared.
        return [net.effnet], [net.segresnet], []
    if name in ("smp_unet", "smp_deeplabv3plus"):
        m = net.model
        return [m.classification_head], [m.decoder, m.segmentation_head], [m.encoder]
    raise AssertionError(name)


TWO_HEADED = [
    "shared_encoder",
    "seg_features_effnet",
    "mask_guided",
    "cross_stitch",
    "smp_unet",
    "smp_deeplabv3plus",
    "seg_crop_effnet",
]


@pytest.mark.parametrize("name", TWO_HEADED)
def test_each_loss_reaches_its_branch_and_the_shared_part(make_net, name):
    net = make_net(name)
    cls_only, seg_only, shared = _branches(name, net)

    _backward(net, "cls")
    assert all(_grad_norm(m) > 0 for m in cls_only), "cls loss must train the classifier"
    assert all(_grad_norm(m) > 0 for m in shared), "cls loss must reach the shared part"
    assert all(_grad_norm(m) == 0 for m in seg_only), "cls loss must not touch the decoder"

    _backward(net, "seg")
    assert all(_grad_norm(m) > 0 for m in seg_only + shared)
    assert all(_grad_norm(m) == 0 for m in cls_only), "seg loss must not touch the classifier"


@pytest.mark.parametrize("feature_source", ["multiscale", "bottleneck"])
def test_paper_best_encoder_learns_from_the_classification_loss_alone(make_net, feature_source):
    net = make_net("seg_features_effnet", feature_source=feature_source)
    _backward(net, "cls")
    seg = net.segresnet
    # Every encoder stage up to the one feeding the EfficientNet gets a gradient.
    for i, stage in enumerate([seg.convInit, *seg.down_layers]):
        assert _grad_norm(stage) > 0, f"encoder stage {i} got no gradient"
    assert _grad_norm(seg.conv_final) == 0


def test_paper_best_bottleneck_mode_has_no_dead_parameters(make_net):
    # The pruned stem/blocks must be gone, not just unused (DDP and parameter counts).
    net = make_net("seg_features_effnet", feature_source="bottleneck")
    _backward(net, "both")
    dead = [n for n, p in net.named_parameters() if p.grad is None]
    assert dead == []
    multiscale = make_net("seg_features_effnet")
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params < sum(p.numel() for p in multiscale.parameters())


@pytest.mark.parametrize("name", ["segresnet", "efficientnet", *TWO_HEADED])
def test_every_parameter_gets_a_gradient(make_net, name):
    net = make_net(name)
    _backward(net, "seg" if name == "segresnet" else "cls" if name == "efficientnet" else "both")
    dead = [n for n, p in net.named_parameters() if p.grad is None]
    assert dead == [], f"{name}: parameters without gradient: {dead[:5]}"


def test_detached_mask_stops_the_cascade_gradient(make_net):
    net = make_net("mask_guided", detach_mask=True)
    _backward(net, "cls")
    assert _grad_norm(net.segresnet) == 0
    assert _grad_norm(net.effnet) > 0
