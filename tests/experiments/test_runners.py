"""The runners end to end on tiny synthetic data: cv (with resume), compare, local sweep,
a sampled W&B trial command under fast_dev_run, and the GPU benchmark's CPU dry run."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from bus_mtl.cli.main import main as bus_mtl
from bus_mtl.experiments.sweep import build_command, load_sweep, suggest, validate_sweep

from .conftest import ROOT, TINY_TRAINER


def _variant(name: str) -> str:
    path = ROOT / "experiments" / "variants" / f"{name}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} not in this tree yet")
    return str(path)


@pytest.mark.slow
def test_cv_writes_results_and_resumes_only_the_broken_fold(tiny_data_config, tmp_path):
    out = tmp_path / "cv"
    argv = [
        "cv",
        "--config",
        "experiments/base.yaml",
        "--config",
        str(tiny_data_config),
        "--model.net",
        _variant("segresnet"),
        "--folds",
        "2",
        "--out",
        str(out),
        "--parallel",
        "2",
        *TINY_TRAINER,
    ]
    assert bus_mtl(argv) == 0
    split = json.loads((out / "split.json").read_text())
    assert len(split["folds"]) == 2
    tested = [set(f["test"]) for f in split["folds"]]
    assert not tested[0] & tested[1] and len(tested[0] | tested[1]) == 20
    for k in (0, 1):
        fold = out / f"fold_{k}"
        for name in ("DONE", "metrics.json", "test_predictions.csv", "run.json"):
            assert (fold / name).is_file(), f"fold_{k}/{name}"
        pred = pd.read_csv(fold / "test_predictions.csv")
        assert set(pred["id"]) == tested[k]  # the fold tested exactly its split part
        assert "test/dice" in json.loads((fold / "metrics.json").read_text())["metrics"]
    for name in ("summary.csv", "summary.md", "summary.json", "command.txt", "seeds.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "seeds.json").read_text()) == {"fold_0": 42, "fold_1": 43}
    assert list(out.rglob("config.yaml")), "LightningCLI's resolved config was not kept"
    summary = json.loads((out / "summary.json").read_text())
    dice = [
        json.loads((out / f"fold_{k}/metrics.json").read_text())["metrics"]["test/dice"]
        for k in (0, 1)
    ]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(sum(dice) / 2)

    # Break fold 1 as if killed during fit (its record keeps no finished fit, only the
    # checkpoints remain): it resumes from last.ckpt; fold 0 must not run again.
    done0 = (out / "fold_0" / "metrics.json").stat().st_mtime_ns
    fit_runs = (out / "fold_1" / "fold.log").read_text().count("$ bus-mtl fit ")
    assert fit_runs == 1
    for name in ("DONE", "metrics.json", "test_predictions.csv"):
        (out / "fold_1" / name).unlink()
    record = json.loads((out / "fold_1" / "run.json").read_text())
    record.pop("fit")
    record.pop("test")
    (out / "fold_1" / "run.json").write_text(json.dumps(record))
    # The rerun goes one fold at a time, in this process (the first ran folds as subprocesses).
    at = argv.index("--parallel")
    rerun = [*argv[:at], "--parallel", "1", *argv[at + 2 :]]
    assert bus_mtl(rerun) == 0
    assert (out / "fold_0" / "metrics.json").stat().st_mtime_ns == done0
    assert (out / "fold_1" / "DONE").is_file()
    assert (out / "fold_1" / "test_predictions.csv").is_file()
    log1 = (out / "fold_1" / "fold.log").read_text()
    assert log1.count("$ bus-mtl fit ") == 2 and log1.count("$ bus-mtl test ") == 2
    assert "last.ckpt" in log1.split("$ bus-mtl fit ")[-1].split("\n")[0]  # --ckpt_path
    assert (out / "fold_0" / "fold.log").read_text().count("$ bus-mtl test ") == 1
    assert not list((out / "fold_1").glob("*/version_1")), "resume logged into a new version"


@pytest.mark.slow
def test_compare_two_variants(tiny_data_config, tmp_path):
    out = tmp_path / "cmp"
    _variant("segresnet")
    _variant("efficientnet")
    argv = [
        "compare",
        "--variants",
        "segresnet,efficientnet",
        "--config",
        "experiments/base.yaml",
        "--config",
        str(tiny_data_config),
        "--folds",
        "2",
        "--parallel",
        "2",
        "--out",
        str(out),
        *TINY_TRAINER,
    ]
    assert bus_mtl(argv) == 0
    for name in ("split.json", "compare.csv", "compare.md", "compare.png", "per_image.csv"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "compare.csv").set_index("variant")
    assert set(table.index) == {"segresnet", "efficientnet"}
    assert pd.isna(table.loc["efficientnet", "dice_mean"])  # no mask head
    assert pd.isna(table.loc["segresnet", "auc_mean"])  # no class head
    assert table.loc["segresnet", "params_mean"] > 0
    # both variants were tested on the same images
    joined = pd.read_csv(out / "per_image.csv")
    assert len(joined) == 20 and joined["prob_efficientnet"].notna().all()
    assert "Dice (%)" in (out / "compare.md").read_text()


def test_sampled_trial_command_runs_fast_dev_run(tiny_data_config, tmp_path):
    """A W&B-style trial command line (${args} = --name=value) is accepted by LightningCLI."""
    spec = load_sweep(ROOT / "experiments" / "sweeps" / "lr_loss_weights.yaml")
    import optuna

    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    params = {name: suggest(trial, name, p) for name, p in spec.parameters.items()}
    extra = [
        "--config",
        str(tiny_data_config),
        "--model.net",
        _variant("segresnet"),
        "--trainer.fast_dev_run=true",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cmd = build_command(spec, params, extra)
    assert cmd[-len(params) :] == [f"--{k}={v}" for k, v in params.items()]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_local_sweep_completes_two_trials(tiny_data_config, tmp_path):
    sweep = {
        "method": "random",
        "metric": {"name": "val/loss", "goal": "minimize"},
        "parameters": {
            "model.optimizer.init_args.lr": {
                "distribution": "log_uniform_values",
                "min": 1e-4,
                "max": 1e-2,
            },
            "data.augmentation": {"values": ["none", "light"]},
        },
        "command": [
            "${env}",
            "${interpreter}",
            "-m",
            "bus_mtl.cli.main",
            "fit",
            "--config",
            "experiments/base.yaml",
            "--data.tuning=tune",
            "${args}",
        ],
    }
    path = tmp_path / "tiny_sweep.yaml"
    import yaml

    path.write_text(yaml.safe_dump(sweep))
    validate_sweep(sweep)
    out = tmp_path / "sweep"
    argv = ["sweep", str(path), "--trials", "2", "--out", str(out), "--"]
    argv += ["--config", str(tiny_data_config), "--model.net", _variant("segresnet"), *TINY_TRAINER]
    assert bus_mtl(argv) == 0
    ranked = pd.read_csv(out / "ranked.csv")
    assert len(ranked) == 2 and (ranked["state"] == "COMPLETE").all()
    assert ranked["val/loss"].is_monotonic_increasing  # minimise: best first
    assert (out / "ranked.md").is_file()
    cmd = (out / "trial_000" / "command.txt").read_text()
    assert "--model.optimizer.init_args.lr=" in cmd
    # Both trials validated on the same tuning hold-out, recorded for bus-mtl cv --tuned-by.
    tuning = json.loads((out / "tuning.json").read_text())
    assert len(set(tuning["trials"].values())) == 1 and tuning["images"] >= 1
    tuned = pd.read_csv(out / "ranked.csv", dtype={"tuning": str})["tuning"]
    assert set(tuned) == {tuning["fingerprint"]}


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    env = {"OUT": str(tmp_path), "DRY_RUN": "1", "PY": sys.executable, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        ["bash", str(ROOT / "experiments" / "gpu_benchmark.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "throughput" / "gpu_benchmark.csv")
    assert set(rows["loop"]) == {"data", "bare/eager", "lightning"}
    assert (rows["img_s"] > 0).all()
