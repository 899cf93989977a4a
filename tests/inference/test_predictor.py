"""The ONNX Predictor: no heavy imports, same outputs as ``bus-mtl predict --ckpt``,
original-size masks, calibrated probabilities, flip TTA."""

from __future__ import annotations

import csv
import subprocess
import sys

import cv2
import numpy as np
import pytest
from scipy.special import expit

from bus_mtl.inference.predictor import Predictor

from .conftest import DECISION_THRESHOLD, TEMPERATURE

HEAVY = ("torch", "lightning", "monai", "segmentation_models_pytorch", "albumentations", "wandb")


def test_predictor_import_pulls_no_training_stack():
    code = (
        "import sys, bus_mtl.inference.predictor, bus_mtl.inference\n"
        "from bus_mtl.inference import Predictor, PredictionResult\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


def test_predictor_run_in_subprocess_stays_light(mtl_onnx, odd_images):
    code = (
        "import sys\n"
        "from bus_mtl.inference import Predictor\n"
        f"r = Predictor({str(mtl_onnx)!r}).predict({str(odd_images['gray'])!r})\n"
        f"assert r.mask.shape == (97, 131)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "binary"])
def test_masks_at_original_size(mtl_onnx, odd_images, kind):
    path = odd_images[kind]
    h, w = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
    r = Predictor(mtl_onnx).predict(path)
    assert r.mask.shape == (h, w) and r.mask.dtype == np.uint8
    assert r.mask_prob.shape == (h, w)
    assert set(np.unique(r.mask)) <= {0, 1}
    assert r.lesion_area == int(r.mask.sum()) and r.lesion_found == (r.lesion_area > 0)
    np.testing.assert_array_equal(r.mask, (r.mask_prob > 0.5).astype(np.uint8))
    assert 0.0 <= r.probability <= 1.0
    assert r.class_name == ("malignant" if r.probability > DECISION_THRESHOLD else "benign")


def test_probability_is_temperature_scaled_training_logit(mtl_ckpt, mtl_onnx, odd_images):
    """Independent path: training's transform + the PyTorch net, then sigmoid(logit / T)."""
    import torch

    from bus_mtl.data.io import read_image, resize_pair
    from bus_mtl.data.transforms import build_transform
    from bus_mtl.models.rebuild import load_net

    net, meta = load_net(mtl_ckpt)
    img = read_image(odd_images["rgb"])
    resized, _ = resize_pair(img, np.zeros_like(img), meta["image_size"])
    norm = meta["normalization"]
    x = build_transform("none", norm["mean"], norm["std"])(image=resized)["image"]
    with torch.no_grad():
        logit = net(torch.from_numpy(x)[None, None].float()).logits[0, 0].item()
    r = Predictor(mtl_onnx).predict(odd_images["rgb"])
    assert r.probability == pytest.approx(float(expit(logit / TEMPERATURE)), abs=1e-4)
    assert abs(r.probability - float(expit(logit))) > 1e-6 or abs(logit) < 1e-3


def test_mirror_average_averages_the_probabilities(mtl_onnx, odd_images):
    p = Predictor(mtl_onnx)
    img = cv2.imread(str(odd_images["gray"]), cv2.IMREAD_GRAYSCALE)
    plain, mirrored = p.predict(img), p.predict(img[:, ::-1].copy())
    averaged = p.predict(img, mirror_average=True)
    np.testing.assert_allclose(
        averaged.mask_prob, (plain.mask_prob + mirrored.mask_prob[:, ::-1]) / 2, atol=1e-4
    )
    assert averaged.probability == pytest.approx((plain.probability + mirrored.probability) / 2)
    by_default = Predictor(mtl_onnx, mirror_average=True).predict(img)
    assert by_default.probability == averaged.probability


def test_predictor_tta_names_the_export_fix(mtl_onnx):
    """``tta`` means the network's augmentation, as everywhere: an export runs the one it
    was exported with, and asking for another names the fix."""
    assert Predictor(mtl_onnx, tta="none").info.tta == "none"
    with pytest.raises(ValueError, match=r"runs test-time augmentation 'none'.*--tta hflip"):
        Predictor(mtl_onnx, tta="hflip")
    with pytest.raises(ValueError, match=r"one of \('none', 'hflip'\).*'flip'"):
        Predictor(mtl_onnx, tta="flip")


def _read_csv(path):
    with open(path, newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


@pytest.mark.slow
@pytest.mark.parametrize("mirror", [[], ["--mirror-average"]], ids=["plain", "mirror"])
def test_predictor_agrees_with_predict_ckpt(mtl_ckpt, mtl_onnx, odd_images, tmp_path, mirror):
    from bus_mtl.cli.main import main

    files = [str(p) for p in odd_images.values()]
    common = ["--input", *files, "--tta", "none", *mirror, "--no-progress"]
    assert (
        main(["predict", "--ckpt", str(mtl_ckpt), "--output", str(tmp_path / "pt"), *common]) == 0
    )
    assert (
        main(["predict", "--model", str(mtl_onnx), "--output", str(tmp_path / "ox"), *common]) == 0
    )
    pt, ox = _read_csv(tmp_path / "pt/predictions.csv"), _read_csv(tmp_path / "ox/predictions.csv")
    assert sorted(pt) == sorted(ox) == sorted(files)
    for f in files:
        assert float(pt[f]["probability"]) == pytest.approx(float(ox[f]["probability"]), abs=1e-4)
        stem = odd_images[next(k for k, v in odd_images.items() if str(v) == f)].stem
        m_pt = cv2.imread(str(tmp_path / "pt/masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        m_ox = cv2.imread(str(tmp_path / "ox/masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert m_pt.shape == m_ox.shape == cv2.imread(f, cv2.IMREAD_UNCHANGED).shape[:2]
        assert set(np.unique(m_pt)) <= {0, 255}
        assert int((m_pt != m_ox).sum()) <= 5  # only threshold-boundary pixels may flip
        assert abs(int(pt[f]["lesion_area"]) - int(ox[f]["lesion_area"])) <= 5


def test_class_decision_uses_the_stored_operating_point(mtl_ckpt, mtl_onnx, odd_images):
    """The malignancy decision uses the validation-fitted threshold stored at export; the
    mask keeps its own; explicit thresholds override them as documented."""
    from bus_mtl.inference.torch_predictor import TorchPredictor

    onnx = Predictor(mtl_onnx)
    assert onnx.info.decision_threshold == pytest.approx(DECISION_THRESHOLD)
    assert onnx.decision_threshold == pytest.approx(DECISION_THRESHOLD)
    assert onnx.threshold == pytest.approx(0.5)
    torch_side = TorchPredictor.from_checkpoint(mtl_ckpt)
    assert torch_side.decision_threshold == pytest.approx(DECISION_THRESHOLD)
    p = onnx.predict(odd_images["gray"]).probability
    below, above = max(p - 0.01, 1e-3), min(p + 0.01, 1 - 1e-3)
    assert Predictor(mtl_onnx, decision_threshold=below).predict(odd_images["gray"]).label == 1
    assert Predictor(mtl_onnx, decision_threshold=above).predict(odd_images["gray"]).label == 0
    # --threshold alone still sets both (the documented behaviour before the split).
    both = Predictor(mtl_onnx, threshold=0.6)
    assert both.threshold == 0.6 and both.decision_threshold == 0.6
