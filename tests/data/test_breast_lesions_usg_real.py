"""On the real BrEaST-Lesions_USG folder, the external test set (skipped when absent):
``experiments/data/breast_lesions_usg.yaml`` loads its manifest through ``ManifestSource``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bus_mtl import configs
from bus_mtl.data.io import read_image, read_mask, read_masks

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def external_root() -> Path:
    from bus_mtl.data.paths import find_external_root

    root = find_external_root(PROJECT)
    if root is None or not (root / "manifest.csv").is_file():
        pytest.skip(
            "BrEaST-Lesions_USG not found: set $BUS_MTL_EXTERNAL or place it at "
            "../shared/data/breast_lesions_usg (with its manifest.csv)"
        )
    return root


@pytest.fixture(scope="module")
def samples(external_root: Path) -> list:
    from bus_mtl.cli.evaluate import load_samples

    preset = str(configs.preset("data/breast_lesions_usg.yaml"))
    # The preset's path is relative to where bus-mtl runs; point it at the folder found.
    csv = f"--data.sources.init_args.csv={external_root / 'manifest.csv'}"
    loaded, _ = load_samples(configs=[preset], extra=[csv])
    return loaded


def test_preset_loads_252_cases_98_malignant(samples) -> None:
    labels = [s.label for s in samples]
    assert len(samples) == 252 and labels.count(1) == 98 and labels.count(0) == 154
    assert {s.centre for s in samples} == {"breast_lesions_usg"}
    groups = [s.group for s in samples]
    assert None not in groups and len(set(groups)) == 252  # one case per patient


def test_rgba_images_and_ored_masks(samples) -> None:
    multi = [s for s in samples if len(s.masks) > 1]
    assert len(multi) == 7 and all(s.label == 0 for s in multi)
    for s in multi[:3]:
        gray = read_image(s.image)
        mask = read_masks(s.masks, gray.shape)
        files = [read_mask(p) for p in s.masks]
        assert mask.sum() == np.logical_or.reduce(files).sum()
        assert all(0 < f.sum() < mask.sum() for f in files)  # each file adds pixels
