"""``bus-mtl bench accuracy``: same fold, same budget per model, a table and CSV/JSON."""

from __future__ import annotations

import csv
import json
import math

import pytest

from bus_mtl.benchmarks import accuracy


def test_lineup_and_arguments_are_checked(tmp_path):
    assert list(accuracy.LINEUP)[:2] == ["seg_features_effnet_lite0", "seg_features_effnet"]
    with pytest.raises(SystemExit, match="not in"):
        accuracy.main(["--models", "unet3000", "--synthetic-n", "8", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="budget"):
        accuracy.main(["--budget-min", "0", "--synthetic-n", "8", "--out", str(tmp_path)])


@pytest.mark.slow
def test_two_models_on_synthetic_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "acc"
    code = accuracy.main(
        [
            "--synthetic-n",
            "40",
            "--models",
            "segresnet,efficientnet",
            "--budget-min",
            "0.5",
            "--max-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader((out / "accuracy.csv").open()))
    assert [r["model"] for r in rows] == ["segresnet", "efficientnet"]
    seg, cls = rows
    assert int(seg["epochs_reached"]) >= 1 and int(seg["epochs_planned"]) == 1
    assert 0.0 <= float(seg["dice"]) <= 1.0 and math.isnan(float(seg["auc"]))
    assert math.isnan(float(cls["dice"])) and 0.0 <= float(cls["decision_threshold"]) <= 1.0
    payload = json.loads((out / "accuracy.json").read_text())
    assert payload["budget_min"] == 0.5 and payload["fold"] == 0 and len(payload["rows"]) == 2
    printed = capsys.readouterr().out
    assert "| segresnet |" in printed and "epochs_reached" in printed
