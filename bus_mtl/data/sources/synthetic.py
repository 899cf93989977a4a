"""A seeded ultrasound phantom: speckle, layered tissue, a hypo-echoic lesion.

Benign lesions are smooth ovals, wider than tall, with posterior enhancement; malignant ones
are irregular and spiculated, tend to be taller than wide and cast a posterior acoustic
shadow. Image ``i`` of seed ``s`` is the same on every machine (``numpy`` PCG64 seeded with
``[s, i]``). :class:`SyntheticSource` writes the PNGs and a manifest once, then reads them
like any folder, so the synthetic set exercises the same code path as real data.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bus_mtl.data.errors import Problem
from bus_mtl.data.paths import default_cache_dir
from bus_mtl.data.sample import Sample
from bus_mtl.data.sources.base import Source
from bus_mtl.data.sources.manifest import ManifestSource

PHANTOM_VERSION = 1


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    return field / (field.std() + 1e-6)


def _lesion_radius(
    rng: np.random.Generator, malignant: bool, theta: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Boundary radius r(θ) (in units of the image size) for pixel angles ``theta``."""
    r0 = rng.uniform(0.08, 0.14)
    if malignant:
        rx, ry = r0 * rng.uniform(0.75, 1.0), r0 * rng.uniform(1.0, 1.3)
    else:
        rx, ry = r0 * rng.uniform(1.3, 1.7), r0 * rng.uniform(0.7, 0.9)
    ellipse = (rx * ry) / np.sqrt((ry * np.cos(theta)) ** 2 + (rx * np.sin(theta)) ** 2)
    wobble = np.zeros_like(theta)
    if malignant:
        for k in range(3, 9):
            wobble += rng.uniform(0.03, 0.09) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        for _ in range(int(rng.integers(6, 13))):  # spicules: thin radial spikes
            centre = rng.uniform(-np.pi, np.pi)
            d = np.angle(np.exp(1j * (theta - centre)))
            wobble += rng.uniform(0.3, 0.7) * np.exp(-0.5 * (d / 0.05) ** 2)
    else:
        wobble += 0.03 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    return ellipse * (1 + wobble), rx, ry


