"""SegResNet's normalisation is a choice (``norm``): GroupNorm (the paper's) or BatchNorm,
which folds into the convolutions of a deployed model."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from bus_mtl.models import create, export_wrapper, list_variants, variant_class
from bus_mtl.models.efficientnet_parts import BN_MOMENTUM
from bus_mtl.models.segresnet import SEGRESNET_NORMS

# The variants built on SegResNet are the ones with a ``norm`` argument.
WITH_NORM = [n for n in list_variants() if "norm" in inspect.signature(variant_class(n)).parameters]


def test_every_segresnet_variant_has_the_choice():
    assert set(WITH_NORM) == {
        "segresnet",
        "shared_encoder",
        "seg_features_effnet",
        "mask_guided",
        "cross_stitch",
        "seg_crop_effnet",
    }
    for name in WITH_NORM:
        assert inspect.signature(variant_class(name)).parameters["norm"].default == "group"


@pytest.mark.parametrize("name", WITH_NORM)
def test_batch_norm_replaces_every_group_norm(make_net, name):
    grouped, batched = make_net(name), make_net(name, norm="batch")
    assert any(isinstance(m, nn.GroupNorm) for m in grouped.segresnet.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in batched.modules())
    norms = [m for m in batched.segresnet.modules() if isinstance(m, nn.BatchNorm2d)]
    # Two per residual block (1+2+2+4 down, 1+1+1 up) and the one before the last conv.
    assert len(norms) == 2 * 12 + 1
    assert all(m.momentum == BN_MOMENTUM for m in norms)
    x = torch.randn(2, 1, 64, 64)
    a, b = grouped.eval()(x), batched.eval()(x)
    assert a.mask.shape == b.mask.shape
    assert (a.logits is None) == (b.logits is None)


@pytest.mark.parametrize("name", WITH_NORM)
def test_unknown_norm_names_the_value_and_the_choices(name):
    with pytest.raises(ValueError) as info:
        create(name, init_filters=8, norm="layer")
    message = str(info.value)
    assert "'layer'" in message and all(n in message for n in SEGRESNET_NORMS)


def test_only_group_norm_needs_multiples_of_eight():
    with pytest.raises(ValueError, match="init_filters"):
        create("segresnet", init_filters=12)
    net = create("segresnet", init_filters=12, norm="batch")
    assert net(torch.randn(1, 1, 32, 32)).mask.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="init_filters"):
        create("segresnet", init_filters=0, norm="batch")


def _optimised_ops(net: nn.Module, tmp_path, name: str) -> tuple[set[str], float]:
    """Op types of the onnxruntime-optimised graph (the serving session's level) and the
    largest |onnxruntime - PyTorch| of the mask."""
    import onnx
    import onnxruntime as ort

    from bus_mtl.inference.predictor import session_options

    wrapper = export_wrapper(net.eval()).eval()
    x = torch.randn(1, 1, 64, 64)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        wrapper, (x,), str(path), input_names=["image"], opset_version=17, dynamo=False
    )
    options = session_options(1)
    options.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        ref = wrapper(x)[0].numpy()
    ops = {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}
    return ops, float(np.abs(got - ref).max())


@pytest.mark.filterwarnings("ignore")
def test_deployed_batch_norm_leaves_no_normalisation_op(make_net, tmp_path):
    # Why "batch" exists: GroupNorm stays in the served graph as InstanceNormalization (with
    # reshapes and layout changes around it); BatchNorm is folded away by onnxruntime.
    net = make_net("segresnet", norm="batch")
    net.train()
    with torch.no_grad():  # running statistics away from their (0, 1) start
        for _ in range(3):
            net(torch.randn(4, 1, 64, 64) * 2 + 1)
    ops, diff = _optimised_ops(net, tmp_path, "batch")
    assert not ops & {"BatchNormalization", "InstanceNormalization"}, ops
    assert diff < 1e-4
    group_ops, group_diff = _optimised_ops(make_net("segresnet"), tmp_path, "group")
    assert "InstanceNormalization" in group_ops
    assert group_diff < 1e-4
