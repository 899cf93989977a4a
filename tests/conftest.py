"""Shared fixtures: the real BUSI folder (skipped when absent), a small synthetic dataset,
and a per-session decode cache so tests never write into ``~/.cache``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

PROJECT = Path(__file__).resolve().parents[1]


def _busi_candidates() -> list[Path]:
    env = os.environ.get("BUS_MTL_DATA")
    if env:
        return [Path(env).expanduser()]
    return [(PROJECT / ".." / "shared" / "data" / "busi").resolve()]


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point ``$BUS_MTL_CACHE`` at a session tmp dir (unless the caller set one)."""
    if os.environ.get("BUS_MTL_CACHE"):
        return Path(os.environ["BUS_MTL_CACHE"])
    path = tmp_path_factory.mktemp("bus_mtl_cache")
    os.environ["BUS_MTL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The real BUSI folder (holding ``Dataset_BUSI_with_GT``); skips when absent."""
    for p in _busi_candidates():
        if (p / "Dataset_BUSI_with_GT").is_dir() or (p / "benign").is_dir():
            return p
    pytest.skip(
        "real BUSI data not found: set $BUS_MTL_DATA or place it at ../shared/data/busi "
        f"(looked at {', '.join(map(str, _busi_candidates()))})"
    )


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 32 phantom images (64×64, 16 benign / 16 malignant), their masks and
    ``manifest.csv`` (columns image, mask, label). Read it with
    ``ManifestSource(synthetic_root / "manifest.csv", centre="synthetic")`` or
    ``SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root)``."""
    from bus_mtl.data import SyntheticSource

    root = tmp_path_factory.mktemp("synthetic") / "phantom"
    SyntheticSource(n=32, image_size=64, seed=0, root=root).write()
    return root


@pytest.fixture
def synthetic_source(synthetic_root: Path):
    """``SyntheticSource`` over :func:`synthetic_root` (32 images, 64 px)."""
    from bus_mtl.data import SyntheticSource

    return SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root)
