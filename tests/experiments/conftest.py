"""Tiny synthetic-data setup shared by the runner tests (real LightningCLI subprocesses)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "experiments" / "base.yaml"


def _require_training_stack() -> None:
    missing = [p for p in (BASE, ROOT / "bus_mtl" / "cli" / "lightning.py") if not p.exists()]
    if missing:
        pytest.skip(f"training CLI not in this tree yet: {[str(p) for p in missing]}")


@pytest.fixture(scope="session")
def tiny_data_config(tmp_path_factory) -> Path:
    """A data config: 20 synthetic 64² images (written once), no augmentation."""
    _require_training_stack()
    tmp = tmp_path_factory.mktemp("tiny_data")
    cfg = {
        "data": {
            "sources": [
                {
                    "class_path": "bus_mtl.data.SyntheticSource",
                    "init_args": {"n": 20, "image_size": 64, "seed": 0, "root": str(tmp / "img")},
                }
            ],
            "image_size": 64,
            "batch_size": 4,
            "num_workers": 0,
            "augmentation": "none",
            "dup_threshold": -1,
            "cache_dir": str(tmp / "cache"),
        }
    }
    path = tmp / "tiny_data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# One short epoch on CPU, nothing sent anywhere.
TINY_TRAINER = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.max_epochs=1",
    "--trainer.precision=32-true",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(ROOT)  # configs in the sweep files are relative to the project root
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