def make_phantom(index: int, seed: int = 0, size: int = 128) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(image, mask, label)``: size×size uint8 image, uint8 {0,1} mask, 0/1 label.

    Labels alternate with the index (even benign, odd malignant), so any contiguous range is
    balanced.
    """
    if size < 32:
        raise ValueError(f"size: phantom needs at least 32 px, got {size}")
    rng = np.random.default_rng([seed, index, PHANTOM_VERSION])
    malignant = index % 2 == 1
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    # Layered tissue: skin, subcutaneous fat, gland, muscle, with wavy boundaries.
    def boundary(y0: float) -> np.ndarray:
        return y0 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * xx + rng.uniform(0, 2 * np.pi))

    tissue = np.full((size, size), 0.9, np.float32)  # skin
    tissue[yy > boundary(0.05)] = 0.35  # fat
    tissue[yy > boundary(rng.uniform(0.2, 0.28))] = 0.7  # gland
    muscle = yy > boundary(rng.uniform(0.72, 0.8))
    tissue[muscle] = 0.5 * (1 + 0.3 * np.sin(2 * np.pi * 12 * yy[muscle]))
    tissue *= 1 + 0.2 * _smooth_noise(rng, size, size / 16)

    # Lesion.
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.38, 0.58)
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    radius, rx, ry = _lesion_radius(rng, malignant, theta)
    inside = np.hypot(dx, dy) <= radius
    mask = inside.astype(np.uint8)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5 if not malignant else 0.7)
    interior = 0.12 if not malignant else 0.2 * (1 + 0.25 * _smooth_noise(rng, size, 2))
    tissue = tissue * (1 - soft) + interior * soft

    # Posterior acoustic enhancement (benign) or shadowing (malignant) under the lesion.
    cols = cv2.GaussianBlur(mask.max(axis=0).astype(np.float32)[None, :], (0, 0), 2)[0]
    rows = mask.any(axis=1)
    bottom = (np.nonzero(rows)[0].max() + 1) / size if rows.any() else cy
    below = np.clip((yy - bottom) * 8, 0, 1)
    effect = 1.35 if not malignant else 0.3
    tissue *= 1 + (effect - 1) * below * cols[None, :]

    # Speckle: multiplicative Rayleigh noise, correlated laterally like a real beam.
    speckle = rng.rayleigh(1.0, (size, size)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=1.0, sigmaY=0.5)
    speckle /= speckle.mean()
    gain = 1 - 0.3 * yy  # depth attenuation left after time-gain compensation
    signal = np.clip(tissue, 0, None) * speckle * gain
    image = np.log1p(8 * signal) / np.log1p(8 * 2.0)  # log compression
    image = np.clip(image * 255, 0, 255).astype(np.uint8)
    return image, mask, int(malignant)


class SyntheticSource(Source):
    """``n`` phantom images (balanced benign/malignant) written once under ``root``.

    Args:
        n: number of images.
        image_size: side of the square images in pixels.
        seed: generator seed; the same ``(n, image_size, seed)`` gives the same files.
        root: folder to write into (default: ``<cache dir>/synthetic/n{n}_s{size}_seed{seed}``).
        centre: centre tag and id prefix.
    """

    def __init__(
        self,
        n: int = 64,
        image_size: int = 128,
        seed: int = 0,
        root: str | Path | None = None,
        centre: str = "synthetic",
    ) -> None:
        if n < 1:
            raise ValueError(f"n: need at least one image, got {n}")
        if image_size < 32:
            raise ValueError(f"image_size: need at least 32 px, got {image_size}")
        self.n = n
        self.image_size = image_size
        self.seed = seed
        self.centre = centre
        default = (
            default_cache_dir() / "synthetic" / f"v{PHANTOM_VERSION}_n{n}_s{image_size}_seed{seed}"
        )
        self.root = Path(root).expanduser() if root is not None else default

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    def _params(self) -> dict[str, int]:
        return {
            "n": self.n,
            "image_size": self.image_size,
            "seed": self.seed,
            "version": PHANTOM_VERSION,
        }

    def _is_written(self) -> bool:
        stamp = self.root / "phantom.json"
        try:
            return self.manifest.is_file() and json.loads(stamp.read_text()) == self._params()
        except (OSError, ValueError):
            return False

    def write(self) -> Path:
        """Write the PNGs and ``manifest.csv`` (once); return the manifest path."""
        if self._is_written():
            return self.manifest
        self.root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".phantom-", dir=self.root.parent))
        try:
            (tmp / "images").mkdir()
            (tmp / "masks").mkdir()
            rows = []
            for i in range(self.n):
                image, mask, label = make_phantom(i, self.seed, self.image_size)
                stem = f"phantom_{i:05d}"
                cv2.imwrite(str(tmp / "images" / f"{stem}.png"), image)
                cv2.imwrite(str(tmp / "masks" / f"{stem}_mask.png"), mask * 255)
                rows.append(
                    [f"images/{stem}.png", f"masks/{stem}_mask.png", ("benign", "malignant")[label]]
                )
            with open(tmp / "manifest.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["image", "mask", "label"])
                w.writerows(rows)
            (tmp / "phantom.json").write_text(json.dumps(self._params()))
            if self.root.exists() and not self._is_written():
                shutil.rmtree(self.root, ignore_errors=True)  # stale or half-written
            try:
                os.replace(tmp, self.root)
            except OSError:
                if not self._is_written():  # another process won the race only if it finished
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.manifest

    def scan(self) -> tuple[list[Sample], list[Problem]]:
        try:
            manifest = self.write()
        except OSError as err:
            return [], [Problem(str(self.root), f"cannot write the synthetic dataset: {err}")]
        return ManifestSource(manifest, centre=self.centre).scan()
