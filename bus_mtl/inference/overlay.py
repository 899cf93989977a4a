"""Overlay of a prediction on its image: the predicted lesion contour and the probability."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# RGB colours by predicted class; malignant in red so it stands out when skimming.
_MALIGNANT = (230, 40, 40)
_BENIGN = (40, 200, 60)
_UNKNOWN = (255, 210, 0)


def make_overlay(
    gray: np.ndarray,
    mask: np.ndarray | None,
    probability: float | None = None,
    class_name: str | None = None,
) -> np.ndarray:
    """Draw the contour of ``mask`` and ``"p(malignant)=0.83 malignant"`` on ``gray``.

    Args:
        gray: H×W uint8 image.
        mask: H×W {0, 1} mask at the same size, or ``None`` (classification-only model).
        probability: malignancy probability, or ``None`` (segmentation-only model).
        class_name: predicted class name written after the probability.

    Returns:
        H×W×3 uint8 RGB image.
    """
    rgb = cv2.cvtColor(np.ascontiguousarray(gray, dtype=np.uint8), cv2.COLOR_GRAY2RGB)
    h, w = gray.shape
    scale = max(h, w) / 512.0
    thickness = max(1, round(2 * scale))
    colour = {"malignant": _MALIGNANT, None: _UNKNOWN}.get(class_name, _BENIGN)
    if mask is not None:
        if mask.shape != gray.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {gray.shape}")
        contours, _ = cv2.findContours(
            (mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(rgb, contours, -1, colour, thickness)
    parts = []
    if probability is not None:
        parts.append(f"p(malignant)={probability:.2f}")
    if class_name:
        parts.append(class_name)
    if mask is not None and not mask.any():
        parts.append("no lesion found")
    text = " ".join(parts)
    if text:
        font_scale = max(0.35, 0.7 * scale)
        font_thick = max(1, round(1.5 * scale))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thick)
        pad = max(2, round(4 * scale))
        # dark box behind the text keeps it legible on bright tissue
        cv2.rectangle(rgb, (0, 0), (min(w - 1, tw + 2 * pad), th + base + 2 * pad), (0, 0, 0), -1)
        cv2.putText(
            rgb,
            text,
            (pad, pad + th),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            colour,
            font_thick,
            cv2.LINE_AA,
        )
    return rgb


def write_rgb(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (OpenCV writes BGR)."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode image")
    buf.tofile(str(path))
