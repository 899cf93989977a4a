"""W&B sweep files: validation, and a local runner that samples them with optuna.

The same YAML file serves both ways:

* with a W&B account and server: ``wandb sweep FILE`` then ``wandb agent ID``;
* without: ``bus-mtl sweep FILE --trials N`` — optuna samples the ``parameters``
  (``bayes`` → TPE, ``random`` → RandomSampler, ``grid`` → GridSampler), and each trial
  runs the file's ``command`` as a subprocess with ``${args}`` expanded exactly as the W&B
  agent does (``--name=value``), so a trial behaves the same under both.

Each trial's objective is the best value of ``metric.name`` over validation epochs
(max for ``maximize``, min for ``minimize``), read from the
:class:`~bus_mtl.experiments.callbacks.RunRecorder` JSON the runner adds to the command.

Trials validate on the *tuning hold-out* (``data.tuning: tune``; see
:class:`~bus_mtl.data.datamodule.BUSDataModule`): a sweep file's command must set
``--data.tuning=tune`` (both runners then do), and the local runner forces it after any extra
arguments. Each trial's ``split.json`` (beside its ``config.yaml``) records the hold-out; the
local runner gathers them into ``OUT/tuning.json`` (ids and fingerprint), which
``bus-mtl cv --data.tuning=exclude --tuned-by OUT`` checks its folds against.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bus_mtl.experiments.results import markdown_table, write_json
from bus_mtl.experiments.tuning import TUNING_RECORD

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
# W&B distributions the local runner can sample (normal-type ones have no optuna analogue).
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
)
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_json}")
RECORDER = "bus_mtl.experiments.callbacks.RunRecorder"
#: Every trial trains outside the tuning hold-out and validates on it.
TUNE_ARG = "--data.tuning=tune"
#: Parameters that draw the hold-out: sampling one gives each trial another hold-out.
HOLDOUT_KEYS = ("data.tuning", "data.tuning_fraction", "data.seed")


class SweepError(ValueError):
    """An invalid sweep file; the message names the file and the key."""


@dataclass
class SweepSpec:
    """A parsed, validated sweep file."""

    path: Path
    method: str
    metric: str
    goal: str
    parameters: dict[str, dict[str, Any]]
    command: list[str]
    program: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _distribution(name: str, spec: dict[str, Any], where: str) -> str:
    """The W&B distribution of one parameter, inferred as the W&B server does."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise SweepError(f"{where}: parameters.{name}.values must be a non-empty list")
        return "categorical"
    if "distribution" in spec:
        return str(spec["distribution"])
    if "min" in spec and "max" in spec:
        ints = isinstance(spec["min"], int) and isinstance(spec["max"], int)
        return "int_uniform" if ints else "uniform"
    raise SweepError(
        f"{where}: parameters.{name} needs 'value', 'values', 'min'/'max' or 'distribution'"
    )


