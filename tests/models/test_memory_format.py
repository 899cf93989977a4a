"""Channels-last on every device: ``ChannelsFirstGroupNorm`` changes speed, never numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bus_mtl.models import list_variants
from bus_mtl.models.segresnet import (
    ChannelsFirstGroupNorm,
    build_segresnet,
    use_channels_first_group_norm,
)

CL = torch.channels_last


def test_channels_first_group_norm_matches_group_norm_in_both_formats():
    torch.manual_seed(0)
    plain = nn.GroupNorm(4, 8)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    swapped = use_channels_first_group_norm(nn.Sequential(plain))[0]
    assert type(swapped) is ChannelsFirstGroupNorm
    # The parameters are moved, not copied: an optimizer built before the swap still works.
    assert swapped.weight is plain.weight and swapped.bias is plain.bias

    x = torch.randn(2, 8, 16, 12)
    ref_in = x.clone().requires_grad_()
    ref = nn.functional.group_norm(ref_in, 4, plain.weight, plain.bias, plain.eps)
    ref.square().sum().backward()
    ref_grads = (ref_in.grad.clone(), plain.weight.grad.clone(), plain.bias.grad.clone())
    plain.weight.grad = plain.bias.grad = None

    cl_in = x.clone().contiguous(memory_format=CL).requires_grad_()
    out = swapped(cl_in)
    # Channels-last in, channels-last out: the next convolution keeps its fast layout.
    assert out.is_contiguous(memory_format=CL) and not out.is_contiguous()
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for got, want in zip((cl_in.grad, swapped.weight.grad, swapped.bias.grad), ref_grads):
        torch.testing.assert_close(got, want)
    # A contiguous input takes GroupNorm's own path (what tracing and export see).
    torch.testing.assert_close(swapped(x), ref)
    assert swapped(x).is_contiguous()


def test_segresnet_state_dict_is_unchanged_by_the_swap():
    net = build_segresnet(1, 8, None)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is ChannelsFirstGroupNorm for m in norms)
    # Same keys as MONAI's own SegResNet, so older checkpoints load.
    from monai.networks.nets import SegResNet

    monai_keys = set(
        SegResNet(spatial_dims=2, in_channels=1, out_channels=1, init_filters=8).state_dict()
    )
    assert set(net.state_dict()) == monai_keys


@pytest.mark.parametrize("name", list_variants())
def test_channels_last_gives_the_same_outputs(name, make_net):
    net = make_net(name).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=CL)(x.contiguous(memory_format=CL))
    for got, want in ((out.mask, ref.mask), (out.logits, ref.logits)):
        if want is not None:
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
