"""The local sweep runner and the tuning hold-out, with a stand-in trial command (a few lines
of Python, no training): every trial gets ``--data.tuning=tune`` last, the hold-outs the
trials record become ``OUT/tuning.json``, and extra arguments cannot turn tuning off."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bus_mtl.data.splits import tuning_fingerprint
from bus_mtl.experiments.sweep import TUNE_ARG, SweepError, run_local_sweep, validate_sweep
from bus_mtl.experiments.tuning import load_tuned

# A trial: records its argv, a run folder's split.json with the hold-out (as
# LoggedSaveConfigCallback saves it beside config.yaml) and the RunRecorder JSON.
TRIAL = """
import json, pathlib, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
root = pathlib.Path(args["trainer.default_root_dir"])
run = root / "Net" / "version_0"
run.mkdir(parents=True, exist_ok=True)
held = ["busi/benign (2)", "busi/malignant (9)"] if args["data.tuning"] == "tune" else []
split = {"seed": 42, "tuning_fraction": 0.15, "tuning": held, "folds": []}
(run / "split.json").write_text(json.dumps(split))
(root / "argv.json").write_text(json.dumps(sys.argv[1:]))
record = {"val_history": [{"val/score": float(args["model.lr"])}]}
pathlib.Path(args["trainer.callbacks.path"]).write_text(json.dumps(record))
"""


def _spec():
    return validate_sweep(
        {
            "method": "random",
            "metric": {"name": "val/score", "goal": "maximize"},
            "parameters": {"model.lr": {"min": 0.1, "max": 0.9}},
            "command": ["${interpreter}", "-c", TRIAL, TUNE_ARG, "${args}"],
        },
        "stand_in.yaml",
    )


def test_trials_validate_on_the_holdout_and_the_sweep_records_it(tmp_path):
    out = tmp_path / "sweep"
    ranked = run_local_sweep(_spec(), 2, out, extra=["--data.augmentation=none"])
    held = ["busi/benign (2)", "busi/malignant (9)"]
    fingerprint = tuning_fingerprint(held)
    for trial in ("trial_000", "trial_001"):
        argv = json.loads((out / trial / "argv.json").read_text())
        tuning = [a for a in argv if a.startswith("--data.tuning")]
        assert tuning[-1] == TUNE_ARG  # the runner's own, after the extra arguments
        last = max(i for i, a in enumerate(argv) if a == TUNE_ARG)
        assert argv.index("--data.augmentation=none") < last
    record = json.loads((out / "tuning.json").read_text())
    assert record["ids"] == held and record["fingerprint"] == fingerprint
    assert record["trials"] == {"trial_000": fingerprint, "trial_001": fingerprint}
    assert record["seed"] == 42 and record["tuning_fraction"] == 0.15
    assert list(ranked["tuning"]) == [fingerprint] * 2
    assert (
        list(pd.read_csv(out / "trials.csv", dtype={"tuning": str})["tuning"]) == [fingerprint] * 2
    )
    md = (out / "ranked.md").read_text()
    assert fingerprint in md and f"--tuned-by {out}" in md
    assert load_tuned(out)["fingerprint"] == fingerprint  # what bus-mtl cv --tuned-by reads


@pytest.mark.parametrize("arg", ["--data.tuning=off", "--data.tuning=exclude"])
def test_extra_arguments_cannot_turn_tuning_off(tmp_path, arg):
    with pytest.raises(SweepError, match=f"{arg}: sweep trials validate on the tuning"):
        run_local_sweep(_spec(), 1, tmp_path / "sweep", extra=[arg])
    assert not (tmp_path / "sweep").exists()  # refused before any trial


def test_cli_refuses_extra_tuning_arguments(tmp_path, capsys):
    from bus_mtl.cli.main import main as bus_mtl

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec().raw))
    argv = ["sweep", str(path), "--trials", "1", "--out", str(tmp_path / "o")]
    assert bus_mtl([*argv, "--", "--data.tuning=off"]) == 2
    assert "--data.tuning=off" in capsys.readouterr().err
