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


@pytest.fixture(scope="session")
def conflicting_busi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature BUSI (64 px phantoms: benign (1)-(8), malignant (1)-(8), normal (1)-(2))
    with near-duplicates saved as exact copies under other names:

    - ``malignant (9)`` = ``benign (2)`` (mask too): a benign/malignant conflict;
    - ``benign (9)`` = ``benign (3)``: a same-class group, not a conflict;
    - ``normal (3)`` = ``benign (5)`` (empty mask): a conflict only with ``normal="class"``
      (or ``"seg_only"``).
    """
    import numpy as np
    from PIL import Image

    from bus_mtl.data import make_phantom

    root = tmp_path_factory.mktemp("conflicts") / "busi"
    top = root / "Dataset_BUSI_with_GT"
    for name in ("benign", "malignant", "normal"):
        (top / name).mkdir(parents=True)

    def save(name: str, k: int, image: np.ndarray, mask: np.ndarray) -> None:
        Image.fromarray(image).save(top / name / f"{name} ({k}).png")
        Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(
            top / name / f"{name} ({k})_mask.png"
        )

    phantoms = [make_phantom(i, seed=11, size=64) for i in range(18)]
    for k in range(1, 9):
        save("benign", k, *phantoms[2 * k - 2][:2])
        save("malignant", k, *phantoms[2 * k - 1][:2])
    for k in (1, 2):
        save("normal", k, phantoms[15 + k][0], np.zeros((64, 64), np.uint8))
    save("malignant", 9, *phantoms[2][:2])  # benign (2)
    save("benign", 9, *phantoms[4][:2])  # benign (3)
    save("normal", 3, phantoms[8][0], np.zeros((64, 64), np.uint8))  # benign (5)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of tiny nets: on a shared 2-core machine a second
    OpenMP thread mostly spins. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: (H, W) of the images of :func:`nonsquare_root`, cycled: wide, tall, and milder ratios.
NONSQUARE_SHAPES = ((48, 96), (96, 48), (60, 80), (80, 60))


@pytest.fixture(scope="session")
def nonsquare_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 16 non-square phantom images (shapes cycling through
    :data:`NONSQUARE_SHAPES`, 8 benign / 8 malignant; a bright ellipse lesion on speckle),
    their 0/255 masks and ``manifest.csv`` (columns image, mask, label). Read it with
    ``ManifestSource(nonsquare_root / "manifest.csv", centre="nonsquare")``."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("nonsquare") / "phantom"
    root.mkdir()
    rng = np.random.default_rng(5)
    rows = ["image,mask,label"]
    for i in range(16):
        h, w = NONSQUARE_SHAPES[i % len(NONSQUARE_SHAPES)]
        image = (rng.random((h, w)) * 70).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        centre = (int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.65)))
        axes = (max(3, int(w * rng.uniform(0.12, 0.25))), max(3, int(h * rng.uniform(0.12, 0.25))))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
        image[mask > 0] = 180 + (rng.random(int(mask.sum())) * 60).astype(np.uint8)
        cv2.imwrite(str(root / f"img{i:02d}.png"), image)
        cv2.imwrite(str(root / f"img{i:02d}_mask.png"), mask * 255)
        rows.append(f"img{i:02d}.png,img{i:02d}_mask.png,{'malignant' if i % 2 else 'benign'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root
