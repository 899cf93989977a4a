"""``FlipTTA``: the mean of the net on the image and on its mirror, as one 2B batch."""

from __future__ import annotations

import pytest
import torch

from bus_mtl.models import TTA_MODES, FlipTTA, check_tta, tta_of, with_tta


def _manual_average(net, x):
    """Two separate calls of B images: the reference the 2B batch must equal."""
    plain, mirrored = net(x), net(x.flip(-1))
    mask = None if plain.mask is None else (plain.mask + mirrored.mask.flip(-1)) / 2
    logits = None if plain.logits is None else (plain.logits + mirrored.logits) / 2
    return mask, logits


@pytest.mark.parametrize(
    "name", ["seg_features_effnet", "segresnet", "efficientnet", "seg_crop_effnet"]
)
def test_flip_tta_is_the_average_of_two_calls(name, make_net):
    net = make_net(name).eval()  # BatchNorm on running statistics, as whenever TTA is used
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    wrapped = FlipTTA(net).eval()
    with torch.no_grad():
        got = wrapped(x)
        mask, logits = _manual_average(net, x)
        plain = net(x)
    for a, b in ((got.mask, mask), (got.logits, logits)):
        if b is None:
            assert a is None  # a missing head stays missing
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # ... and it is not the plain output: the mirror view changes the numbers. (The mask:
    # an untrained classifier's eval-mode logits do not depend on the image.)
    if plain.mask is not None:
        assert not torch.allclose(got.mask, plain.mask)


def test_flip_tta_shows_the_net_through_and_keeps_its_weights(make_net):
    net = make_net("seg_features_effnet", num_classes=3)
    wrapped = FlipTTA(net)
    assert (wrapped.has_seg, wrapped.has_cls) == (net.has_seg, net.has_cls)
    assert (wrapped.in_channels, wrapped.num_classes) == (1, 3)
    assert wrapped.size_divisor == net.size_divisor
    assert list(wrapped.parameters()) == list(net.parameters())  # no weights of its own
    # Mirror-equivariant: the mirrored image gives the mirrored mask and the same logits.
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    wrapped.eval()
    with torch.no_grad():
        a, b = wrapped(x), wrapped(x.flip(-1))
    torch.testing.assert_close(b.mask, a.mask.flip(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already wrapped"):
        FlipTTA(wrapped)


def test_modes_are_checked_and_agree_with_the_inference_metadata(make_net):
    from bus_mtl.inference.metadata import TTA_MODES as INFERENCE_MODES

    assert TTA_MODES == INFERENCE_MODES == ("none", "hflip")
    net = make_net("segresnet")
    assert with_tta(net, "none") is net and tta_of(net) == "none"
    assert isinstance(with_tta(net, "hflip"), FlipTTA) and tta_of(with_tta(net, "hflip")) == "hflip"
    with pytest.raises(ValueError, match=r"\('none', 'hflip'\).*got 'vflip'.*model.tta: hflip"):
        check_tta("vflip")
    with pytest.raises(ValueError, match="'flip'"):
        with_tta(net, "flip")
