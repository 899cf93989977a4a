"""``bus-mtl main``'s report of a budgeted run: the command that repeats it without a clock."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import yaml

from bus_mtl.cli import main_job
from bus_mtl.cli.lightning import build_cli
from bus_mtl.cli.main import main
from bus_mtl.training import SchedulePlan, TimeBudget

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"
BUDGET = '{"class_path":"bus_mtl.training.TimeBudget","init_args":{"minutes":14}}'


def _finished_budget() -> TimeBudget:
    """A TimeBudget as a run leaves it (12 epochs, three schedule events)."""
    budget = TimeBudget(minutes=14)
    budget.epochs_run, budget.events, budget.epoch_seconds = 12, [[0, 120], [10, 40]], [1.0]
    return budget


def test_report_names_the_command_that_repeats_the_run(tmp_path, synthetic_root, capsys):
    # The run's resolved config.yaml, saved as LightningCLI saves it beside the logs.
    args = [
        "--config",
        str(QUICKSTART),
        f"--data.sources.init_args.root={synthetic_root}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.callbacks+={BUDGET}",
        "--trainer.logger=false",
    ]
    cli = build_cli(args, run=False)
    cli.parser.save(cli.config, str(tmp_path / "config.yaml"), skip_none=False)
    budget = _finished_budget()
    fake = SimpleNamespace(trainer=SimpleNamespace(callbacks=[budget], log_dir=str(tmp_path)))
    lines = main_job._repeat_lines(fake)
    assert lines[0].startswith("time budget     : 12 epoch(s) in ")
    assert str(tmp_path / "budget.json") in lines[0]
    prefix = "repeat this run: "
    assert lines[1].startswith(prefix + f"bus-mtl fit --config {tmp_path / 'config.yaml'} ")
    command = shlex.split(lines[1][len(prefix) :])
    assert command[:2] == ["bus-mtl", "fit"]
    # The command parses: the saved config, 12 epochs, the budget and the replay of its plan.
    assert main([*command[1:], "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_epochs"] == 12
    plans = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("SchedulePlan")]
    assert plans[0]["init_args"]["events"] == budget.events
    assert any(c["class_path"].endswith("TimeBudget") for c in config["trainer"]["callbacks"])
    # With the run's own arguments instead of config.yaml (what main() could pass).
    (line,) = main_job._repeat_lines(fake, args)[1:]
    again = shlex.split(line[len(prefix) :])
    assert again[2:8] == args and again[8] == "--trainer.max_epochs=12"
    plan = json.loads(again[9].removeprefix("--trainer.callbacks+="))
    assert plan["init_args"] == {"events": budget.events, "stop_step": None}


def test_no_repeat_line_without_an_active_budget(tmp_path):
    idle = _finished_budget()
    idle.active = False  # a replay: the SchedulePlan ran it
    for callbacks in ([], [idle], [SchedulePlan(events=[])]):
        fake = SimpleNamespace(trainer=SimpleNamespace(callbacks=callbacks, log_dir=str(tmp_path)))
        assert main_job._repeat_lines(fake) == []
    # A budget but no config.yaml to repeat from: what it gave, no command.
    fake = SimpleNamespace(
        trainer=SimpleNamespace(callbacks=[_finished_budget()], log_dir=str(tmp_path))
    )
    (line,) = main_job._repeat_lines(fake)
    assert line.startswith("time budget")
