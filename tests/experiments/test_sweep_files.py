"""Sweep files: W&B schema validity, ${args} expansion, optuna mapping."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml

from bus_mtl.experiments.sweep import (
    TUNE_ARG,
    SweepError,
    build_command,
    format_args,
    grid_space,
    load_sweep,
    make_sampler,
    objective_from_record,
    suggest,
    validate_sweep,
)

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))


def test_there_are_sweep_files():
    assert len(SWEEP_FILES) >= 3


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_is_valid_wandb_sweep(path):
    raw = yaml.safe_load(path.read_text())
    # The W&B schema, checked independently of validate_sweep.
    assert raw["method"] in {"grid", "random", "bayes"}
    assert raw["metric"]["goal"] in {"maximize", "minimize"}
    assert raw["metric"]["name"].startswith("val/")
    for name, p in raw["parameters"].items():
        assert {"value", "values", "distribution", "min"} & set(p), name
        if "distribution" in p:
            assert p["min"] < p["max"]
    assert "${args}" in raw["command"] and "${args_no_hyphens}" not in raw["command"]
    # Trials validate on the tuning hold-out: set before the sampled values, never changed.
    cmd = raw["command"]
    assert TUNE_ARG in cmd and cmd.index(TUNE_ARG) < cmd.index("${args}")
    assert not any(k.startswith("data.tuning") or k == "data.seed" for k in raw["parameters"])
    assert raw["command"][raw["command"].index("fit") - 1] == "bus_mtl.cli.main"
    spec = load_sweep(path)
    # Every file the command or a parameter names exists (run from the project root).
    named = [a for a in raw["command"] if a.endswith(".yaml")]
    for p in raw["parameters"].values():
        named += [v for v in p.get("values", []) if isinstance(v, str) and v.endswith(".yaml")]
    for f in named:
        if f.startswith("experiments/variants/") and not (ROOT / "experiments/variants").is_dir():
            continue  # variant configs are written by another part of the project
        assert (ROOT / f).is_file(), f"{path.name}: {f} missing"
    assert spec.metric == raw["metric"]["name"]


def base_sweep(**over):
    data = {
        "method": "bayes",
        "metric": {"name": "val/dice", "goal": "maximize"},
        "parameters": {
            "model.optimizer.init_args.lr": {
                "distribution": "log_uniform_values",
                "min": 1e-4,
                "max": 1e-2,
            },
            "data.augmentation": {"values": ["none", "light"]},
            "model.weighting.init_args.cls": {"min": 0.5, "max": 2.0},
            "trainer.max_epochs": {"min": 1, "max": 3},
        },
        "command": [
            "${env}",
            "${interpreter}",
            "-m",
            "bus_mtl.cli.main",
            "fit",
            TUNE_ARG,
            "${args}",
        ],
    }
    data.update(over)
    return data


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "hyperband"}, "method"),
        ({"metric": {"goal": "maximize"}}, "metric.name"),
        ({"metric": {"name": "val/dice", "goal": "up"}}, "goal"),
        ({"command": ["python", "-m", "x", "${args_no_hyphens}"]}, "args_no_hyphens"),
        ({"command": ["python", "train.py"]}, "must contain"),
        ({"parameters": {"lr": {"distribution": "normal", "mu": 0, "sigma": 1}}}, "normal"),
        ({"parameters": {"lr": {"distribution": "uniform", "min": 2, "max": 1}}}, "below max"),
        ({"parameters": {"lr": {"foo": 1}}}, "parameters.lr"),
        ({"method": "grid"}, "grid"),
        # the tuning hold-out: always set, always tune, never sampled
        ({"command": ["python", "-m", "x", "fit", "${args}"]}, "add '--data.tuning=tune'"),
        ({"command": ["python", "fit", "--data.tuning=off", "${args}"]}, "data.tuning=off"),
        ({"command": ["python", "fit", TUNE_ARG, "${args}", "--data.tuning=exclude"]}, "exclude"),
        ({"parameters": {"data.tuning": {"values": ["off", "tune"]}}}, "parameters.data.tuning"),
        ({"parameters": {"data.seed": {"values": [1, 2]}}}, "parameters.data.seed"),
        ({"parameters": {"data.tuning_fraction": {"min": 0.1, "max": 0.2}}}, "tuning_fraction"),
    ],
)
def test_invalid_sweeps_name_the_key(change, message):
    with pytest.raises(SweepError, match=message):
        validate_sweep(base_sweep(**change), "bad.yaml")


def test_args_expand_like_the_wandb_agent():
    spec = validate_sweep(base_sweep())
    params = {"model.optimizer.init_args.lr": 0.001, "data.augmentation": "light"}
    assert format_args(params) == [
        "--model.optimizer.init_args.lr=0.001",
        "--data.augmentation=light",
    ]
    cmd = build_command(spec, params, ["--trainer.fast_dev_run=true"], interpreter="PY")
    assert cmd == [
        "PY",
        "-m",
        "bus_mtl.cli.main",
        "fit",
        TUNE_ARG,
        "--trainer.fast_dev_run=true",
        "--model.optimizer.init_args.lr=0.001",
        "--data.augmentation=light",
    ]


def test_optuna_mapping_respects_the_distributions():
    spec = validate_sweep(base_sweep())
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec, seed=1))
    seen = []
    for _ in range(20):
        trial = study.ask()
        p = {n: suggest(trial, n, s) for n, s in spec.parameters.items()}
        seen.append(p)
        study.tell(trial, 0.0)
    lrs = [p["model.optimizer.init_args.lr"] for p in seen]
    assert all(1e-4 <= v <= 1e-2 for v in lrs)
    # log-uniform: about half the samples fall below the geometric midpoint 1e-3
    assert 4 <= sum(v < 1e-3 for v in lrs) <= 16
    assert {p["data.augmentation"] for p in seen} <= {"none", "light"}
    assert all(isinstance(p["trainer.max_epochs"], int) for p in seen)  # int min/max


def test_grid_space_and_exhaustion():
    spec = validate_sweep(
        base_sweep(
            method="grid",
            parameters={"a": {"values": ["x", "y"]}, "b": {"min": 1, "max": 3}, "c": {"value": 5}},
        )
    )
    assert grid_space(spec) == {"a": ["x", "y"], "b": [1, 2, 3]}
    study = optuna.create_study(sampler=make_sampler(spec))
    combos = []

    def objective(t):
        combos.append(tuple(suggest(t, n, s) for n, s in spec.parameters.items()))
        return 0.0

    study.optimize(objective, n_trials=10)  # the sampler stops once the grid is exhausted
    assert len(combos) == 6 and len(set(combos)) == 6 and all(c[2] == 5 for c in combos)


def test_log_uniform_uses_exponents():
    spec = {"distribution": "log_uniform", "min": math.log(1e-3), "max": math.log(1e-2)}
    trial = optuna.create_study().ask()
    assert 1e-3 <= suggest(trial, "lr", spec) <= 1e-2


def test_objective_is_best_validation_value():
    record = {"val_history": [{"val/dice": 0.5}, {"val/dice": 0.7}, {"val/dice": 0.6}]}
    assert objective_from_record(record, "val/dice", "maximize") == 0.7
    assert objective_from_record(record, "val/dice", "minimize") == 0.5
    assert math.isnan(objective_from_record(record, "val/auc", "maximize"))


def test_tune_constant_is_allowed():
    spec = validate_sweep(base_sweep(parameters={"data.tuning": {"value": "tune"}}))
    assert spec.parameters["data.tuning"] == {"value": "tune"}
