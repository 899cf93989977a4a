"""TimeBudget: epochs re-planned at every epoch end from the steady-state epoch time, the
schedule re-planned without a jump to end at 0; the recorded plan replayed with no clock."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

import bus_mtl.training.budget as budget_mod
from bus_mtl.data import BUSDataModule, SyntheticSource
from bus_mtl.training.budget import SchedulePlan, TimeBudget, reproduce_args, reproduce_command
from bus_mtl.training.module import MultiTaskModule, WarmupCosine
from tests.training.test_module import make_trainer, tiny_net

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


class FakeClock(Callback):
    """One second per training step, plus ``val_s`` per validation, plus ``extra(epoch)``
    at the start of each epoch: a deterministic clock."""

    def __init__(self, val_s: float = 0.0, extra=lambda epoch: 0.0) -> None:
        self.t = 0.0
        self.val_s = val_s
        self.extra = extra

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t += self.extra(trainer.current_epoch)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.t += 1.0

    def on_validation_end(self, *args, **kwargs) -> None:
        self.t += self.val_s


class LRTrace(Callback):
    """The learning rate each training step uses (read before the step)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _scheduler(trainer: pl.Trainer) -> WarmupCosine:
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(sched, WarmupCosine)
    return sched


def _dm(synthetic_root) -> BUSDataModule:
    """The synthetic set at 32 px: 18 training images in 3 steps of 6, 6 validation images
    (the clock is fake: only the number of steps matters, and small steps are fast)."""
    return BUSDataModule(
        SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root),
        image_size=32,
        batch_size=6,
        n_folds=4,
        val_fraction=0.25,
        augmentation="light",
    )


def _steps(synthetic_root) -> int:
    dm = _dm(synthetic_root)
    dm.setup("fit")
    return len(dm.train_dataloader())


# ---------------------------------------------------------------------------------- schedule
def _lrs(sched: WarmupCosine, replans: dict[int, int], n: int) -> list[float]:
    """Learning rates of steps 0..n-1, re-planning to ``replans[step]`` at those steps."""
    out = []
    for step in range(n):
        if step in replans:
            before = sched.get_last_lr()[0]
            sched.replan(replans[step])
            # Shortening keeps the rate; lengthening keeps it or gives back the plain
            # cosine's over the new length, whichever is higher.
            w, total = sched.warmup_steps, replans[step]
            plain = 0.5 * (1 + math.cos(math.pi * (step - w) / (total - w))) * sched.base_lrs[0]
            expected = max(before, plain) if total > step and step > w else before
            assert sched.factor(step) * sched.base_lrs[0] == pytest.approx(expected, abs=1e-12)
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def _cosine(total: int, warmup: int = 10) -> WarmupCosine:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return WarmupCosine(opt, total_steps=total, warmup_steps=warmup)


@pytest.mark.parametrize("replans", [{30: 80, 60: 70}, {30: 60, 50: 55}, {5: 50}])
def test_shortening_keeps_the_rate_continuous_and_ends_at_zero(replans):
    sched = _cosine(100)
    final = list(replans.values())[-1]
    lrs = _lrs(sched, replans, final)
    after = lrs[10:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))  # never up: no jump
    # No step drops by more than the steepest segment's cosine step (continuity).
    steepest = max(math.pi / 2 / (t - s) for s, t in replans.items()) + math.pi / 2 / 90
    assert max(a - b for a, b in zip(after, after[1:])) <= steepest
    assert sched.last_epoch == final and sched.get_last_lr()[0] == 0.0  # exactly 0 at the end
    assert lrs[-1] > 0.0


