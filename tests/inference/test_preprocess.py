"""Preprocessing must match training's decode, resize and normalisation exactly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax

from bus_mtl.data.errors import ImageReadError
from bus_mtl.data.io import fit_to_square, read_image
from bus_mtl.inference.metadata import ModelInfo
from bus_mtl.inference.preprocess import class_probabilities, mask_to_original, preprocess, to_gray


@pytest.fixture
def image_files(tmp_path, odd_images):
    rng = np.random.default_rng(3)
    g16 = (rng.random((40, 33)) * 65535).astype(np.uint16)
    p16 = tmp_path / "deep.png"
    cv2.imwrite(str(p16), g16)
    return [*odd_images.values(), p16]


def test_inference_reads_files_with_the_training_reader(image_files):
    """One reader: the predictors decode a file as training did, any PNG mode to H×W uint8."""
    from bus_mtl.inference import predict, predictor

    assert predictor.read_image is read_image and predict.read_image is read_image
    for path in image_files:
        gray = read_image(path)
        assert gray.dtype == np.uint8 and gray.ndim == 2, path


@pytest.mark.parametrize("shape", [(97, 131), (300, 280), (40, 500)])
def test_preprocess_resizes_as_the_training_cache(shape):
    from bus_mtl.data.io import resize_pair

    img = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    expected, _ = resize_pair(img, np.zeros_like(img), 64)
    x = preprocess(img, ModelInfo(image_size=64, mean=0.0, std=1.0))
    np.testing.assert_allclose(x[0, 0] * 255.0, expected, atol=1e-3)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_preprocess_matches_training_normalisation(in_channels):
    from bus_mtl.data.transforms import build_transform

    img = (np.random.default_rng(1).random((80, 72)) * 255).astype(np.uint8)
    info = ModelInfo(image_size=64, in_channels=in_channels, mean=0.31, std=0.17)
    x = preprocess(img, info)
    assert x.shape == (1, in_channels, 64, 64) and x.dtype == np.float32
    resized = fit_to_square(img, 64)[0]
    expected = build_transform("none", 0.31, 0.17)(image=resized)["image"]
    for c in range(in_channels):
        np.testing.assert_allclose(x[0, c], expected, atol=1e-5)


def test_preprocess_hflip_batch_is_mirrored():
    img = (np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)
    x = preprocess(img, ModelInfo(image_size=64), hflip=True)
    assert x.shape == (2, 1, 64, 64)
    np.testing.assert_array_equal(x[1, 0], x[0, 0][:, ::-1])


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="nowhere.png: file not found"):
        read_image(tmp_path / "nowhere.png")


def test_to_gray_accepts_common_arrays():
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: RGB luminance weight 0.299
    assert to_gray(rgb)[0, 0] == round(0.299 * 255)
    assert to_gray(np.ones((5, 7), bool)).max() == 255
    assert to_gray(np.full((5, 7), 0.5, np.float32))[0, 0] == 128
    with pytest.raises(ValueError, match="shape"):
        to_gray(np.zeros((2, 3, 4, 5)))


def test_class_probabilities_apply_temperature():
    logits = np.array([[2.0], [-1.0]])
    p = class_probabilities(logits, temperature=2.0)
    np.testing.assert_allclose(p[:, 1], expit(logits[:, 0] / 2.0))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    logits3 = np.array([[1.0, 3.0, -2.0]])
    np.testing.assert_allclose(class_probabilities(logits3, 0.5), scipy_softmax(logits3 / 0.5, 1))


def test_mask_to_original_size_and_values():
    prob = np.zeros((64, 64), np.float32)
    prob[16:48, 16:48] = 1.0
    out = mask_to_original(prob, (97, 131))
    assert out.shape == (97, 131)
    # the centre of the square stays lesion, the corners stay background
    assert out[48, 65] == pytest.approx(1.0) and out[0, 0] == pytest.approx(0.0)


def test_model_info_round_trip_and_errors():
    info = ModelInfo(image_size=96, num_classes=3, temperature=1.5, mean=0.2, std=0.3)
    assert info.class_names == ("benign", "malignant", "normal")
    assert ModelInfo.from_json(info.to_json()) == info
    with pytest.raises(ValueError, match="temperature"):
        ModelInfo(image_size=64, temperature=0.0)
    with pytest.raises(ValueError, match="image_size"):
        ModelInfo.from_dict({"normalization": {"mean": 0.1, "std": 0.2}})
    with pytest.raises(ValueError, match="model.onnx: invalid"):
        ModelInfo.from_json("{not json", source="model.onnx")
