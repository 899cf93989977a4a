"""Pre- and postprocessing with numpy and OpenCV only (no torch), identical to training.

Image files are read by the training reader itself, :func:`bus_mtl.data.io.read_image`
(torch-free; :class:`~bus_mtl.data.errors.ImageReadError` naming a file it cannot read). The
square input and the way back to the original size are the training code's own too
(:func:`~bus_mtl.data.io.fit_to_square` / :func:`~bus_mtl.data.io.from_square`), in the
model's ``resize`` mode (``squash`` or ``letterbox``, recorded in its metadata).
"""

from __future__ import annotations

import cv2
import numpy as np

from bus_mtl.data.io import fit_to_square, from_square, square_geometry
from bus_mtl.inference.metadata import ModelInfo


def to_gray(image: np.ndarray) -> np.ndarray:
    """An in-memory image (H×W, H×W×1, RGB H×W×3 or RGBA H×W×4; uint8, bool or float in
    [0, 1]) as H×W uint8 grey. Colour arrays are taken as RGB, as PIL and matplotlib give."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"expected an H×W or H×W×3/4 image array, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        code = cv2.COLOR_RGBA2GRAY if arr.shape[2] == 4 else cv2.COLOR_RGB2GRAY
        arr = cv2.cvtColor(np.ascontiguousarray(arr), code)
    return np.ascontiguousarray(arr)


def preprocess(gray: np.ndarray, info: ModelInfo, hflip: bool = False) -> np.ndarray:
    """H×W uint8 grey -> 1×C×S×S float32 network input (``(x / 255 - mean) / std``), made
    square exactly as the training cache makes it (:func:`~bus_mtl.data.io.fit_to_square`
    in the model's ``info.resize`` mode).

    With ``hflip`` the batch holds the image and its horizontal mirror (2×C×S×S).
    """
    img = fit_to_square(gray, info.image_size, info.resize)[0].astype(np.float32)
    img = (img / np.float32(255.0) - np.float32(info.mean)) / np.float32(info.std)
    batch = img[None, None]
    if hflip:
        batch = np.concatenate([batch, batch[..., ::-1]], axis=0)
    return np.ascontiguousarray(np.repeat(batch, info.in_channels, axis=1), dtype=np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow for large |x|
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def class_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """B×K logits -> B×K' calibrated probabilities: K = 1 gives [p(benign), p(malignant)]
    from ``sigmoid(logit / T)``; K = 3 gives ``softmax(logits / T)``."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    if scaled.shape[-1] == 1:
        p = sigmoid(scaled)
        return np.concatenate([1.0 - p, p], axis=-1)
    return softmax(scaled, axis=-1)


def mask_to_original(
    mask_prob: np.ndarray, shape: tuple[int, int], resize: str = "squash"
) -> np.ndarray:
    """S×S mask probability -> H×W float32 at the original image size: the padding of a
    ``letterbox`` input cropped off, then bilinear (:func:`~bus_mtl.data.io.from_square`).
    ``resize`` is the model's (``info.resize``)."""
    prob = np.asarray(mask_prob)
    return from_square(prob, square_geometry(shape, prob.shape[-1], resize))