@pytest.mark.parametrize("replans", [{30: 200, 80: 120}, {30: 60, 50: 140}, {20: 30, 28: 200}])
def test_lengthening_never_exceeds_a_plain_cosine_and_ends_at_zero(replans):
    sched = _cosine(100)
    final = list(replans.values())[-1]
    lrs = _lrs(sched, replans, final)
    # Between re-plans the rate only decays; it never exceeds the plain cosine over the
    # longest plan so far.
    marks = sorted(replans)
    for step in range(10, final):
        longest = max([100] + [t for s, t in replans.items() if s <= step])
        plain = 0.5 * (1 + math.cos(math.pi * (step - 10) / (longest - 10)))
        assert lrs[step] <= plain + 1e-12
        if step + 1 < final and step not in marks:
            assert lrs[step + 1] <= lrs[step] + 1e-12
    assert sched.get_last_lr()[0] == 0.0


def test_a_plan_made_too_short_gets_its_rate_back():
    """Early epochs slowed by another job plan a short run; once epochs are fast again the
    longer plan does not keep training at the short plan's decayed rate."""
    sched = _cosine(100)
    lrs = _lrs(sched, {20: 30}, 28)
    assert lrs[-1] < 0.2  # the short plan had nearly finished its decay
    sched.replan(200)
    plain = 0.5 * (1 + math.cos(math.pi * (28 - 10) / (200 - 10)))
    assert sched.factor(28) == pytest.approx(plain)
    assert plain > 0.9


def test_a_naive_replan_would_jump():
    """What the continuity bound above guards against: the same re-plan without keeping the
    progress moves the rate by far more than a cosine step."""
    sched = _cosine(100)
    _lrs(sched, {}, 50)
    before = sched.factor(50)
    naive = 0.5 * (1 + math.cos(math.pi * (50 - 10) / (200 - 10)))
    assert naive - before > 10 * math.pi / 2 / 90


def test_scheduler_state_holds_the_plan():
    sched = _cosine(100)
    _lrs(sched, {40: 150}, 60)
    state = sched.state_dict()
    assert {"total_steps", "anchor_step", "anchor_progress"} <= set(state)
    again = _cosine(100)
    again.load_state_dict(state)
    assert [again.factor(s) for s in range(60, 150)] == [sched.factor(s) for s in range(60, 150)]
    # A state saved before re-plans kept progress: one plain cosine, as it was.
    old = {k: v for k, v in state.items() if not k.startswith("anchor_")}
    legacy = _cosine(100)
    legacy.load_state_dict(old)
    assert legacy.factor(80) == pytest.approx(0.5 * (1 + math.cos(math.pi * 70 / 140)))


# ---------------------------------------------------------------------------------- budget
@pytest.mark.parametrize("cap, expected", [(50, 5), (3, 3)])
def test_budget_plans_epochs_and_ends_the_cosine(
    tmp_path, synthetic_root, monkeypatch, cap, expected
):
    clock = FakeClock(val_s=1.0)
    monkeypatch.setattr(budget_mod, "_now", lambda: clock.t)
    steps = _steps(synthetic_root)
    epoch_s = steps + 1.0
    # Five epochs fit; the sixth would not (safety 1: exact arithmetic).
    budget = TimeBudget(minutes=(5.5 * epoch_s) / 60, safety=1.0)
    # The clock must tick before the budget reads it: FakeClock first.
    trainer = make_trainer(tmp_path, max_epochs=cap, callbacks=[clock, budget])
    module = MultiTaskModule(tiny_net(), warmup_epochs=1)
    trainer.fit(module, datamodule=_dm(synthetic_root))
    assert budget.planned_epochs == expected
    assert trainer.current_epoch == expected
    sched = _scheduler(trainer)
    assert sched.total_steps == expected * steps
    # The cosine reached its end on the last step: the learning rate is 0.
    assert sched.get_last_lr()[0] < 1e-3 * sched.base_lrs[0]


