"""Decode images and masks to 2-D uint8 arrays, whatever the PNG mode, with clear errors.

Every image is decoded to 8-bit grayscale: the published BUSI PNGs are RGB copies of
grayscale scans and the shared copy is ``L``; both must give the same array, so colour is
dropped at decode time (``in_channels=3`` replicates the gray channel later).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from bus_mtl.data.errors import DataError, Problem

# OpenCV's internal thread pool does not survive fork(): a DataLoader worker that touches it
# (even cv2.setNumThreads) can deadlock once the parent has used it. Our parallelism comes
# from DataLoader workers and thread pools over files, so OpenCV's own threads stay off.
cv2.setNumThreads(0)


def _decode(path: Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError([Problem(str(path), "file not found")])
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        raise DataError([Problem(str(path), "unreadable or corrupt image file")])
    if arr.dtype == np.uint16:  # 16-bit PNGs: keep the top byte
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = cv2.normalize(arr, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as H×W uint8 grayscale (RGB/RGBA/L/1-bit/palette all accepted)."""
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


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain resize to ``size``×``size``: area for the image, nearest for the mask."""
    dsize = (size, size)
    h, w = image.shape
    interp = cv2.INTER_AREA if (h >= size and w >= size) else cv2.INTER_LINEAR
    img = cv2.resize(image, dsize, interpolation=interp)
    msk = cv2.resize(mask, dsize, interpolation=cv2.INTER_NEAREST)
    return img, msk