def validate_sweep(data: dict[str, Any], where: str = "sweep") -> SweepSpec:
    """Check a sweep mapping against the W&B sweep schema and this runner's needs."""
    if not isinstance(data, dict):
        raise SweepError(f"{where}: a sweep file must be a YAML mapping")
    method = data.get("method")
    if method not in METHODS:
        raise SweepError(f"{where}: method must be one of {METHODS}, got {method!r}")
    metric = data.get("metric")
    if not isinstance(metric, dict) or not metric.get("name"):
        raise SweepError(f"{where}: metric.name is required (e.g. val/dice)")
    goal = metric.get("goal", "minimize")
    if goal not in GOALS:
        raise SweepError(f"{where}: metric.goal must be one of {GOALS}, got {goal!r}")
    params = data.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{where}: parameters must be a non-empty mapping")
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise SweepError(f"{where}: parameters.{name} must be a mapping")
        if "parameters" in spec:
            raise SweepError(
                f"{where}: parameters.{name}: nested parameters are not supported; "
                "use dotted names such as model.optimizer.init_args.lr"
            )
        dist = _distribution(name, spec, where)
        if dist not in DISTRIBUTIONS:
            raise SweepError(
                f"{where}: parameters.{name}: distribution {dist!r} is not supported; "
                f"use one of {DISTRIBUTIONS}"
            )
        if dist not in {"constant", "categorical"}:
            for key in ("min", "max"):
                if not isinstance(spec.get(key), (int, float)) or isinstance(spec[key], bool):
                    raise SweepError(f"{where}: parameters.{name}.{key} must be a number")
            if spec["min"] >= spec["max"]:
                raise SweepError(f"{where}: parameters.{name}: min must be below max")
            if dist in {"log_uniform_values", "q_log_uniform_values"} and spec["min"] <= 0:
                raise SweepError(f"{where}: parameters.{name}.min must be > 0 for {dist}")
        if method == "grid" and dist not in {"constant", "categorical", "int_uniform"}:
            raise SweepError(f"{where}: parameters.{name}: grid search needs 'values' (got {dist})")
        if name in HOLDOUT_KEYS and not (name == "data.tuning" and spec.get("value") == "tune"):
            raise SweepError(
                f"{where}: parameters.{name} ({spec}): every trial validates on one tuning "
                f"hold-out, so {name} is not sampled (data.tuning is always tune; "
                "data.tuning_fraction and data.seed draw the hold-out); remove it from "
                "parameters and set it in the data config"
            )
    command = data.get("command")
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise SweepError(f"{where}: command must be a list of strings")
    if "${args_no_hyphens}" in command:
        raise SweepError(
            f"{where}: command uses ${{args_no_hyphens}}, which LightningCLI rejects; "
            "use ${args} (--key=value)"
        )
    if "${args}" not in command:
        raise SweepError(f"{where}: command must contain ${{args}}")
    check_tuning_args(command[: command.index("${args}")], f"{where}: command", need=True)
    check_tuning_args(command[command.index("${args}") :], f"{where}: command")
    for part in command:
        if part.startswith("${") and part not in MACROS:
            raise SweepError(f"{where}: unknown command macro {part}")
    program = data.get("program")
    if "${program}" in command and not program:
        raise SweepError(f"{where}: command uses ${{program}} but no program is given")
    return SweepSpec(
        path=Path(where),
        method=method,
        metric=str(metric["name"]),
        goal=goal,
        parameters=params,
        command=list(command),
        program=program,
        raw=data,
    )


def check_tuning_args(args: Sequence[str], where: str, need: bool = False) -> None:
    """``args`` set ``data.tuning`` to nothing but ``tune`` (and do set it when ``need``)."""
    found = [a for a in args if a == "--data.tuning" or a.startswith("--data.tuning=")]
    bad = [a for a in found if a != TUNE_ARG]
    if bad:
        raise SweepError(
            f"{where}: {', '.join(bad)}: sweep trials validate on the tuning hold-out, so "
            f"data.tuning is always tune; use '{TUNE_ARG}' or leave it out"
        )
    if need and not found:
        raise SweepError(
            f"{where} does not set data.tuning: sweep trials must validate on the tuning "
            f"hold-out; add '{TUNE_ARG}' to the command before ${{args}}"
        )


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from err
    spec = validate_sweep(data, str(path))
    spec.path = path
    return spec


def _is_primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def suggest(trial: Any, name: str, spec: dict[str, Any]) -> Any:
    """Sample one parameter from an optuna trial, mapping the W&B distribution."""
    dist = _distribution(name, spec, "sweep")
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        values = spec["values"]
        if all(_is_primitive(v) for v in values):
            return trial.suggest_categorical(name, values)
        # optuna stores only primitives: sample the index of a list/dict value.
        return values[trial.suggest_categorical(name, list(range(len(values))))]
    lo, hi = spec["min"], spec["max"]
    if dist == "int_uniform":
        return trial.suggest_int(name, int(lo), int(hi))
    if dist == "uniform":
        return trial.suggest_float(name, float(lo), float(hi))
    if dist == "q_uniform":
        return trial.suggest_float(name, float(lo), float(hi), step=float(spec.get("q", 1.0)))
    if dist == "log_uniform":  # W&B: min/max are natural-log exponents
        return float(math.exp(trial.suggest_float(f"{name}__ln", float(lo), float(hi))))
    if dist == "log_uniform_values":
        return trial.suggest_float(name, float(lo), float(hi), log=True)
    if dist == "q_log_uniform_values":
        q = float(spec.get("q", 1.0))
        value = trial.suggest_float(name, float(lo), float(hi), log=True)
        return float(np.clip(round(value / q) * q, lo, hi))
    raise SweepError(f"parameters.{name}: distribution {dist!r} is not supported")


