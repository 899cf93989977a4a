"""Ultrasound-specific augmentations (albumentations transforms, uint8 grayscale in and out).

Scanners and sonographers differ between hospitals in ways a model must not learn as
malignancy cues: the time-gain compensation curve (brightness changing with depth), and the
caliper crosses, dotted measurement lines and text that sonographers leave on the image.
:class:`DepthGain` varies the first, :class:`CaliperMarks` paints the second at random places
(never as a function of the label), so neither can stand in for the lesion.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from albumentations.core.transforms_interface import ImageOnlyTransform


class DepthGain(ImageOnlyTransform):
    """Multiply each row by a smooth random gain curve over depth (image rows).

    The curve is linear interpolation between ``knots`` gains drawn uniformly from
    ``gain_range``, top to bottom: what a different time-gain compensation setting does.
    """

    def __init__(
        self, gain_range: tuple[float, float] = (0.7, 1.3), knots: int = 4, p: float = 0.5
    ) -> None:
        super().__init__(p=p)
        low, high = gain_range
        if not 0 < low <= high:
            raise ValueError(f"DepthGain: gain_range must be 0 < low <= high, got {gain_range}")
        if knots < 2:
            raise ValueError(f"DepthGain: knots must be >= 2, got {knots}")
        self.gain_range = (float(low), float(high))
        self.knots = int(knots)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict[str, Any]:
        gains = self.random_generator.uniform(*self.gain_range, size=self.knots)
        return {"gains": gains}

    def apply(self, img: np.ndarray, gains: np.ndarray, **params: Any) -> np.ndarray:
        h = img.shape[0]
        curve = np.interp(np.linspace(0, 1, h), np.linspace(0, 1, len(gains)), gains)
        shape = (h,) + (1,) * (img.ndim - 1)
        out = img.astype(np.float32) * curve.reshape(shape).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)


class CaliperMarks(ImageOnlyTransform):
    """Paint sonographer-style marks at random places: caliper crosses, a dotted
    measurement line between two of them, and short bars of 'text'.

    Args:
        max_marks: at most this many crosses (at least 2 when the transform fires).
        text_prob: probability of adding 1-3 text-like bars near the image border.
    """

    def __init__(self, max_marks: int = 4, text_prob: float = 0.5, p: float = 0.3) -> None:
        super().__init__(p=p)
        if max_marks < 2:
            raise ValueError(f"CaliperMarks: max_marks must be >= 2, got {max_marks}")
        if not 0 <= text_prob <= 1:
            raise ValueError(f"CaliperMarks: text_prob must be in [0, 1], got {text_prob}")
        self.max_marks = int(max_marks)
        self.text_prob = float(text_prob)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict[str, Any]:
        rng = self.random_generator
        h, w = params["shape"][:2]
        n = int(rng.integers(2, self.max_marks + 1))
        points = np.stack([rng.uniform(0.1, 0.9, n) * w, rng.uniform(0.1, 0.9, n) * h], axis=1)
        bars = []
        if rng.random() < self.text_prob:
            for _ in range(int(rng.integers(1, 4))):
                bw, bh = rng.uniform(0.08, 0.25) * w, rng.uniform(0.02, 0.04) * h
                x = rng.uniform(0.0, 1.0) * (w - bw)
                y = rng.choice([rng.uniform(0.0, 0.12), rng.uniform(0.85, 0.96)]) * h
                bars.append((x, y, bw, bh))
        return {
            "points": points,
            "bars": bars,
            "value": int(rng.integers(180, 256)),
            "size": max(2, int(round(rng.uniform(0.015, 0.03) * min(h, w)))),
        }

    def apply(
        self,
        img: np.ndarray,
        points: np.ndarray,
        bars: list,
        value: int,
        size: int,
        **params: Any,
    ) -> np.ndarray:
        out = np.ascontiguousarray(img.copy())
        color = (value,) * (out.shape[2] if out.ndim == 3 else 1)
        pts = [tuple(int(round(c)) for c in p) for p in points]
        for x, y in pts:
            cv2.line(out, (x - size, y), (x + size, y), color, 1)
            cv2.line(out, (x, y - size), (x, y + size), color, 1)
        (x0, y0), (x1, y1) = pts[0], pts[1]
        steps = max(int(np.hypot(x1 - x0, y1 - y0) // max(size, 3)), 1)
        for t in np.linspace(0, 1, steps + 1)[1:-1]:
            cv2.circle(out, (int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))), 0, color, -1)
        for x, y, bw, bh in bars:
            # Text is a row of short glyph-sized blocks with gaps, not a solid bar.
            glyph = max(int(bh * 0.7), 2)
            for gx in range(int(x), int(x + bw), glyph + max(glyph // 2, 1)):
                cv2.rectangle(out, (gx, int(y)), (gx + glyph, int(y + bh)), color, 1)
        return out
