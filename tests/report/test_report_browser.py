"""The report as a person sees it: headless Chromium opens the file from disk (no server,
no network) and takes a screenshot. Skipped where no Chromium is installed
(``apt-get install -y chromium`` on Debian)."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

BROWSER = next(
    (
        path
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (path := shutil.which(name))
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless browser (chromium, chromium-browser or google-chrome on PATH); "
    "install one to run this test: apt-get install -y chromium",
)
WIDTH, HEIGHT = 1280, 2400
HEADER_RGB = (0x1D, 0x2B, 0x45)  # the page header's background (render.STYLE)


def screenshot(page, out, profile) -> np.ndarray:
    """A WIDTH×HEIGHT screenshot of ``page`` (a file) by headless Chromium, as BGR."""
    args = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert out.is_file(), f"no screenshot; chromium said:\n{done.stderr[-2000:]}"
    return cv2.imread(str(out))


def test_report_opens_from_disk_and_draws(eval_report, tmp_path):
    image = screenshot(eval_report, tmp_path / "shot.png", tmp_path / "profile")
    assert image.shape == (HEIGHT, WIDTH, 3)
    header = image[2:60, 2:20].reshape(-1, 3).mean(axis=0)[::-1]  # left of the title; RGB
    assert np.abs(header - HEADER_RGB).max() < 8, "the styled header is drawn"
    # The figures decoded: coloured curves and bars, where a text-only page has next to none.
    saturated = cv2.cvtColor(image[400:], cv2.COLOR_BGR2HSV)[..., 1] > 100
    assert saturated.sum() > 5000
