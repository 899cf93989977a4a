"""Callbacks of a bus_mtl run: NaN guard, per-image CSV, W&B config (the validation overlays
and the calibration have their own modules: ``visualization``, ``calibration``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from bus_mtl.training.metrics import PREDICTION_COLUMNS

__all__ = [
    "FiniteLossGuard",
    "LoggedSaveConfigCallback",
    "PerImagePredictions",
]

# Written when the test part carried original-size masks: then dice/iou/hd95/mask_area are at
# each image's original size and these hold the working-resolution values.
INPUT_RES_COLUMNS = ("dice_input", "iou_input", "hd95_input", "mask_area_input")


def _last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    for cb in trainer.checkpoint_callbacks:
        for path in (cb.last_model_path, cb.best_model_path):
            if path and Path(path).is_file():
                return path
    return None


class FiniteLossGuard(Callback):
    """Stops the run at the first NaN/Inf training loss, before the optimizer step.

    Raises ``FloatingPointError`` naming the global step, the epoch, the batch and each loss
    term, so the weights that produced the loss are never stepped on and never checkpointed:
    the last checkpoint on disk stays the last good one. Under DDP every rank stops together
    (one rank's NaN is enough).
    """

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        terms = dict(getattr(pl_module, "last_losses", {}) or {})
        terms.setdefault("loss", loss.detach())
        bad_terms = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        bad = trainer.strategy.reduce_boolean_decision(bool(bad_terms), all=False)
        if not bad:
            return
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        last = _last_good_checkpoint(trainer)
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written before it"
        culprit = ", ".join(bad_terms) if bad_terms else "on another rank"
        raise FloatingPointError(
            f"non-finite training loss ({culprit}) at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}): "
            f"{values}. The run stopped before the optimizer step; {where}. Lower the learning "
            f"rate, check the data, or use precision 32 / bf16-mixed instead of 16-mixed."
        )


def _to_list(value: Any) -> list[Any]:
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    return list(value)


class PerImagePredictions(Callback):
    """Writes ``test_step``'s per-image values as CSV at the end of ``test``.

    One row per image, columns ``id, centre, label, prob, dice, iou, hd95, mask_area``
    (see ARCHITECTURE.md), plus ``dice_input, iou_input, hd95_input, mask_area_input``
    when the segmentation values are at the original size (then these are the
    working-resolution ones). Under DDP the rows of all ranks are gathered and the padding
    duplicates of the distributed sampler dropped.

    Args:
        path: CSV file to write; ``None``: ``test_predictions.csv`` in the trainer's log dir.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._rows: list[dict[str, Any]] = []
        self.written: Path | None = None

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict):
            return
        names = [*PREDICTION_COLUMNS, *(c for c in INPUT_RES_COLUMNS if c in outputs)]
        columns = {c: _to_list(outputs[c]) for c in names}
        for i in range(len(columns["id"])):
            self._rows.append({c: columns[c][i] for c in names})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = self._rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not trainer.is_global_zero:
            return
        seen: set[str] = set()
        unique = []
        for row in rows:
            if row["id"] not in seen:
                seen.add(row["id"])
                unique.append(row)
        path = Path(
            self.path or Path(trainer.log_dir or trainer.default_root_dir) / "test_predictions.csv"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            extra = [c for c in INPUT_RES_COLUMNS if any(c in row for row in unique)]
            writer = csv.DictWriter(f, fieldnames=[*PREDICTION_COLUMNS, *extra])
            writer.writeheader()
            for row in unique:
                writer.writerow({k: _format(v) for k, v in row.items()})
        self.written = path


def _format(value: Any) -> Any:
    # 9 significant digits give back the exact float32 value: metrics recomputed from the
    # CSV (pooled cv metrics, ties of the AUC, ECE bins) equal the logged ones.
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.9g}"
    return value


class LoggedSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's config saving, plus the resolved config in every W&B run's config,
    and the data split (``split.json``: ids per fold, seed, threshold, duplicate groups)
    beside ``config.yaml`` so every run records the exact images it trained and tested on.

    Registered with ``overwrite=True`` by ``bus_mtl.cli.lightning`` so a second run in the
    same directory does not fail.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            # trainer.log_dir is a collective under DDP: every rank must ask for it, so this
            # cannot live in save_config (rank 0 only).
            log_dir = trainer.log_dir
            split = getattr(trainer.datamodule, "split", None)
            if split is not None and log_dir is not None and trainer.is_global_zero:
                split.save(Path(log_dir) / "split.json")
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = json.loads(self.parser.dump(self.config, format="json", skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(config, allow_val_change=True)