def grid_space(spec: SweepSpec) -> dict[str, list[Any]]:
    """The optuna GridSampler search space (values, or indices for non-primitive values)."""
    space: dict[str, list[Any]] = {}
    for name, p in spec.parameters.items():
        dist = _distribution(name, p, str(spec.path))
        if dist == "constant":
            continue
        if dist == "categorical":
            values = p["values"]
            space[name] = (
                values if all(_is_primitive(v) for v in values) else list(range(len(values)))
            )
        else:  # int_uniform (validate_sweep allows nothing else for grid)
            space[name] = list(range(int(p["min"]), int(p["max"]) + 1))
    return space


def make_sampler(spec: SweepSpec, seed: int = 0) -> Any:
    import optuna

    if spec.method == "bayes":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(grid_space(spec), seed=seed)


def format_args(params: dict[str, Any]) -> list[str]:
    """``${args}`` as the W&B agent builds it: ``--name=value`` with Python's ``str``."""
    return [f"--{name}={value}" for name, value in params.items()]


def build_command(
    spec: SweepSpec,
    params: dict[str, Any],
    extra: Sequence[str] = (),
    interpreter: str | None = None,
) -> list[str]:
    """Expand the command's macros for one trial.

    ``extra`` args go just before ``${args}``: after the command's own ``--config`` files
    (so they can add a data config or ``--trainer.max_epochs``) but before the sampled
    values, which therefore always win.
    """
    import json

    out: list[str] = []
    for part in spec.command:
        if part == "${env}":
            continue  # W&B prefixes /usr/bin/env; the local runner passes its environment
        if part == "${interpreter}":
            out.append(interpreter or sys.executable)
        elif part == "${program}":
            out.append(str(spec.program))
        elif part == "${args}":
            out += list(extra)
            out += format_args(params)
        elif part == "${args_json}":
            out.append(json.dumps(params))
        else:
            out.append(part)
    return out


def objective_from_record(record: dict[str, Any], metric: str, goal: str) -> float:
    """Best value of ``metric`` over the recorded validation epochs (NaN if never logged)."""
    values = [r[metric] for r in record.get("val_history", []) if r.get(metric) is not None]
    if not values:
        return math.nan
    return float(max(values) if goal == "maximize" else min(values))


@dataclass
class TrialResult:
    number: int
    params: dict[str, Any]
    value: float
    state: str
    seconds: float
    folder: str
    tuning: str = ""  # fingerprint of the hold-out the trial validated on


def run_trial(
    spec: SweepSpec,
    params: dict[str, Any],
    folder: Path,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
    timeout: float | None = None,
) -> tuple[float, float]:
    """Run one trial subprocess in ``folder``; returns ``(objective, seconds)``."""
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "run.json"
    if record.exists():
        record.unlink()
    own = [
        f"--trainer.default_root_dir={folder}",
        f"--trainer.callbacks+={RECORDER}",
        f"--trainer.callbacks.path={record}",
        TUNE_ARG,  # after the extra args: no --config given there can turn it off
    ]
    cmd = build_command(spec, params, [*extra, *own])
    (folder / "command.txt").write_text(shlex.join(cmd) + "\n")
    write_json(folder / "params.json", params)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")},
            timeout=timeout,
            check=False,
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"trial in {folder} failed with exit code {proc.returncode}; see {folder / 'log.txt'}"
        )
    if not record.is_file():
        return math.nan, seconds
    value = objective_from_record(json.loads(record.read_text()), spec.metric, spec.goal)
    return value, seconds


