"""Fixtures: one real (tiny) training run on the synthetic set and its checkpoint, exported
once per session, shared by the inference tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.short_fit import short_trainer

IMAGE_SIZE = 64
TEMPERATURE = 2.5  # stored in the checkpoint; the tests check predictions use it
# The fitted malignancy operating point stored in the checkpoint (the mask keeps 0.5).
DECISION_THRESHOLD = 0.37


def _train_checkpoint(root: Path, synthetic_root: Path, variant: str, out: Path, **net_kwargs):
    import torch

    from bus_mtl.data import BUSDataModule, SyntheticSource
    from bus_mtl.models import create
    from bus_mtl.training import MultiTaskModule

    dm = BUSDataModule(
        SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root),
        n_folds=4,
        image_size=IMAGE_SIZE,
        batch_size=8,
        augmentation="none",
        cache_dir=str(root / "cache"),
        seed=0,
    )
    torch.manual_seed(0)
    module = MultiTaskModule(create(variant, **net_kwargs), log_images=0)
    trainer = short_trainer(root)
    trainer.fit(module, datamodule=dm)
    module.temperature.fill_(TEMPERATURE)
    module.decision_threshold.fill_(DECISION_THRESHOLD)
    trainer.save_checkpoint(out)
    return out


@pytest.fixture(scope="session")
def mtl_ckpt(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """Checkpoint of the paper's best variant (``seg_features_effnet``) after 2 steps."""
    root = tmp_path_factory.mktemp("mtl_run")
    return _train_checkpoint(root, synthetic_root, "seg_features_effnet", root / "mtl.ckpt")


@pytest.fixture(scope="session")
def seg_only_ckpt(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """Checkpoint of the segmentation-only ``segresnet`` variant."""
    root = tmp_path_factory.mktemp("seg_run")
    return _train_checkpoint(root, synthetic_root, "segresnet", root / "seg.ckpt")


@pytest.fixture(scope="session")
def mtl_onnx(tmp_path_factory: pytest.TempPathFactory, mtl_ckpt: Path) -> Path:
    """``mtl_ckpt`` exported to ONNX (with parity check)."""
    from bus_mtl.inference.export import export_checkpoint

    out = tmp_path_factory.mktemp("export") / "mtl.onnx"
    export_checkpoint(mtl_ckpt, "onnx", out)
    return out


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images of odd sizes and modes: 97×131 RGB, 97×131 grey (L), 70×45 RGBA, 50×60
    1-bit-like grey, each with a bright blob on a speckled background."""
    root = tmp_path_factory.mktemp("odd_images")
    rng = np.random.default_rng(1)
    out = {}

    def phantom(h: int, w: int) -> np.ndarray:
        img = (rng.random((h, w)) * 60).astype(np.uint8)
        cv2.ellipse(img, (w // 2, h // 2), (w // 5, h // 6), 15, 0, 360, 200, -1)
        return img

    g = phantom(97, 131)
    out["rgb"] = root / "scan_rgb.png"
    cv2.imwrite(str(out["rgb"]), cv2.merge([g, g, g]))
    out["gray"] = root / "scan_gray.png"
    cv2.imwrite(str(out["gray"]), phantom(97, 131))
    rgba = phantom(70, 45)
    out["rgba"] = root / "scan_rgba.png"
    cv2.imwrite(str(out["rgba"]), cv2.merge([rgba, rgba, rgba, np.full_like(rgba, 255)]))
    out["binary"] = root / "scan_binary.png"
    cv2.imwrite(str(out["binary"]), ((phantom(50, 60) > 100) * 255).astype(np.uint8))
    return out
