"""TimeBudget: epochs planned from the run's own epoch times, schedule re-planned to end at 0."""

from __future__ import annotations

import pytest
from lightning.pytorch.callbacks import Callback

import bus_mtl.training.budget as budget_mod
from bus_mtl.training.budget import TimeBudget
from bus_mtl.training.module import MultiTaskModule, WarmupCosine
from tests.training.test_module import make_datamodule, make_trainer, tiny_net


class FakeClock(Callback):
    """One second per training step, plus ``val_s`` per validation: a deterministic clock."""

    def __init__(self, val_s: float = 0.0) -> None:
        self.t = 0.0
        self.val_s = val_s

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.t += 1.0

    def on_validation_end(self, *args, **kwargs) -> None:
        self.t += self.val_s


@pytest.mark.parametrize("cap, expected", [(50, 5), (3, 3)])
def test_budget_plans_epochs_and_ends_the_cosine(
    tmp_path, synthetic_root, monkeypatch, cap, expected
):
    clock = FakeClock(val_s=1.0)
    monkeypatch.setattr(budget_mod, "_now", lambda: clock.t)
    dm = make_datamodule(synthetic_root, batch_size=6)
    dm.setup("fit")
    steps = len(dm.train_dataloader())
    epoch_s = steps + 1.0
    # Five epochs fit; the sixth would not (safety 1: exact arithmetic).
    budget = TimeBudget(minutes=(5.5 * epoch_s) / 60, plan_epochs=2, safety=1.0)
    # The clock must tick before the budget reads it: FakeClock first.
    trainer = make_trainer(tmp_path, max_epochs=cap, callbacks=[clock, budget])
    module = MultiTaskModule(tiny_net(), warmup_epochs=1)
    trainer.fit(module, datamodule=dm)
    assert budget.planned_epochs == expected
    assert trainer.current_epoch == expected
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(sched, WarmupCosine) and sched.total_steps == expected * steps
    # The cosine reached its end on the last step: the learning rate is (close to) 0.
    assert sched.get_last_lr()[0] < 1e-3 * sched.base_lrs[0]


def test_budget_stops_a_run_that_turns_slower(tmp_path, synthetic_root, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget_mod, "_now", lambda: clock.t)
    dm = make_datamodule(synthetic_root, batch_size=6)
    dm.setup("fit")
    steps = len(dm.train_dataloader())

    class SlowDown(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch >= 2:
                clock.t += 3 * steps  # epochs from the third on take 4x as long

    budget = TimeBudget(minutes=(10 * steps) / 60, plan_epochs=2, safety=1.0)
    trainer = make_trainer(tmp_path, max_epochs=50, callbacks=[clock, SlowDown(), budget])
    trainer.fit(MultiTaskModule(tiny_net()), datamodule=dm)
    assert budget.planned_epochs == 10
    # Two fast epochs (1 step-worth each) plan 10; the slow ones take 4 step-worths: the
    # budget of 10 holds two of them exactly, and a fifth epoch would overrun it.
    assert trainer.current_epoch == 4
    assert clock.t <= 10 * steps


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"minutes": 0}, "minutes must be a number > 0"),
        ({"minutes": "ten"}, "minutes must be a number > 0"),
        ({"minutes": 1, "plan_epochs": 0}, "plan_epochs"),
        ({"minutes": 1, "safety": 1.5}, "safety"),
    ],
)
def test_budget_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TimeBudget(**kwargs)