def trial_holdout(folder: Path) -> dict[str, Any] | None:
    """The tuning hold-out a finished trial validated on, from the ``split.json`` saved beside
    its ``config.yaml``: ``{"ids", "seed", "tuning_fraction"}`` (``None`` if none found)."""
    for path in sorted(Path(folder).rglob("split.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("tuning"):
            return {
                "ids": sorted(data["tuning"]),
                "seed": data.get("seed"),
                "tuning_fraction": data.get("tuning_fraction"),
            }
    return None


def write_tuning_record(out: Path, holdouts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """``OUT/tuning.json``: every image a trial validated on (the union over trials, which
    is one hold-out unless the data config changed between trials) and its fingerprint."""
    from bus_mtl.data.splits import tuning_fingerprint

    if not holdouts:
        print(
            "[sweep] no trial recorded a tuning hold-out (split.json with 'tuning'): "
            f"{TUNING_RECORD} not written",
            file=sys.stderr,
        )
        return None
    ids = sorted({i for h in holdouts.values() for i in h["ids"]})
    trials = {name: tuning_fingerprint(h["ids"]) for name, h in holdouts.items()}
    if len(set(trials.values())) > 1:
        print(
            f"[sweep] trials validated on different tuning hold-outs {trials}; "
            f"{TUNING_RECORD} holds their union ({len(ids)} images)",
            file=sys.stderr,
        )
    first = next(iter(holdouts.values()))
    record = {
        "fingerprint": tuning_fingerprint(ids),
        "images": len(ids),
        "seed": first["seed"],
        "tuning_fraction": first["tuning_fraction"],
        "trials": trials,
        "ids": ids,
    }
    write_json(Path(out) / TUNING_RECORD, record)
    return record


def run_local_sweep(
    spec: SweepSpec,
    trials: int,
    out: Path,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
    seed: int = 0,
    timeout: float | None = None,
) -> pd.DataFrame:
    """Run ``trials`` trials with optuna; write ``trials.csv``, ``ranked.csv``, ``ranked.md``.

    A failing trial is recorded as ``FAIL`` (its log stays in its folder) and the sweep goes
    on. ``extra`` args are added to every trial (see :func:`build_command`). Returns the
    ranked frame (best first; failed trials last).
    """
    import optuna

    from bus_mtl.data.splits import tuning_fingerprint

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    check_tuning_args(extra, "extra arguments")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec.raw, sort_keys=False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if spec.goal == "maximize" else "minimize",
        sampler=make_sampler(spec, seed),
    )
    results: list[TrialResult] = []
    holdouts: dict[str, dict[str, Any]] = {}

    def objective(trial: Any) -> float:
        params = {name: suggest(trial, name, p) for name, p in spec.parameters.items()}
        folder = out / f"trial_{trial.number:03d}"
        try:
            value, seconds = run_trial(spec, params, folder, extra, cwd, timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"[sweep] {err}", file=sys.stderr)
            results.append(TrialResult(trial.number, params, math.nan, "FAIL", 0.0, str(folder)))
            raise optuna.TrialPruned() from err  # keeps the sampler going
        state = "COMPLETE" if math.isfinite(value) else "NO_METRIC"
        held = trial_holdout(folder)
        if held is not None:
            holdouts[folder.name] = held
        fingerprint = tuning_fingerprint(held["ids"]) if held else ""
        results.append(
            TrialResult(trial.number, params, value, state, seconds, str(folder), fingerprint)
        )
        print(f"[sweep] trial {trial.number}: {spec.metric} = {value:.4f} ({seconds:.0f} s)")
        return value if math.isfinite(value) else float("nan")

    study.optimize(objective, n_trials=trials, catch=())
    return write_ranked(results, spec, out, write_tuning_record(out, holdouts))


def write_ranked(
    results: list[TrialResult],
    spec: SweepSpec,
    out: Path,
    tuning: dict[str, Any] | None = None,
) -> pd.DataFrame:
    rows = []
    for r in results:
        rows.append(
            {
                "trial": r.number,
                spec.metric: r.value,
                "state": r.state,
                "seconds": round(r.seconds, 1),
                **{k: v if _is_primitive(v) else str(v) for k, v in r.params.items()},
                "tuning": r.tuning,
                "folder": r.folder,
            }
        )
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "trials.csv", index=False)
    ascending = spec.goal == "minimize"
    ranked = frame.sort_values(spec.metric, ascending=ascending, na_position="last")
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    ranked.to_csv(out / "ranked.csv", index=False)
    shown = ranked.drop(columns=["folder", "tuning"]).astype(object)
    shown[spec.metric] = [f"{v:.4f}" if math.isfinite(v) else "—" for v in ranked[spec.metric]]
    md = [
        f"# Local sweep: {spec.path.name}",
        "",
        f"method {spec.method}, {len(ranked)} trials, objective: best {spec.metric} over "
        f"validation epochs ({spec.goal}).",
        "",
        _tuning_line(tuning, out),
        "",
        markdown_table(shown),
        "",
    ]
    (out / "ranked.md").write_text("\n".join(md))
    return ranked


def _tuning_line(tuning: dict[str, Any] | None, out: Path) -> str:
    if tuning is None:
        return "Validation: no trial recorded a tuning hold-out (see the trials' logs)."
    return (
        f"Validation: the tuning hold-out (data.tuning: tune), {tuning['images']} images, "
        f"fingerprint {tuning['fingerprint']} ({TUNING_RECORD}). Report the chosen settings "
        f"with `bus-mtl cv ... --data.tuning=exclude --tuned-by {out}`: its folds then leave "
        "these images out, and it refuses to test on any of them."
    )
