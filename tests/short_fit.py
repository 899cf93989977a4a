"""A Trainer for the few optimisation steps that make a test checkpoint: CPU, no logger,
no checkpointing, no progress output."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


def short_trainer(root: Path, max_steps: int = 2, callbacks: list | None = None) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=str(root),
        callbacks=callbacks or [],
    )