def test_budget_replans_down_when_epochs_turn_slower(tmp_path, synthetic_root, monkeypatch):
    """Epochs from the third on take 4x as long: the plan of 10 made on the fast ones is
    cut at once, not kept until the next epoch would overrun and then stopped mid-cosine."""
    clock = FakeClock(extra=lambda epoch: 0.0)
    monkeypatch.setattr(budget_mod, "_now", lambda: clock.t)
    steps = _steps(synthetic_root)
    clock.extra = lambda epoch: 3.0 * steps if epoch >= 2 else 0.0
    budget = TimeBudget(minutes=(10 * steps) / 60, safety=1.0)
    trainer = make_trainer(tmp_path, max_epochs=50, callbacks=[clock, budget])
    trainer.fit(MultiTaskModule(tiny_net()), datamodule=_dm(synthetic_root))
    # 1 + 1 step-worths plan 10 epochs; after the first slow one (median of 1 and 4: 2.5)
    # 5 step-worths are left: 2 more epochs planned (4); the second slow one spends them.
    assert [t for _, t in budget.events[1:]] == [10 * steps, 4 * steps]
    assert budget.planned_epochs == 4 and trainer.current_epoch == 4
    assert clock.t <= 10 * steps  # within the budget
    assert _scheduler(trainer).get_last_lr()[0] == 0.0  # the cosine ended with the run


def test_a_slow_warm_up_epoch_does_not_end_the_run(tmp_path, synthetic_root, monkeypatch):
    """The first epoch meets a busy machine and spends 60 % of the budget (34 times a steady
    epoch): a plan made from it alone would stop there; the run goes on, plans from the
    steady epochs, and still ends within the budget with the cosine at 0."""
    steps = _steps(synthetic_root)
    clock = FakeClock(extra=lambda epoch: 33.0 * steps if epoch == 0 else 0.0)
    monkeypatch.setattr(budget_mod, "_now", lambda: clock.t)
    budget = TimeBudget(minutes=(57 * steps) / 60, safety=1.0)
    trainer = make_trainer(tmp_path, max_epochs=50, callbacks=[clock, budget])
    trainer.fit(MultiTaskModule(tiny_net()), datamodule=_dm(synthetic_root))
    # 34 step-worths spent in epoch 1, 23 left: 23 more epochs of one step-worth each.
    assert budget.epoch_seconds[:2] == [34.0 * steps, 1.0 * steps]
    assert budget.stop_step is None
    assert budget.planned_epochs == trainer.current_epoch == 24
    assert clock.t <= budget.budget_s
    assert _scheduler(trainer).get_last_lr()[0] == 0.0


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, synthetic_root):
    """A budgeted run on a machine whose first two epochs are slow (caches): 3 steps + 4 s
    + 1 s of validation each, then 4 s per epoch. A plan fixed after epoch 2 would have
    planned 4 epochs and used 74 % of the budget: the plan is re-made every epoch."""
    root = tmp_path_factory.mktemp("budget_fast")
    steps = _steps(synthetic_root)
    assert steps == 3
    clock = FakeClock(val_s=1.0, extra=lambda epoch: 4.0 if epoch < 2 else 0.0)
    budget = TimeBudget(minutes=32.5 / 60)
    trace = LRTrace()
    last = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget_mod, "_now", lambda: clock.t)
        pl.seed_everything(7)
        module = MultiTaskModule(tiny_net(), warmup_epochs=1)
        trainer = make_trainer(root, max_epochs=50, callbacks=[clock, budget, trace, last])
        trainer.fit(module, datamodule=_dm(synthetic_root))
    return {
        "root": root,
        "clock": clock,
        "budget": budget,
        "trace": trace,
        "trainer": trainer,
        "module": module,
        "last": last.last_model_path,
    }


