"""Grad-CAM of the malignancy logit (:mod:`bus_mtl.inference.cam`): shape and range, the map
peaking on the lesion a hand-made net scores, the flip-TTA and crop-window mappings, and
``bus-mtl predict --cam``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from bus_mtl.cli.main import main
from bus_mtl.inference.cam import cam_overlay, grad_cam, grad_cam_full
from bus_mtl.models import FlipTTA, create
from bus_mtl.models.output import MTLOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64
# The lesion: rows 8..23, columns 36..51 (top right, away from the centre and the mirror).
LESION = (slice(8, 24), slice(36, 52))


class BrightnessScorer(nn.Module):
    """Malignancy logit = mean of ReLU(x) - mean of ReLU(-x): bright pixels raise it, dark
    ones lower it. Channel 0 of ``features`` is ReLU(x), channel 1 ReLU(-x)."""

    has_seg = False
    has_cls = True
    num_classes = 1
    in_channels = 1

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        self.features = nn.ReLU()
        self.fc = nn.Linear(2, num_classes, bias=False)
        with torch.no_grad():
            weight = torch.zeros(num_classes, 2)
            weight[-1 if num_classes == 1 else 1] = torch.tensor([1.0, -1.0])
            self.fc.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> MTLOutput:
        pooled = self.features(self.conv(x)).mean(dim=(2, 3))
        return MTLOutput(mask=None, logits=self.fc(pooled))


def lesion_image() -> torch.Tensor:
    """1×1×64×64: background -1, the lesion +2 (a normalised bright lesion)."""
    x = torch.full((1, 1, SIZE, SIZE), -1.0)
    x[0, 0, LESION[0], LESION[1]] = 2.0
    return x


def _inside(cam: np.ndarray) -> np.ndarray:
    inside = np.zeros_like(cam, dtype=bool)
    inside[LESION] = True
    return inside


def test_map_peaks_on_the_lesion_the_logit_depends_on():
    net = BrightnessScorer().eval()
    result = grad_cam_full(net, lesion_image())
    cam = result.cam
    assert result.layer == "features"  # the last feature map before the pooling
    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert _inside(cam)[peak]
    inside = _inside(cam)
    # Bilinear upsampling of a 1×1-stride map: the lesion holds nearly all of the mass.
    assert cam[inside].mean() > 0.9 and cam[~inside].max() < 0.05


def test_flip_tta_explains_both_views_in_the_image_frame():
    """The mirror's map is flipped back: the peak stays on the lesion, not its mirror."""
    cam = grad_cam(FlipTTA(BrightnessScorer().eval()), lesion_image())
    inside = _inside(cam)
    assert cam[inside].mean() > 0.9
    assert cam[:, ::-1][inside].max() < 0.05  # the mirrored position stays cold


def test_three_classes_explain_the_malignant_logit_and_layers_by_name():
    net = BrightnessScorer(num_classes=3).eval()
    cam = grad_cam(net, lesion_image()[0], layer="features")  # C×H×W accepted
    assert cam[_inside(cam)].mean() > 0.9
    # The benign logit has zero weights here: nothing speaks for it.
    assert not grad_cam(net, lesion_image(), class_index=0).any()
    with pytest.raises(ValueError, match="'nope' is not a module of BrightnessScorer"):
        grad_cam(net, lesion_image(), layer="nope")


def test_refuses_nets_without_classifier_and_batches():
    seg = create("segresnet", init_filters=8).eval()
    with pytest.raises(ValueError, match="no classification head"):
        grad_cam(seg, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expected one image"):
        grad_cam(BrightnessScorer(), torch.zeros(2, 1, 8, 8))


def test_seg_crop_map_lies_in_the_crop_window(monkeypatch):
    """SegCropEffNet classifies a crop: its map is put back into that window, zero outside."""
    torch.manual_seed(0)
    net = create("seg_crop_effnet", init_filters=8, seg_size=32, crop_size=64).eval()
    window = torch.tensor([[20.0, 10.0, 84.0, 74.0]])  # x0, y0, x1, y1 of a 96×96 input
    monkeypatch.setattr(
        net, "crop_window", lambda seg, h, w: window.expand(seg.shape[0], 4).clone()
    )
    result = grad_cam_full(net, torch.randn(1, 1, 96, 96))
    cam = result.cam
    assert result.layer == "effnet._swish"  # the head of the crop's EfficientNet
    assert cam.shape == (96, 96) and cam.max() == pytest.approx(1.0)
    outside = np.ones_like(cam, dtype=bool)
    outside[10:74, 20:84] = False
    assert cam[outside].max() == 0.0


def test_cam_overlay_keeps_the_image_where_the_map_is_zero():
    gray = np.full((20, 30), 100, np.uint8)
    cam = np.zeros((20, 30), np.float32)
    cam[5:10, 5:10] = 1.0
    rgb = cam_overlay(gray, cam)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 100).all() and not (rgb[7, 7] == 100).all()
    with pytest.raises(ValueError, match="cam shape"):
        cam_overlay(gray, cam[:5])


def test_predict_cam_writes_maps_beside_the_overlays(mtl_ckpt, odd_images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--ckpt",
            str(mtl_ckpt),
            "--input",
            str(odd_images["gray"]),
            "--output",
            str(out),
        ]
        + ["--cam", "--no-progress"]
    )
    assert code == 0
    cam = cv2.imread(str(out / "cams" / "scan_gray.png"))
    assert cam.shape == (97, 131, 3)  # the image's own size
    assert (out / "overlays" / "scan_gray.png").is_file()
    code = main(
        ["predict", "--model", str(tmp_path / "model.onnx"), "--input", str(odd_images["gray"])]
        + ["--output", str(out), "--cam"]
    )
    assert code == 2
    assert "--cam needs a checkpoint (--ckpt CKPT)" in capsys.readouterr().err


def test_predict_cam_refuses_a_segmentation_only_model(seg_only_ckpt, odd_images, tmp_path, capsys):
    code = main(
        ["predict", "--ckpt", str(seg_only_ckpt), "--input", str(odd_images["gray"])]
        + ["--output", str(tmp_path / "o"), "--cam"]
    )
    assert code == 2
    assert "no classification head" in capsys.readouterr().err
    assert not (tmp_path / "o" / "cams").exists()
