"""Decode images and masks to 2-D uint8 arrays, whatever the PNG mode, with clear errors.

Every image is decoded to 8-bit grayscale: the published BUSI PNGs are RGB copies of
grayscale scans and the shared copy is ``L``; both must give the same array, so colour is
dropped at decode time (``in_channels=3`` replicates the gray channel later).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from bus_mtl.data.errors import DataError, ImageReadError, Problem

# OpenCV's internal thread pool does not survive fork(): a DataLoader worker that touches it
# (even cv2.setNumThreads) can deadlock once the parent has used it. Our parallelism comes
# from DataLoader workers and thread pools over files, so OpenCV's own threads stay off.
cv2.setNumThreads(0)


def _decode(path: Path) -> np.ndarray:
    """The file's pixels as uint8 (any channels); :class:`ImageReadError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        raise ImageReadError(path, "unreadable or corrupt image file")
    if arr.dtype == np.uint16:  # 16-bit PNGs: keep the top byte
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = cv2.normalize(arr, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as H×W uint8 grayscale (RGB/RGBA/L/1-bit/16-bit/palette all accepted).

    The one reader of training, evaluation and inference (torch-free, so the ONNX
    ``Predictor`` uses it too). Raises :class:`~bus_mtl.data.errors.ImageReadError` (a
    :class:`DataError`) naming the file when it is missing, empty or not an image.
    """
    arr = _decode(Path(path))
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2GRAY)
        elif arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        else:
            arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def read_mask(path: str | Path) -> np.ndarray:
    """Read one mask file as H×W uint8 in {0, 1}.

    Any colour channel counts (alpha is ignored). A mask whose values are all ≤ 1 is a 0/1
    mask; otherwise values ≥ 128 are foreground, so stray anti-aliasing is not lesion.
    """
    arr = _decode(Path(path))
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    thresh = 0 if arr.max(initial=0) <= 1 else 127
    return (arr > thresh).astype(np.uint8)


def read_masks(paths: Sequence[str | Path], shape: tuple[int, int]) -> np.ndarray:
    """Pixel-wise OR of mask files, checked against the image ``shape`` (H, W)."""
    out = np.zeros(shape, dtype=np.uint8)
    problems = []
    for p in paths:
        try:
            m = read_mask(p)
        except DataError as err:
            problems.extend(err.problems)
            continue
        if m.shape != tuple(shape):
            problems.append(
                Problem(
                    str(p),
                    f"mask size {m.shape[1]}x{m.shape[0]} (WxH) differs from its image "
                    f"{shape[1]}x{shape[0]}",
                )
            )
            continue
        out |= m
    if problems:
        raise DataError(problems)
    return out


#: How an image of any aspect ratio becomes the square network input (``data.resize``).
RESIZE_MODES = ("squash", "letterbox")
ResizeMode = Literal["squash", "letterbox"]


def check_resize(mode: str, what: str = "resize") -> str:
    """``mode`` when it is one of :data:`RESIZE_MODES`, else ``ValueError`` naming it."""
    if mode not in RESIZE_MODES:
        raise ValueError(
            f"{what}: {mode!r} is not one of {RESIZE_MODES}; squash stretches every image to "
            "the square input (the default), letterbox keeps its aspect ratio and pads the "
            "shorter side with 0"
        )
    return mode


@dataclass(frozen=True)
class Geometry:
    """Where an original H×W image lies inside the ``size``×``size`` network input.

    The image was resized to ``inner_height``×``inner_width`` and placed with its top-left
    corner at (``top``, ``left``); every other pixel is padding (0). ``squash`` fills the
    whole square (no padding); ``letterbox`` scales the longer side to ``size`` and centres
    the image, so a square image gets the same geometry in both modes.
    """

    height: int
    width: int
    size: int
    top: int
    left: int
    inner_height: int
    inner_width: int
    mode: str

    @property
    def padding_fraction(self) -> float:
        """Share of the square input that is padding (0 for ``squash``)."""
        return 1.0 - (self.inner_height * self.inner_width) / float(self.size * self.size)


def square_geometry(shape: Sequence[int], size: int, mode: str = "squash") -> Geometry:
    """The :class:`Geometry` of an image of ``shape`` (H, W, ...) in a ``size``² input."""
    check_resize(mode)
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1 or size < 1:
        raise ValueError(f"square_geometry: need a non-empty image and size, got {h}x{w}, {size}")
    if mode == "squash":
        return Geometry(h, w, size, 0, 0, size, size, mode)
    # Integer round-half-up of side * size / longest: the longer side is exactly ``size``.
    longest = max(h, w)
    inner_h = max(1, (2 * h * size + longest) // (2 * longest))
    inner_w = max(1, (2 * w * size + longest) // (2 * longest))
    return Geometry(
        h, w, size, (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w, mode
    )


def fit_to_square(
    image: np.ndarray, size: int, mode: str = "squash", mask: bool = False
) -> tuple[np.ndarray, Geometry]:
    """An H×W array as the ``size``×``size`` network input, and where the image lies in it.

    ``squash``: plain resize to the square (the aspect ratio is lost). ``letterbox``: the
    longer side scaled to ``size`` keeping the aspect ratio, the shorter side padded
    symmetrically with 0. Images use area interpolation when both sides shrink, bilinear
    otherwise; ``mask=True`` uses nearest so a {0, 1} mask stays {0, 1}. Every resize to the
    network input (decode cache, inference preprocessing) goes through here, and
    :func:`from_square` undoes it.
    """
    geometry = square_geometry(image.shape, size, mode)
    h, w = geometry.height, geometry.width
    inner_h, inner_w = geometry.inner_height, geometry.inner_width
    if mask:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if (h >= inner_h and w >= inner_w) else cv2.INTER_LINEAR
    inner = cv2.resize(image, (inner_w, inner_h), interpolation=interp)
    if (inner_h, inner_w) == (size, size):
        return inner, geometry
    out = np.zeros((size, size, *inner.shape[2:]), dtype=inner.dtype)
    out[geometry.top : geometry.top + inner_h, geometry.left : geometry.left + inner_w] = inner
    return out, geometry


def from_square(prob_or_logits: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A ``size``×``size`` map (probabilities or logits) back at the original H×W, float32.

    The padding of :func:`fit_to_square` is cropped off and the rest resized bilinearly (as
    a deployed model's probability map is) to the original size; threshold afterwards.
    """
    arr = np.asarray(prob_or_logits, dtype=np.float32)
    if arr.shape != (geometry.size, geometry.size):
        raise ValueError(
            f"from_square: expected a {geometry.size}x{geometry.size} map (the network input "
            f"size), got shape {arr.shape}"
        )
    top, left = geometry.top, geometry.left
    inner = arr[top : top + geometry.inner_height, left : left + geometry.inner_width]
    return cv2.resize(
        np.ascontiguousarray(inner),
        (geometry.width, geometry.height),
        interpolation=cv2.INTER_LINEAR,
    )


def resize_pair(
    image: np.ndarray, mask: np.ndarray, size: int, mode: str = "squash"
) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask as the ``size``×``size`` input (:func:`fit_to_square` of each)."""
    img, _ = fit_to_square(image, size, mode)
    msk, _ = fit_to_square(mask, size, mode, mask=True)
    return img, msk
