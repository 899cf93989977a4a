"""cv and the tuning hold-out: ``data.tuning: exclude`` leaves it out of every fold and the
summary says so; a run whose test folds would hold an image a sweep tuned on is refused,
naming it. No training: the fold runner is replaced where a run would start."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import bus_mtl.experiments.cv as cv
from bus_mtl.cli.main import main as bus_mtl
from bus_mtl.data.splits import tuning_fingerprint
from bus_mtl.experiments.cv import build_datamodule, finish, run_cv, write_split
from bus_mtl.experiments.tuning import TUNED_BY, TuningLeak, load_tuned


@pytest.fixture
def data_cfg(tmp_path):
    cfg = {
        "data": {
            "sources": [
                {
                    "class_path": "bus_mtl.data.SyntheticSource",
                    "init_args": {
                        "n": 24,
                        "image_size": 64,
                        "seed": 0,
                        "root": str(tmp_path / "img"),
                    },
                }
            ],
            "image_size": 64,
            "dup_threshold": -1,
            "cache_dir": str(tmp_path / "cache"),
            "seed": 3,
        }
    }
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def sweep_record(tmp_path, data_cfg):
    """What a local sweep over ``data_cfg`` leaves: ``SWEEP/tuning.json``."""
    held = _exclude_split(tmp_path / "ref", data_cfg)["tuning"]
    folder = tmp_path / "sweep"
    folder.mkdir()
    record = {"fingerprint": tuning_fingerprint(held), "seed": 3, "tuning_fraction": 0.15}
    (folder / "tuning.json").write_text(json.dumps({**record, "ids": held}))
    return folder


def _exclude_split(folder, cfg, extra=("--data.tuning=exclude",)):
    folder.mkdir(parents=True, exist_ok=True)
    write_split(build_datamodule([cfg], list(extra)), folder / "split.json", "kfold", folds=3)
    return json.loads((folder / "split.json").read_text())


@pytest.fixture
def no_folds(monkeypatch):
    """Stand in for the fold runner: a run that passes the checks trains nothing."""
    calls = []
    monkeypatch.setattr(cv, "run_jobs", lambda jobs, parallel=1: calls.append(jobs) or {})
    return calls


def test_exclude_split_leaves_the_holdout_out_of_every_fold(tmp_path, data_cfg):
    split = _exclude_split(tmp_path / "cv", data_cfg)
    held = set(split["tuning"])
    assert 2 <= len(held) <= 5 and split["tuning_fingerprint"] == tuning_fingerprint(held)
    assert split["tuning_fraction"] == 0.15
    tests = [set(f["test"]) for f in split["folds"]]
    for f in split["folds"]:
        assert not held & (set(f["train"]) | set(f["val"]) | set(f["test"]))
    assert len(set().union(*tests) | held) == 24 and sum(map(len, tests)) == 24 - len(held)
    # The same hold-out as a sweep trial (data.tuning=tune) draws from the same data config.
    dm = build_datamodule([data_cfg], ["--data.tuning=tune"])
    dm.setup("fit")
    assert sorted(s.id for s in dm.datasets["val"].samples) == split["tuning"]


def test_bad_tuning_value_from_yaml_names_key_and_fix(data_cfg):
    with pytest.raises(ValueError, match=r"tuning: 'exlude' is not one of .*exclude in the cv"):
        build_datamodule([data_cfg], ["--data.tuning=exlude"])


def test_cv_refuses_a_sweep_trial_config(tmp_path, data_cfg, no_folds):
    trial_cfg = yaml.safe_load(Path(data_cfg).read_text())
    trial_cfg["data"]["tuning"] = "tune"  # what a trial's saved config.yaml holds
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(trial_cfg))
    with pytest.raises(TuningLeak, match="--data.tuning=exclude"):
        run_cv([str(tmp_path / "trial.yaml")], tmp_path / "cv", folds=3)
    with pytest.raises(TuningLeak, match="'tune'"):
        write_split(build_datamodule([str(tmp_path / "trial.yaml")]), tmp_path / "s.json")
    assert not no_folds and not (tmp_path / "cv" / "split.json").exists()


def test_cv_refuses_to_report_on_tuned_images_by_name(tmp_path, data_cfg, sweep_record, no_folds):
    tuned = json.loads((sweep_record / "tuning.json").read_text())["ids"]
    out = tmp_path / "cv_off"
    with pytest.raises(TuningLeak) as err:  # data.tuning: off: every image is tested
        run_cv([data_cfg], out, folds=3, tuned_by=sweep_record)
    message = str(err.value)
    assert all(repr(i) in message for i in tuned) and "--data.tuning=exclude" in message
    assert f"{len(tuned)} of them would be reported on" in message and "(fold " in message
    assert not no_folds and not (out / "split.json").exists()  # nothing left to resume
    # Another hold-out (another data.seed): the tuned images it does not exclude are named.
    out = tmp_path / "cv_seed"
    with pytest.raises(TuningLeak, match="would be reported on") as err:
        run_cv(
            [data_cfg],
            out,
            folds=3,
            extra=["--data.tuning=exclude", "--data.seed=11"],
            tuned_by=sweep_record / "tuning.json",
        )
    split = _exclude_split(
        tmp_path / "other", data_cfg, ["--data.tuning=exclude", "--data.seed=11"]
    )
    leaked = sorted(set(tuned) - set(split["tuning"]))
    assert leaked and all(repr(i) in str(err.value) for i in leaked)
    assert not no_folds


def test_cv_runs_and_says_so_when_the_holdout_is_excluded(
    tmp_path, data_cfg, sweep_record, no_folds
):
    out = tmp_path / "cv"
    payload, errors = run_cv(
        [data_cfg], out, folds=3, extra=["--data.tuning=exclude"], tuned_by=sweep_record
    )
    assert payload is None and errors == {} and len(no_folds) == 1  # the folds would run
    record = json.loads((out / TUNED_BY).read_text())
    held = json.loads((out / "split.json").read_text())["tuning"]
    assert record["fingerprint"] == tuning_fingerprint(held) and record["reported"] == 0
    # The summary of the finished folds says the hold-out was excluded, and how many images.
    split = json.loads((out / "split.json").read_text())
    for k, fold in enumerate(split["folds"]):
        d = out / f"fold_{k}"
        d.mkdir(exist_ok=True)
        (d / "metrics.json").write_text(json.dumps({"fold": k, "metrics": {"test/dice": 0.5}}))
        n = len(fold["test"])
        pd.DataFrame(
            {"id": fold["test"], "centre": ["synthetic"] * n, "label": [0] * n, "prob": [0.2] * n}
        ).to_csv(d / "test_predictions.csv", index=False)
    payload = finish(out)
    md = (out / "summary.md").read_text()
    assert f"Tuning hold-out excluded: {len(held)} images" in md
    assert f"tuned by {sweep_record}" in md and record["fingerprint"] in md
    saved = json.loads((out / "summary.json").read_text())
    assert saved["tuning"]["excluded"] is True and saved["tuning"]["images"] == len(held)
    assert payload["tuning"] == saved["tuning"]
    # Resuming the folder with data.tuning=off is fine (its split has the hold-out), but an
    # old folder whose split has no hold-out cannot be resumed with exclude.
    (out / "split.json").write_text(json.dumps({**split, "tuning": []}))
    with pytest.raises(TuningLeak, match="new --out folder"):
        run_cv([data_cfg], out, folds=3, extra=["--data.tuning=exclude"])
    finish(out)
    assert "No tuning hold-out (data.tuning: off)" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["tuning"]["images"] == 0


def test_tuned_by_reads_run_folders_and_needs_a_holdout(tmp_path):
    runs = tmp_path / "runs"
    for v, ids in enumerate([["a", "b"], ["b", "c"], []]):  # the last: a run without one
        d = runs / "Net" / f"version_{v}"
        d.mkdir(parents=True)
        (d / "split.json").write_text(json.dumps({"seed": 5, "tuning": ids, "folds": []}))
    tuned = load_tuned(runs)
    assert tuned["ids"] == ["a", "b", "c"] and tuned["seed"] == 5
    assert tuned["fingerprint"] == tuning_fingerprint(["c", "b", "a"])
    with pytest.raises(TuningLeak, match="no tuning hold-out recorded"):
        load_tuned(runs / "Net" / "version_2")
    with pytest.raises(TuningLeak, match="not found"):
        load_tuned(tmp_path / "nowhere")


def test_cli_refuses_by_name(tmp_path, data_cfg, sweep_record, no_folds, capsys):
    tuned = json.loads((sweep_record / "tuning.json").read_text())["ids"]
    argv = ["cv", "--config", data_cfg, "--folds", "3", "--out", str(tmp_path / "cv")]
    assert bus_mtl([*argv, "--tuned-by", str(sweep_record)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and repr(tuned[0]) in err
    assert bus_mtl([*argv, "--tuned-by", str(sweep_record), "--data.tuning=exclude"]) == 0
    assert len(no_folds) == 1
