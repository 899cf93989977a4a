"""Fit a run into a wall-clock budget: as many epochs as the machine affords, with the
learning-rate schedule planned for exactly those epochs.

A fixed ``max_epochs`` recipe measured on one machine overruns on a slower one and wastes
time on a faster one. :class:`TimeBudget` times the first epochs of the run itself
(training steps, validation, checkpointing: everything an epoch costs), sets
``max_epochs`` to what fits into the rest of the budget (never above the configured
``max_epochs``, which becomes a cap), and re-plans the module's :class:`WarmupCosine` so the
cosine still decays to 0 on the last step. After the planning epochs the plan is fixed (a
schedule that keeps moving would jump its learning rate); from then on the callback only
stops a run early whose epochs turned out slower than planned, and stops any run whose
budget is spent mid-epoch.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from bus_mtl.training.module import WarmupCosine

__all__ = ["TimeBudget"]


def _now() -> float:
    return time.monotonic()


class TimeBudget(Callback):
    """Train for as many epochs as fit into ``minutes`` of wall-clock time.

    The budget counts from the start of training (after data set-up, before the first
    step) to the end of the last epoch's validation; testing and calibration come after it.
    ``trainer.max_epochs`` stays the upper bound. The epochs planned are logged as
    ``budget/planned_epochs`` and printed once the plan is fixed.

    Args:
        minutes: the training budget, > 0.
        plan_epochs: epochs timed before the plan is fixed (>= 1). The first epoch is
            often slower (caches, allocator); the plan uses the latest epoch's time.
        safety: fraction of the remaining budget planned for (0 < safety <= 1), leaving
            room for epoch-to-epoch noise.
    """

    def __init__(self, minutes: float, plan_epochs: int = 2, safety: float = 0.97) -> None:
        if not (isinstance(minutes, (int, float)) and minutes > 0):
            raise ValueError(
                f"TimeBudget: minutes must be a number > 0, got {minutes!r}; e.g. minutes: 14"
            )
        if not (isinstance(plan_epochs, int) and plan_epochs >= 1):
            raise ValueError(f"TimeBudget: plan_epochs must be an int >= 1, got {plan_epochs!r}")
        if not 0 < safety <= 1:
            raise ValueError(f"TimeBudget: safety must be in (0, 1], got {safety!r}")
        self.budget_s = 60.0 * float(minutes)
        self.plan_epochs = plan_epochs
        self.safety = safety
        self.planned_epochs: int | None = None
        self.cap: int | None = None
        self._start = 0.0
        self._epoch_ends: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = _now()
        self._epoch_ends = []
        cap = trainer.fit_loop.max_epochs
        self.cap = cap if cap is not None and cap >= 0 else None
        self.planned_epochs = None

    def _elapsed(self) -> float:
        return _now() - self._start

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self._elapsed() > self.budget_s:
            trainer.should_stop = True  # spent mid-epoch: the hard limit

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = _now()
        previous = self._epoch_ends[-1] if self._epoch_ends else self._start
        self._epoch_ends.append(now)
        epoch_s = now - previous
        done = trainer.current_epoch + 1
        remaining = self.budget_s - (now - self._start)
        if len(self._epoch_ends) <= self.plan_epochs:
            more = max(math.floor(self.safety * remaining / max(epoch_s, 1e-9)), 0)
            planned = done + more
            if self.cap is not None:
                planned = min(planned, self.cap)
            planned = max(planned, done)
            self._apply(trainer, planned)
            pl_module.log("budget/planned_epochs", float(planned), on_epoch=True)
            if len(self._epoch_ends) == self.plan_epochs or planned == done:
                rank_zero_print(
                    f"TimeBudget: epoch {done} took {epoch_s:.1f} s; {planned} epochs planned "
                    f"in {self.budget_s / 60:g} min"
                    + (f" (cap {self.cap})" if self.cap is not None else "")
                )
        elif done < (self.planned_epochs or done) and remaining < epoch_s:
            # Slower than planned: the next epoch would overrun the budget.
            trainer.should_stop = True
            rank_zero_print(
                f"TimeBudget: stopping after epoch {done} of {self.planned_epochs}: "
                f"{remaining:.0f} s left, an epoch takes {epoch_s:.0f} s"
            )

    def _apply(self, trainer: pl.Trainer, planned: int) -> None:
        self.planned_epochs = planned
        trainer.fit_loop.max_epochs = planned
        if trainer.num_training_batches in (0, float("inf")):
            return
        accumulate = max(int(trainer.accumulate_grad_batches), 1)
        steps_per_epoch = math.ceil(int(trainer.num_training_batches) / accumulate)
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, WarmupCosine):
                config.scheduler.replan(planned * steps_per_epoch)


@rank_zero_only
def rank_zero_print(message: str) -> None:
    print(message, flush=True)
