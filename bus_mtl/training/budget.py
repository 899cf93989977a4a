"""Fit a run into a wall-clock budget: as many epochs as the machine affords, with the
learning-rate schedule planned for exactly those epochs; and repeat such a run without one.

A fixed ``max_epochs`` recipe measured on one machine overruns on a slower one and wastes
time on a faster one. :class:`TimeBudget` times every epoch of the run itself (training
steps, validation, checkpointing: everything an epoch costs) and, at every epoch end, plans
the epochs that fit into the rest of the budget from the *steady-state* epoch time: the
median of the latest few epochs after the first ones, which fill caches and run slower. It
sets ``max_epochs`` to that (never above the configured ``max_epochs``, which is a cap, never
below the epochs done) and re-plans the module's :class:`WarmupCosine`, upward or downward.
A re-plan keeps the cosine's progress at the current step, so the learning rate does not
jump down, and the decay still ends at 0 on the last step; a plan lengthened after early
epochs ran slow (caches, another job on the machine) gives back the rate the short plan had
decayed, up to a plain cosine over the new length (:meth:`WarmupCosine.replan`). A run whose
budget is spent mid-epoch stops there.

Because the re-planned curve is not a plain cosine over the final epoch count, repeating a
budgeted run means replaying its schedule: :class:`TimeBudget` records every re-plan as
``[step, total steps]`` (:meth:`TimeBudget.record`: in its checkpoint state and in
``<log_dir>/budget.json``), and :class:`SchedulePlan` applies the same re-plans at the same
steps with no clock. A :class:`TimeBudget` stands down when a :class:`SchedulePlan` is among
the trainer's callbacks, so the repeat is the original command plus two arguments
(:func:`reproduce_args`)::

    bus-mtl fit <the run's arguments> --trainer.max_epochs=N \\
        '--trainer.callbacks+={"class_path":"bus_mtl.training.SchedulePlan",...}'
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from bus_mtl.training.module import WarmupCosine

__all__ = ["SchedulePlan", "TimeBudget", "reproduce_args", "reproduce_command"]

#: What :meth:`TimeBudget.on_train_end` writes into the run's log folder.
BUDGET_RECORD = "budget.json"
#: The LightningCLI sub-commands a run's argument list may start with.
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _now() -> float:
    return time.monotonic()


def _warmup_cosine(trainer: pl.Trainer) -> WarmupCosine | None:
    """The trainer's :class:`WarmupCosine` (the module's default schedule), if it has one."""
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, WarmupCosine):
            return config.scheduler
    return None


class TimeBudget(Callback):
    """Train for as many epochs as fit into ``minutes`` of wall-clock time.

    The budget counts from the start of training (after data set-up, before the first
    step) to the end of the last epoch's validation; testing and calibration come after it.
    ``trainer.max_epochs`` stays the upper bound. The plan is made again at every epoch end
    (logged as ``budget/planned_epochs``, printed when it changes) and recorded
    (:meth:`record`). A resumed run keeps the record and the time already spent.

    Args:
        minutes: the training budget, > 0.
        warm_epochs: first epochs left out of the steady-state epoch time (caches,
            allocator, a first validation); no plan is made from them alone: while budget
            is left, training goes on to a steady epoch (the mid-epoch stop still holds).
        window: the steady-state time is the median of this many latest epochs (>= 1).
        safety: fraction of the remaining budget planned for (0 < safety <= 1), leaving
            room for epoch-to-epoch noise.
    """

    def __init__(
        self,
        minutes: float,
        warm_epochs: int = 1,
        window: int = 3,
        safety: float = 0.97,
    ) -> None:
        if isinstance(minutes, bool) or not (isinstance(minutes, (int, float)) and minutes > 0):
            raise ValueError(
                f"TimeBudget: minutes must be a number > 0, got {minutes!r}; e.g. minutes: 14"
            )
        if isinstance(warm_epochs, bool) or not (isinstance(warm_epochs, int) and warm_epochs >= 0):
            raise ValueError(f"TimeBudget: warm_epochs must be an int >= 0, got {warm_epochs!r}")
        if isinstance(window, bool) or not (isinstance(window, int) and window >= 1):
            raise ValueError(f"TimeBudget: window must be an int >= 1, got {window!r}")
        if not 0 < safety <= 1:
            raise ValueError(f"TimeBudget: safety must be in (0, 1], got {safety!r}")
        self.budget_s = 60.0 * float(minutes)
        self.warm_epochs = warm_epochs
        self.window = window
        self.safety = safety
        #: False when a :class:`SchedulePlan` replays a recorded schedule instead.
        self.active = True
        self.cap: int | None = None
        self.planned_epochs: int | None = None
        self.epochs_run = 0
        self.steps_run = 0
        self.steps_per_epoch: int | None = None
        #: Wall-clock seconds of every epoch, validation and checkpointing included.
        self.epoch_seconds: list[float] = []
        #: ``[step, total steps]`` of the schedule: the initial plan (step 0), then every
        #: re-plan, at the scheduler step from which it holds.
        self.events: list[list[int]] = []
        #: The global step at which the spent budget stopped the run mid-epoch, if it did.
        self.stop_step: int | None = None
        self._started = False
        self._start = 0.0
        self._last_end = 0.0
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the plan
    def steady_epoch_s(self) -> float:
        """Seconds an epoch takes from now on: the median of the latest ``window`` epochs
        after the first ``warm_epochs`` (the latest epoch's time while there is none)."""
        steady = self.epoch_seconds[self.warm_epochs :] or self.epoch_seconds[-1:]
        return float(statistics.median(steady[-self.window :]))

    def _elapsed(self) -> float:
        return _now() - self._start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.active = not any(isinstance(cb, SchedulePlan) for cb in trainer.callbacks)
        if not self.active:
            rank_zero_print(
                "TimeBudget: off: a SchedulePlan replays a recorded schedule (no clock; "
                "trainer.max_epochs sets the epochs)"
            )
            return
        now = _now()
        cap = trainer.fit_loop.max_epochs
        self.cap = cap if cap is not None and cap >= 0 else None
        self.steps_per_epoch = _steps_per_epoch(trainer)
        self.stop_step = None
        self._started = True
        restored, self._restored = self._restored, None
        if restored:
            # Resumed from a checkpoint: the time spent so far counts, the plan goes on (the
            # scheduler's own state holds its steps).
            self.epoch_seconds = [float(s) for s in restored.get("epoch_seconds", [])]
            self.events = [[int(s), int(t)] for s, t in restored.get("events", [])]
            self.epochs_run = int(restored.get("epochs_run", 0))
            self._start = now - float(restored.get("elapsed_s", 0.0))
            planned = restored.get("planned_epochs")
            self.planned_epochs = int(planned) if planned is not None else None
            if self.planned_epochs is not None:
                capped = min(self.planned_epochs, self.cap or self.planned_epochs)
                trainer.fit_loop.max_epochs = max(capped, trainer.current_epoch)
        else:
            self._start = now
            self.epoch_seconds, self.events = [], []
            self.planned_epochs, self.epochs_run = None, 0
            scheduler = _warmup_cosine(trainer)
            if scheduler is not None:
                self.events.append([int(scheduler.last_epoch), int(scheduler.total_steps)])
        self._last_end = now

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self.active and self.stop_step is None and self._elapsed() > self.budget_s:
            trainer.should_stop = True  # spent mid-epoch: the hard limit
            self.stop_step = int(trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        now = _now()
        self.epoch_seconds.append(now - self._last_end)
        self._last_end = now
        done = trainer.current_epoch + 1
        self.epochs_run, self.steps_run = done, int(trainer.global_step)
        if self.stop_step is not None:
            rank_zero_print(
                f"TimeBudget: the {self.budget_s / 60:g} min budget ran out in epoch {done} "
                f"(step {self.stop_step}): stopped"
            )
            return
        remaining = self.budget_s - (now - self._start)
        if len(self.epoch_seconds) <= self.warm_epochs and remaining > 0:
            # Only warm-up epochs timed: one that filled caches or met a busy machine can be
            # many times slower than the rest, and a plan made from it could end the run
            # here. The plan waits for a steady epoch; the mid-epoch stop keeps the budget.
            rank_zero_print(
                f"TimeBudget: epoch {done} took {self.epoch_seconds[-1]:.1f} s (warm-up: "
                f"the plan waits for a steady epoch; {remaining:.0f} s left)"
            )
            return
        epoch_s = self.steady_epoch_s()
        more = max(math.floor(self.safety * remaining / max(epoch_s, 1e-9)), 0)
        planned = done + more
        if self.cap is not None:
            planned = min(planned, self.cap)
        planned = max(planned, done)
        previous = self.planned_epochs
        if previous is not None and done >= previous:
            # The cosine has reached 0: more epochs would train at a learning rate of 0 (a
            # re-plan keeps the progress), so the run ends as planned.
            planned = done
        self._apply(trainer, planned)
        pl_module.log("budget/planned_epochs", float(planned), on_epoch=True)
        if planned == previous:
            return
        if planned == done and previous is not None and done < previous:
            rank_zero_print(
                f"TimeBudget: stopping after epoch {done} of {previous}: {remaining:.0f} s "
                f"left, an epoch takes {epoch_s:.1f} s"
            )
        else:
            rank_zero_print(
                f"TimeBudget: epoch {done} took {self.epoch_seconds[-1]:.1f} s (steady "
                f"{epoch_s:.1f} s); {planned} epochs planned in {self.budget_s / 60:g} min"
                + (f" (was {previous})" if previous is not None else "")
                + (f" (cap {self.cap})" if self.cap is not None else "")
            )

    def _apply(self, trainer: pl.Trainer, planned: int) -> None:
        self.planned_epochs = planned
        trainer.fit_loop.max_epochs = planned
        scheduler = _warmup_cosine(trainer)
        if scheduler is None or not self.steps_per_epoch:
            return
        total = planned * self.steps_per_epoch
        if total != scheduler.total_steps:
            scheduler.replan(total)
            self.events.append([int(scheduler.last_epoch), int(scheduler.total_steps)])

    # ------------------------------------------------------------------ the record
    def record(self) -> dict[str, Any]:
        """What the run did, as plain data: the budget, the epochs run and their seconds,
        the schedule's events (``[step, total steps]``), the hard stop's step (or None).
        :func:`reproduce_args` turns it into the command that repeats the run."""
        return {
            "minutes": self.budget_s / 60.0,
            "cap": self.cap,
            "warm_epochs": self.warm_epochs,
            "window": self.window,
            "safety": self.safety,
            "elapsed_s": round(self._elapsed(), 3) if self._started else 0.0,
            "epochs_run": self.epochs_run,
            "steps_run": self.steps_run,
            "steps_per_epoch": self.steps_per_epoch,
            "planned_epochs": self.planned_epochs,
            "epoch_seconds": [round(s, 3) for s in self.epoch_seconds],
            "events": [list(e) for e in self.events],
            "stop_step": self.stop_step,
        }

    def state_dict(self) -> dict[str, Any]:
        if not (self.active and self._started):
            return {}
        return self.record()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.steps_run = int(trainer.global_step)
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if log_dir is None or not trainer.is_global_zero:
            return
        path = Path(log_dir) / BUDGET_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        record = self.record()
        path.write_text(json.dumps(record, indent=1))
        rank_zero_print(
            f"TimeBudget: {record['epochs_run']} epoch(s) in {record['elapsed_s'] / 60:.1f} of "
            f"{record['minutes']:g} min; plan and epoch times in {path}"
        )


class SchedulePlan(Callback):
    """Replay a :class:`TimeBudget`'s recorded schedule, with no clock.

    Applies ``WarmupCosine.replan(total)`` when the scheduler reaches each recorded
    ``[step, total]`` (the same re-plans, so the same learning rate at
    every step), and stops at ``stop_step`` when the budget had stopped the run mid-epoch.
    The epochs are ``trainer.max_epochs``'s (:func:`reproduce_args` sets them). A
    :class:`TimeBudget` among the callbacks stands down.

    Args:
        events: ``[[step, total_steps], ...]`` in step order (``TimeBudget.record()["events"]``).
        stop_step: global step after which to stop (``record()["stop_step"]``), or None.
    """

    def __init__(self, events: list[list[int]], stop_step: int | None = None) -> None:
        checked: list[list[int]] = []
        for event in events:
            pair = list(event) if isinstance(event, (list, tuple)) else []
            if len(pair) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair
            ):
                raise ValueError(
                    f"SchedulePlan: events are [step, total_steps] pairs of ints >= 0, got "
                    f"{event!r}; copy them from the run's budget.json"
                )
            checked.append(pair)
        steps = [s for s, _ in checked]
        if steps != sorted(steps):
            raise ValueError(f"SchedulePlan: event steps must not decrease, got {steps}")
        if stop_step is not None and (
            isinstance(stop_step, bool) or not isinstance(stop_step, int) or stop_step < 1
        ):
            raise ValueError(
                f"SchedulePlan: stop_step must be an int >= 1 or None, got {stop_step!r}"
            )
        self.events = checked
        self.stop_step = stop_step
        self._next = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scheduler = _warmup_cosine(trainer)
        if scheduler is None:
            rank_zero_print(
                "SchedulePlan: the module has no WarmupCosine schedule: only the stop step "
                "is replayed"
            )
            self._next = len(self.events)
            return
        # Resumed: re-plans before the checkpoint's step are in the scheduler's state.
        step = int(scheduler.last_epoch)
        self._next = sum(s < step for s, _ in self.events)
        self._apply_due(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        # The rate of this step was set when the scheduler reached it; a re-plan anchored at
        # this step keeps it, so applying it here equals applying it at the epoch end.
        self._apply_due(trainer)

    def _apply_due(self, trainer: pl.Trainer) -> None:
        scheduler = _warmup_cosine(trainer)
        if scheduler is None:
            return
        while self._next < len(self.events) and self.events[self._next][0] <= scheduler.last_epoch:
            scheduler.replan(self.events[self._next][1])
            self._next += 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self.stop_step is not None and trainer.global_step >= self.stop_step:
            trainer.should_stop = True  # where the budget stopped the recorded run


def _steps_per_epoch(trainer: pl.Trainer) -> int | None:
    batches = trainer.num_training_batches
    if batches in (0, float("inf")):
        return None
    accumulate = max(int(trainer.accumulate_grad_batches), 1)
    return math.ceil(int(batches) / accumulate)


def _without_ckpt_path(args: Sequence[str]) -> list[str]:
    """``args`` less ``--ckpt_path X`` / ``--ckpt_path=X``: a repeat starts from scratch."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            out.append(arg)
    return out


def reproduce_args(args: Sequence[str], record: Mapping[str, Any]) -> list[str]:
    """The ``bus-mtl`` arguments that repeat a budgeted run with no clock: ``fit``, the
    run's LightningCLI arguments (a leading sub-command and ``--ckpt_path`` dropped), the
    epochs it ran (``--trainer.max_epochs``) and a :class:`SchedulePlan` of its recorded
    schedule (``--trainer.callbacks+``), which makes its :class:`TimeBudget` stand down.
    On the same machine the repeat trains the same weights.

    ``record``: :meth:`TimeBudget.record`, or the run's ``budget.json``.
    """
    rest = _without_ckpt_path(args)
    if rest and rest[0] in _SUBCOMMANDS:
        rest = rest[1:]
    epochs = int(record["epochs_run"])
    if epochs < 1:
        raise ValueError(f"reproduce_args: the record ran no epoch ({dict(record)!r})")
    plan = {
        "class_path": "bus_mtl.training.SchedulePlan",
        "init_args": {
            "events": [[int(s), int(t)] for s, t in record.get("events", [])],
            "stop_step": record.get("stop_step"),
        },
    }
    return [
        "fit",
        *rest,
        f"--trainer.max_epochs={epochs}",
        "--trainer.callbacks+=" + json.dumps(plan, separators=(",", ":")),
    ]


def reproduce_command(args: Sequence[str], record: Mapping[str, Any]) -> str:
    """:func:`reproduce_args` as one shell command line, ``bus-mtl fit ...``."""
    return shlex.join(["bus-mtl", *reproduce_args(args, record)])


@rank_zero_only
def rank_zero_print(message: str) -> None:
    print(message, flush=True)
