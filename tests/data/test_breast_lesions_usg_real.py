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


def test_busi_breast_preset_has_two_centres_for_leave_one_centre_out(
    external_root: Path, monkeypatch
):
    """``experiments/data/busi_breast.yaml``: BUSI's 647 and the 252 cases, each sample with
    its centre, and the by_centre protocol tests on each centre once, trained on the other."""
    from collections import Counter

    from bus_mtl.cli.evaluate import load_samples
    from bus_mtl.data.splits import leave_one_centre_out

    shared = PROJECT.parent / "shared" / "data"
    if (
        not (shared / "busi").is_dir()
        or external_root.resolve() != (shared / "breast_lesions_usg").resolve()
    ):
        pytest.skip("the preset's paths: ../shared/data/busi and ../shared/data/breast_lesions_usg")
    monkeypatch.chdir(PROJECT)  # the preset's paths are relative to the project root
    loaded, _ = load_samples(configs=[str(configs.preset("data/busi_breast.yaml"))])
    counts = Counter((s.centre, s.label) for s in loaded)
    assert counts == {
        ("busi", 0): 437,
        ("busi", 1): 210,
        ("breast_lesions_usg", 0): 154,
        ("breast_lesions_usg", 1): 98,
    }
    centre_of = {s.id: s.centre for s in loaded}
    split = leave_one_centre_out(loaded, seed=42)
    assert split.test_centres == ["breast_lesions_usg", "busi"]
    for fold, centre in zip(split.folds, split.test_centres, strict=True):
        assert {centre_of[i] for i in fold["test"]} == {centre}
        assert {centre_of[i] for i in fold["train"] + fold["val"]} == {
            "busi",
            "breast_lesions_usg",
        } - {centre}
