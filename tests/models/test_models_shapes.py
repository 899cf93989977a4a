"""One shape tester for every variant × C × size × K."""

from __future__ import annotations

import pytest
import torch

from bus_mtl.models import MTLOutput, list_variants

_NETS: dict[tuple, torch.nn.Module] = {}


@pytest.fixture
def net_for(make_net):
    def get(name: str, in_channels: int, num_classes: int, **extra) -> torch.nn.Module:
        # Both sizes reuse one instance: construction dominates the cost of this grid.
        key = (name, in_channels, num_classes, tuple(sorted(extra.items())))
        if key not in _NETS:
            _NETS[key] = make_net(name, in_channels, num_classes, **extra).eval()
        return _NETS[key]

    return get


def _check(net, out, batch, in_channels, size, num_classes):
    assert isinstance(out, MTLOutput)
    if net.has_seg:
        assert out.mask.shape == (batch, 1, size, size)
        assert out.mask.dtype == torch.float32
        assert torch.isfinite(out.mask).all()
    else:
        assert out.mask is None
    if net.has_cls:
        assert out.logits.shape == (batch, num_classes)
        assert torch.isfinite(out.logits).all()
    else:
        assert out.logits is None


def test_registry_lists_every_variant_in_order():
    assert list_variants() == [
        "segresnet",
        "efficientnet",
        "shared_encoder",
        "seg_features_effnet",
        "mask_guided",
        "cross_stitch",
        "smp_unet",
        "smp_deeplabv3plus",
        "seg_crop_effnet",
    ]


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list_variants())
def test_output_shapes(net_for, name, in_channels, size, num_classes):
    net = net_for(name, in_channels, num_classes)
    with torch.no_grad():
        out = net(torch.randn(2, in_channels, size, size))
    _check(net, out, 2, in_channels, size, num_classes)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("seg_features_effnet", {"feature_source": "bottleneck"}),
        ("seg_features_effnet", {"model_name": "efficientnet-lite0"}),
        ("mask_guided", {"attention_pooling": False}),
        ("mask_guided", {"model_name": "efficientnet-lite0"}),
        ("efficientnet", {"model_name": "efficientnet-lite0"}),
        ("cross_stitch", {"model_name": "efficientnet-lite0"}),
        ("seg_crop_effnet", {"model_name": "efficientnet-lite0"}),
        ("seg_crop_effnet", {"seg_size": None, "square": False}),
        ("seg_crop_effnet", {"segmenter": "effnet_unet", "box_jitter": 0.3}),
        ("seg_crop_effnet", {"mask_channel": True}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())),
)
def test_output_shapes_options(net_for, name, extra):
    net = net_for(name, 3, 3, **extra)
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == (2, 3)
    if net.has_seg:
        assert out.mask.shape == (2, 1, 64, 96)


def test_attributes_and_divisors(net_for):
    for name in list_variants():
        net = net_for(name, 1, 1)
        assert isinstance(net.has_seg, bool) and isinstance(net.has_cls, bool)
        assert net.has_seg or net.has_cls
        expected = {"segresnet": 8, "shared_encoder": 8, "seg_crop_effnet": 1}.get(name, 32)
        assert net.size_divisor == expected, name


def test_segresnet_only_divides_by_8(net_for):
    net = net_for("segresnet", 1, 1)
    with torch.no_grad():
        out = net(torch.randn(1, 1, 40, 72))
    assert out.mask.shape == (1, 1, 40, 72)


def test_batch_elements_are_independent_in_eval(net_for):
    # The same image must give the same output whatever else is in the batch (no batch
    # statistics leak in eval mode).
    net = net_for("seg_features_effnet", 1, 1)
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        full = net(x)
        single = net(x[1:2])
    torch.testing.assert_close(full.mask[1:2], single.mask, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.logits[1:2], single.logits, atol=1e-5, rtol=1e-4)


def test_parameter_counts_match_the_libraries():
    # Single-task variants add nothing to the library network they wrap.
    from efficientnet_pytorch import EfficientNet
    from monai.networks.nets import SegResNet

    from bus_mtl.models import count_parameters, create

    monai = SegResNet(spatial_dims=2, in_channels=1, out_channels=1, init_filters=16)
    assert count_parameters(create("segresnet")) == count_parameters(monai)
    effnet = EfficientNet.from_name("efficientnet-b0", in_channels=1, num_classes=1)
    assert count_parameters(create("efficientnet")) == count_parameters(effnet)
    # The hard-sharing head: (2·128 -> 128) + (128 -> 1) linear layers on top of SegResNet.
    head = (2 * 128 * 128 + 128) + (128 + 1)
    assert count_parameters(create("shared_encoder")) == count_parameters(monai) + head
