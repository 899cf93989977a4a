"""An exponential moving average of the weights, validated, checkpointed and tested in place
of the raw weights.

Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` does the bookkeeping
(swap for validation, the average in a checkpoint's ``state_dict`` with the raw weights in
``current_model_state``, the average copied in at the end of fit); this module adds what a
short run needs and the ordering our callbacks rely on:

* **a warm-up of the decay** (as timm's ``ModelEmaV2``): step ``n`` uses
  ``min(decay, (1 + n) / (10 + n))``. Without it a decay of 0.999 keeps ~37 % of the
  random initialisation after 1,000 steps, about a whole CPU main job; with it the average
  spans roughly the last ~11 % of the steps taken so far (capped at ``1 / (1 - decay)``);
* **the average tested**: Lightning's ``on_load_checkpoint`` puts the raw weights back
  whenever a checkpoint is loaded while the callback holds an average, so
  ``trainer.test(ckpt_path="best")`` after ``fit`` tested the raw weights, with a threshold
  calibrated for none of them. Here the raw weights are restored only to resume a fit;
  validate, test and predict keep the checkpoint's ``state_dict`` (the average, calibrated);
* **the average in place before ``TemperatureCalibration`` runs**: the operating point fitted
  on the module's current weights at the end of fit must be the average's, which the module
  keeps afterwards. Lightning calls ``on_train_end`` in the order of ``trainer.callbacks``,
  and a recipe's ``callbacks+`` come after the base list, so :meth:`setup` moves this
  callback ahead of any calibration callback.

BatchNorm running statistics are buffers and are averaged with the same decay (timm does the
same); integer buffers (``num_batches_tracked``) take the current value.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(decay: float, n_averaged: int) -> float:
    """The decay applied at the ``n_averaged``-th update: ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


class _WarmupEMA:
    """``avg_fn`` of :class:`torch.optim.swa_utils.AveragedModel` with the decay warm-up
    (a class, not a closure, so the callback pickles)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, averaged: Tensor, current: Tensor, n_averaged: Tensor) -> Tensor:
        if not (averaged.is_floating_point() or averaged.is_complex()):
            return current
        d = ema_decay_at(self.decay, int(n_averaged))
        return averaged + (current - averaged) * (1.0 - d)


class EMA(WeightAveraging):
    """Keep an exponential moving average of the module's weights (and buffers); validate,
    checkpoint and test the average.

    Every checkpoint's ``state_dict`` holds the average (so ``val/score``, the best
    checkpoint, calibration, test, ``predict`` and ``export`` all see it); the raw weights
    are kept under ``current_model_state`` for resuming.

    Args:
        decay: the long-run decay per optimizer step, in (0, 1). The average spans about
            ``1 / (1 - decay)`` steps once warmed up (0.999: ~1,000 steps), and about the
            last ~11 % of the steps before that.
        start_step: first optimizer step (0-based) that updates the average; before it the
            average is the current weights.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        if not (isinstance(decay, float | int) and 0.0 < decay < 1.0):
            raise ValueError(f"EMA: decay must be in (0, 1), got {decay!r}; e.g. decay: 0.999")
        if not (isinstance(start_step, int) and start_step >= 0):
            raise ValueError(f"EMA: start_step must be an int >= 0, got {start_step!r}")
        super().__init__(use_buffers=True, avg_fn=_WarmupEMA(float(decay)))
        self.decay = float(decay)
        self.start_step = start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from bus_mtl.training.calibration import TemperatureCalibration

        callbacks = trainer.callbacks
        if self in callbacks:
            first = min(
                (i for i, cb in enumerate(callbacks) if isinstance(cb, TemperatureCalibration)),
                default=None,
            )
            if first is not None and callbacks.index(self) > first:
                callbacks.remove(self)
                callbacks.insert(first, self)
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # AveragedModel deep-copies the module at setup, before Lightning moves it to the
        # device and before the module converts itself to channels-last; keep the copy's
        # layout equal to the module's so the swaps copy like for like.
        if self._average_model is not None:
            self._average_model.to(pl_module.device)
            for avg, cur in zip(
                self._average_model.module.parameters(), pl_module.parameters(), strict=True
            ):
                if avg.dim() == 4 and cur.is_contiguous(memory_format=torch.channels_last):
                    avg.data = avg.data.contiguous(memory_format=torch.channels_last)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: raw weights and the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