def test_fast_machine_replans_upward_and_uses_the_budget(fast_run):
    budget, trainer, clock = fast_run["budget"], fast_run["trainer"], fast_run["clock"]
    totals = [t for _, t in budget.events[1:]]
    # No plan from the warm-up epoch; planned from epoch 2's 8 s: 4 epochs; from the steady
    # 4 s: 6.
    assert totals[0] == 4 * 3 and totals[-1] == 6 * 3 and totals == sorted(totals)
    assert budget.epochs_run == trainer.current_epoch == 6
    assert budget.epoch_seconds[:3] == [8.0, 8.0, 4.0]
    assert 0.9 * budget.budget_s <= clock.t <= budget.budget_s
    lrs = fast_run["trace"].lrs
    assert len(lrs) == 6 * 3
    base = _scheduler(trainer).base_lrs[0]
    # After warm-up: during epoch 2 the configured 50-epoch cosine holds (no plan from the
    # warm-up epoch alone), so the rate is still near its peak when the first plan (4
    # epochs) is made; from there it falls by at most a cosine step of that plan (6 cosine
    # steps left) and never rises above the peak.
    cosine = lrs[3:]
    assert min(cosine[:3]) > 0.99 * base
    assert max(a - b for a, b in zip(cosine, cosine[1:])) <= base * math.pi / 2 / 6
    assert max(cosine) <= base
    assert _scheduler(trainer).get_last_lr()[0] == 0.0  # the cosine ends on the last step


def test_the_plan_is_recorded_in_the_run_folder_and_the_checkpoint(fast_run):
    budget = fast_run["budget"]
    record = json.loads((fast_run["root"] / "csv" / "version_0" / "budget.json").read_text())
    assert record == budget.record() | {"elapsed_s": record["elapsed_s"]}
    assert record["epochs_run"] == 6 and record["steps_run"] == 18 and record["stop_step"] is None
    assert record["events"][0] == [0, 50 * 3]  # the plan before any epoch: the cap's
    assert record["events"] == budget.events and len(record["epoch_seconds"]) == 6
    ckpt = torch.load(fast_run["last"], weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("TimeBudget")]
    # Saved at the last epoch's end, after the budget timed it (checkpoint callbacks run last).
    assert state["events"] == budget.events and len(state["epoch_seconds"]) == 6
    sched_state = ckpt["lr_schedulers"][0]
    assert sched_state["total_steps"] == 18 and "anchor_progress" in sched_state


def test_resume_keeps_the_plan(fast_run, tmp_path, synthetic_root):
    """Resumed from the last checkpoint (epoch 6 of 6 planned), the plan stands: nothing
    more is trained, and the record goes on from the checkpoint's."""
    clock = FakeClock()
    budget = TimeBudget(minutes=32.5 / 60)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget_mod, "_now", lambda: clock.t)
        trainer = make_trainer(tmp_path, max_epochs=50, callbacks=[clock, budget])
        module = MultiTaskModule(tiny_net(), warmup_epochs=1)
        trainer.fit(
            module,
            datamodule=_dm(synthetic_root),
            ckpt_path=fast_run["last"],
        )
    assert trainer.current_epoch == 6 and trainer.global_step == 18
    assert budget.planned_epochs == 6 and budget.events == fast_run["budget"].events
    assert _scheduler(trainer).total_steps == 18


def test_recorded_plan_replays_to_the_same_weights_without_a_clock(
    fast_run, tmp_path, synthetic_root, monkeypatch
):
    record = fast_run["budget"].record()
    monkeypatch.setattr(budget_mod, "_now", lambda: pytest.fail("the replay read the clock"))
    pl.seed_everything(7)
    module = MultiTaskModule(tiny_net(), warmup_epochs=1)
    plan = SchedulePlan(events=record["events"], stop_step=record["stop_step"])
    # A TimeBudget among the callbacks (as in a recipe) stands down for the SchedulePlan.
    idle = TimeBudget(minutes=0.01)
    trace = LRTrace()
    trainer = make_trainer(tmp_path, max_epochs=record["epochs_run"], callbacks=[idle, plan, trace])
    trainer.fit(module, datamodule=_dm(synthetic_root))
    assert not idle.active and trainer.current_epoch == 6
    assert trace.lrs == fast_run["trace"].lrs
    original = fast_run["module"].state_dict()
    replayed = module.state_dict()
    assert original.keys() == replayed.keys()
    for key, value in original.items():
        assert torch.equal(value, replayed[key]), key


