"""Fixture builders shared by the data tests (pytest runs with --import-mode=importlib, so
they are fixtures rather than an importable helper module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bus_mtl.data import make_phantom


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode or ("L" if array.ndim == 2 else "RGB")).save(path)
    return path


def make_busi_tree(root: Path, n_per_class: int = 3, size: int = 64) -> Path:
    """A miniature BUSI: Dataset_BUSI_with_GT/{benign,malignant,normal}, masks as 1-bit PNGs;
    ``benign (1)`` has three mask files split from one lesion."""
    top = root / "Dataset_BUSI_with_GT"
    i = 0
    for name in ("benign", "malignant", "normal"):
        for k in range(1, n_per_class + 1):
            image, mask, _ = make_phantom(i, seed=7, size=size)
            i += 1
            stem = f"{name} ({k})"
            write_png(top / name / f"{stem}.png", np.stack([image] * 3, -1), "RGB")
            if name == "normal":
                write_png(
                    top / name / f"{stem}_mask.png", np.zeros((size, size, 3), np.uint8), "RGB"
                )
            elif name == "benign" and k == 1:
                thirds = np.array_split(np.arange(size), 3)
                for j, rows in enumerate(thirds):
                    part = np.zeros_like(mask)
                    part[rows] = mask[rows]
                    suffix = "_mask" if j == 0 else f"_mask_{j}"
                    write_png(top / name / f"{stem}{suffix}.png", part * 255, "1")
            else:
                write_png(top / name / f"{stem}_mask.png", mask * 255, "1")
    return root


@pytest.fixture
def png_writer():
    """``write_png(path, array, mode=None) -> path`` (PIL, any mode)."""
    return write_png


@pytest.fixture
def busi_tree(tmp_path: Path) -> Path:
    """A miniature BUSI folder (3 images per class, RGB PNGs, 1-bit masks)."""
    return make_busi_tree(tmp_path / "busi")
