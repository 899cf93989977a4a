"""Bad names, arguments and sizes give clear errors."""

from __future__ import annotations

import pytest
import torch

from bus_mtl.models import create, list_variants


def test_unknown_variant_lists_the_valid_names():
    with pytest.raises(KeyError) as info:
        create("segformer")
    message = str(info.value)
    assert "segformer" in message
    for name in list_variants():
        assert name in message


@pytest.mark.parametrize("name", list_variants())
@pytest.mark.parametrize(("arg", "value"), [("in_channels", 2), ("num_classes", 2)])
def test_bad_channels_or_classes(name, arg, value):
    with pytest.raises(ValueError, match=arg):
        create(name, **{arg: value})


@pytest.mark.parametrize(
    "name",
    ["efficientnet", "seg_features_effnet", "mask_guided", "cross_stitch", "seg_crop_effnet"],
)
def test_unknown_model_name_lists_valid_ones(name):
    with pytest.raises(ValueError) as info:
        create(name, model_name="efficientnet-b9")
    assert "efficientnet-b9" in str(info.value)
    assert "efficientnet-lite0" in str(info.value) and "efficientnet-b7" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "segresnet",
        "shared_encoder",
        "seg_features_effnet",
        "mask_guided",
        "cross_stitch",
        "seg_crop_effnet",
    ],
)
def test_init_filters_must_fit_group_norm(name):
    with pytest.raises(ValueError, match="init_filters"):
        create(name, init_filters=12)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="feature_source"):
        create("seg_features_effnet", feature_source="decoder")
    with pytest.raises(ValueError, match="encoder_name"):
        create("smp_unet", encoder_name="efficientnet-b99")
    with pytest.raises(ValueError, match="cls_dropout"):
        create("shared_encoder", cls_dropout=1.5)
    with pytest.raises(ValueError, match="self_weight"):
        create("cross_stitch", self_weight=2.0)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("segresnet", 60),
        ("shared_encoder", 44),
        ("efficientnet", 80),
        ("seg_features_effnet", 72),
        ("mask_guided", 48),
        ("cross_stitch", 40),
        ("smp_unet", 80),
        ("smp_deeplabv3plus", 48),
    ],
)
def test_size_not_multiple_of_divisor_names_the_size(make_net, name, size):
    net = make_net(name).eval()
    assert size % net.size_divisor != 0
    with pytest.raises(ValueError, match=rf"64×{size}") as info:
        net(torch.randn(1, 1, 64, size))
    assert str(net.size_divisor) in str(info.value)


def test_wrong_channel_count_names_the_shape(make_net):
    net = make_net("seg_features_effnet").eval()
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 64\)"):
        net(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="B×1×H×W"):
        net(torch.randn(1, 64, 64))