def test_hard_stop_is_recorded_and_replayed(tmp_path, synthetic_root, monkeypatch):
    """A budget spent mid-epoch stops there; the record names the step, the replay stops
    at it too."""
    clock = FakeClock(extra=lambda epoch: 0.0)
    monkeypatch.setattr(budget_mod, "_now", lambda: clock.t)
    clock.extra = lambda epoch: 10.0 if epoch == 1 else 0.0  # the 2nd epoch stalls
    budget = TimeBudget(minutes=6.5 / 60, safety=1.0)
    trainer = make_trainer(tmp_path, max_epochs=50, callbacks=[clock, budget])
    trainer.fit(MultiTaskModule(tiny_net()), datamodule=_dm(synthetic_root))
    assert budget.stop_step == 3 + 1 and trainer.global_step == 4
    args = reproduce_args(["--config", "c.yaml"], budget.record())
    plan = json.loads(args[-1].split("=", 1)[1])
    assert plan["init_args"]["stop_step"] == 4 and args[-2] == "--trainer.max_epochs=2"
    replay = SchedulePlan(**plan["init_args"])
    trainer = make_trainer(tmp_path / "replay", max_epochs=2, callbacks=[replay])
    trainer.fit(MultiTaskModule(tiny_net()), datamodule=_dm(synthetic_root))
    assert trainer.global_step == 4


# ---------------------------------------------------------------------------------- the command
RECORD = {"epochs_run": 12, "events": [[0, 120], [10, 40], [20, 60]], "stop_step": None}


def test_reproduce_args_replace_the_budget_by_the_replay():
    args = ["fit", "--config", "a.yaml", "--ckpt_path", "last", "--trainer.max_epochs=40"]
    out = reproduce_args(args, RECORD)
    assert out[:4] == ["fit", "--config", "a.yaml", "--trainer.max_epochs=40"]
    assert out[4] == "--trainer.max_epochs=12"  # later wins
    assert out[5].startswith("--trainer.callbacks+=")
    plan = json.loads(out[5].split("=", 1)[1])
    assert plan == {
        "class_path": "bus_mtl.training.SchedulePlan",
        "init_args": {"events": RECORD["events"], "stop_step": None},
    }
    command = reproduce_command(["--config", "a b.yaml"], RECORD)
    assert command.startswith("bus-mtl fit --config 'a b.yaml' --trainer.max_epochs=12 ")
    with pytest.raises(ValueError, match="no epoch"):
        reproduce_args([], {"epochs_run": 0})


def test_the_repeat_command_parses_on_the_cli_with_the_budget_off(tmp_path, synthetic_root, capsys):
    """The command composes on a recipe that appends a TimeBudget (``callbacks+``): both
    callbacks are built, the budget stands down in training (tested above)."""
    import yaml

    from bus_mtl.cli.main import main

    budget = '{"class_path":"bus_mtl.training.TimeBudget","init_args":{"minutes":14}}'
    args = [
        "--config",
        str(QUICKSTART),
        f"--data.sources.init_args.root={synthetic_root}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.callbacks+={budget}",
    ]
    assert main([*reproduce_args(args, RECORD), "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_epochs"] == 12
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c for c in config["trainer"]["callbacks"]}
    assert {"ModelCheckpoint", "TimeBudget", "SchedulePlan"} <= set(callbacks)
    assert callbacks["SchedulePlan"]["init_args"]["events"] == RECORD["events"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"minutes": 0}, "minutes must be a number > 0"),
        ({"minutes": "ten"}, "minutes must be a number > 0"),
        ({"minutes": 1, "safety": 1.5}, "safety"),
        ({"minutes": 1, "warm_epochs": -1}, "warm_epochs"),
        ({"minutes": 1, "window": 0}, "window"),
    ],
)
def test_budget_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TimeBudget(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"events": [[0]]}, "pairs of ints"),
        ({"events": [[5, 10], [2, 10]]}, "must not decrease"),
        ({"events": [], "stop_step": 0}, "stop_step"),
    ],
)
def test_schedule_plan_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SchedulePlan(**kwargs)
