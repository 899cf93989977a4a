"""``--final``: a cv or compare run declared final refuses ``data.tuning: off`` before
anything runs, and the summary of a run without a hold-out names the choices that could have
seen its test images (docs/protocol.md). No training: the fold runner is replaced."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

import bus_mtl.experiments.compare as compare
import bus_mtl.experiments.cv as cv
from bus_mtl.cli.main import main as bus_mtl
from bus_mtl.experiments.cv import finish, run_cv
from bus_mtl.experiments.protocol import GENERAL, PAST_CHOICES, exposed_choices
from bus_mtl.experiments.tuning import PROTOCOL_RECORD, TuningLeak

# What a fold's config.yaml holds when it ran the CPU recipe (the parts the record reads).
CPU_RECIPE = {
    "model": {
        "net": {"class_path": "bus_mtl.models.SegResNetEffNetFeatures", "init_args": {}},
        "weighting": {
            "class_path": "bus_mtl.training.weighting.FixedWeighting",
            "init_args": {"seg": 1.0, "cls": 0.25},
        },
        "tta": "hflip",
    },
    "trainer": {
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"},
            {
                "class_path": "bus_mtl.training.TemperatureCalibration",
                "init_args": {"threshold_rule": "youden_binormal"},
            },
        ]
    },
}


def _data_cfg(tmp_path, centre: str = "synthetic") -> str:
    cfg = {
        "data": {
            "sources": [
                {
                    "class_path": "bus_mtl.data.SyntheticSource",
                    "init_args": {
                        "n": 24,
                        "image_size": 64,
                        "seed": 0,
                        "root": str(tmp_path / f"img_{centre}"),
                        "centre": centre,
                    },
                }
            ],
            "image_size": 64,
            "dup_threshold": -1,
            "cache_dir": str(tmp_path / "cache"),
            "seed": 3,
        }
    }
    path = tmp_path / f"data_{centre}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def data_cfg(tmp_path):
    return _data_cfg(tmp_path)


@pytest.fixture
def no_folds(monkeypatch):
    """Stand in for the fold runner (cv's and compare's): nothing trains."""
    calls = []

    def fake(jobs, parallel=1):
        calls.append(jobs)
        return {}

    monkeypatch.setattr(cv, "run_jobs", fake)
    monkeypatch.setattr(compare, "run_jobs", fake)
    return calls


def _finished_folds(out, config: dict | None = None) -> None:
    """What finished folds leave: metrics, per-image predictions (and a config.yaml)."""
    split = json.loads((out / "split.json").read_text())
    for k, fold in enumerate(split["folds"]):
        d = out / f"fold_{k}"
        d.mkdir(exist_ok=True)
        (d / "metrics.json").write_text(json.dumps({"fold": k, "metrics": {"test/dice": 0.5}}))
        n = len(fold["test"])
        pd.DataFrame(
            {"id": fold["test"], "centre": ["c"] * n, "label": [0, 1] * (n // 2) + [0] * (n % 2)}
        ).assign(prob=0.3).to_csv(d / "test_predictions.csv", index=False)
        if config is not None:
            run = d / "Net" / "version_0"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_final_refuses_tuning_off_before_anything_runs(tmp_path, data_cfg, no_folds):
    out = tmp_path / "cv"
    with pytest.raises(TuningLeak) as err:
        run_cv([data_cfg], out, folds=3, final=True)
    message = str(err.value)
    assert "\n" not in message  # one line: what, why, the fix
    assert message.startswith("--final: data.tuning is 'off'")
    assert "could have seen the test images" in message
    assert "--data.tuning exclude" in message
    assert not no_folds and not out.exists()
    # The same configuration is accepted when it is not declared final.
    run_cv([data_cfg], out, folds=3)
    assert len(no_folds) == 1
    assert json.loads((out / PROTOCOL_RECORD).read_text()) == {"final": False, "tuning": "off"}


def test_final_with_the_holdout_excluded_runs_and_says_so(tmp_path, data_cfg, no_folds):
    out = tmp_path / "cv"
    run_cv([data_cfg], out, folds=3, extra=["--data.tuning=exclude"], final=True)
    assert len(no_folds) == 1
    assert json.loads((out / PROTOCOL_RECORD).read_text()) == {
        "final": True,
        "tuning": "exclude",
    }
    _finished_folds(out)
    payload = finish(out)
    md = (out / "summary.md").read_text()
    assert "Tuning hold-out excluded" in md and "Declared final (`--final`)." in md
    assert payload["tuning"]["final"] is True
    assert payload["tuning"]["exposed_choices"] == []  # synthetic data: no recorded choice


def test_final_training_on_the_holdout_says_where_it_is(tmp_path, data_cfg, no_folds):
    out = tmp_path / "cv"
    run_cv([data_cfg], out, folds=3, extra=["--data.tuning=train"], final=True)
    assert json.loads((out / PROTOCOL_RECORD).read_text()) == {"final": True, "tuning": "train"}
    _finished_folds(out)
    finish(out)
    md = (out / "summary.md").read_text()
    assert "Tuning hold-out trained on (data.tuning: train)" in md
    assert "in every fold's training part and in no validation or test part" in md
    assert "Tuning hold-out excluded" not in md and "Declared final (`--final`)." in md


def test_cli_final(tmp_path, data_cfg, no_folds, capsys):
    argv = ["cv", "--config", data_cfg, "--folds", "3", "--out", str(tmp_path / "cv")]
    assert bus_mtl([*argv, "--final"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bus-mtl cv: refused: --final: data.tuning is 'off'")
    assert "--data.tuning exclude" in err and len(err.splitlines()) == 1
    assert not no_folds and not (tmp_path / "cv").exists()
    assert bus_mtl([*argv, "--final", "--data.tuning=exclude"]) == 0
    assert len(no_folds) == 1


def test_compare_final(tmp_path, data_cfg, no_folds, capsys):
    vdir = tmp_path / "variants"
    vdir.mkdir()
    for v in ("a", "b"):
        (vdir / f"{v}.yaml").write_text("{}\n")
    out = tmp_path / "cmp"
    argv = ["compare", "--variants", "a,b", "--variants-dir", str(vdir), "--config", data_cfg]
    assert bus_mtl([*argv, "--folds", "3", "--out", str(out), "--final"]) == 2
    err = capsys.readouterr().err
    assert "bus-mtl compare: --final: data.tuning is 'off'" in err
    assert "--data.tuning exclude" in err
    assert not no_folds and not out.exists()  # refused before the split or any fold
    # With the hold-out excluded it runs (here: no fold finishes, so no table) and every
    # variant's folder records that the run was declared final.
    with pytest.raises(ValueError, match="no variant has a finished fold"):
        compare.run_compare(
            ["a", "b"],
            [data_cfg],
            out,
            folds=3,
            extra=["--data.tuning=exclude"],
            variants_dir=vdir,
            final=True,
        )
    assert len(no_folds) == 1
    for v in ("a", "b"):
        record = json.loads((out / v / PROTOCOL_RECORD).read_text())
        assert record == {"final": True, "tuning": "exclude"}
    # Once folds finish, compare.md carries the same note as each variant's summary.
    split = json.loads((out / "split.json").read_text())
    for v in ("a", "b"):
        (out / v / "split.json").write_text(json.dumps(split))
        _finished_folds(out / v)
    compare.write_comparison(out, {("kfold", v): out / v for v in ("a", "b")}, n_boot=20)
    md = (out / "compare.md").read_text()
    assert "**Tuning (kfold).** Tuning hold-out excluded" in md and "Declared final" in md


def test_summary_without_holdout_names_the_choices_that_saw_its_test_images(tmp_path, no_folds):
    busi = _data_cfg(tmp_path, centre="busi")  # ids busi/..., like BUSISource's
    out = tmp_path / "cv"
    run_cv([busi], out, folds=3)
    _finished_folds(out, CPU_RECIPE)
    payload = finish(out)
    md = (out / "summary.md").read_text()
    assert "No tuning hold-out (data.tuning: off)" in md and "not a final run" in md
    assert "--data.tuning exclude" in md and "docs/protocol.md" in md
    choices = payload["tuning"]["exposed_choices"]
    assert choices[0] == GENERAL and len(choices) == 1 + len(PAST_CHOICES)
    for text in ("weight 0.25", "flip test-time augmentation", "binormal Youden", "EMA"):
        assert text in md, text
    assert "BUSI fold 0's validation part" in md and "post hoc test figures" in md
    # Another configuration names only the recorded choices it uses.
    other = json.loads(json.dumps(CPU_RECIPE))
    other["model"]["weighting"]["init_args"]["cls"] = 1.0
    other["model"]["tta"] = "none"
    ids = ["busi/benign (1)"]
    (only,) = exposed_choices(ids, other)
    assert only.startswith("the binormal Youden threshold rule")
    # Without a config, every recorded choice is named as possible; no BUSI image, none.
    assert all("if this run uses it" in c for c in exposed_choices(ids, None))
    assert exposed_choices(["synthetic/0001"], CPU_RECIPE) == []


def test_summary_with_holdout_still_names_busi_choices(tmp_path, no_folds):
    busi = _data_cfg(tmp_path, centre="busi")
    out = tmp_path / "cv"
    run_cv([busi], out, folds=3, extra=["--data.tuning=exclude"], final=True)
    _finished_folds(out, CPU_RECIPE)
    payload = finish(out)
    md = (out / "summary.md").read_text()
    assert "Declared final" in md and "weight 0.25" in md and GENERAL not in md
    assert len(payload["tuning"]["exposed_choices"]) == len(PAST_CHOICES)
