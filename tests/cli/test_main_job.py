"""``bus-mtl main``: data detection, the CPU/GPU recipes, and a tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from bus_mtl.cli import main_job
from bus_mtl.models.rebuild import load_net


def parse(*argv: str) -> argparse.Namespace:
    return main_job._parser().parse_args(list(argv))


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_cpu_recipe_is_the_yaml_file_and_prints_the_gpu_command(monkeypatch, tmp_path):
    monkeypatch.setenv("BUS_MTL_DATA", str(tmp_path / "nowhere"))
    args, recipe, notes = main_job.build_args(parse("--accelerator", "cpu"))
    assert any(a.endswith("recipes/cpu.yaml") for a in args)
    assert not any(a.startswith("--data.image_size") for a in args)  # the YAML's value
    assert recipe == main_job.read_recipe("cpu")
    assert recipe["precision"] == "32" and recipe["image_size"] % 32 == 0
    # At most 15 minutes of training on any machine: a TimeBudget caps the epochs.
    assert recipe["budget_min"] is not None and 0 < recipe["budget_min"] <= 15
    assert f"{recipe['budget_min']:g} min" in notes[1]
    assert "synthetic" in notes[0] and "no BUSI found" in notes[0]
    assert "CPU recipe" in notes[1] and "--trainer.accelerator gpu" in notes[1]


@pytest.mark.parametrize(
    "extra, net_class, resize",
    [
        ((), "SegCropEffNet", "letterbox"),
        (("--paper-variant",), "SegResNetEffNetFeatures", "squash"),
    ],
)
def test_cpu_recipes_build_what_their_files_say(monkeypatch, tmp_path, extra, net_class, resize):
    """The main job's CPU recipe (segment, then classify the crop) and the paper's best
    variant one flag away: the composed configuration instantiates what each file says."""
    from bus_mtl.cli.lightning import build_cli
    from bus_mtl.training import TimeBudget
    from bus_mtl.training.calibration import TemperatureCalibration

    monkeypatch.setenv("BUS_MTL_DATA", str(tmp_path / "nowhere"))
    args, recipe, notes = main_job.build_args(
        parse("--accelerator", "cpu", "--root", str(tmp_path / "runs"), *extra)
    )
    name = "cpu_paper" if extra else "cpu"
    assert any(a.endswith(f"recipes/{name}.yaml") for a in args)
    assert recipe == main_job.read_recipe(name)
    assert f"recipes/{name}.yaml" in notes[1]
    cli = build_cli([*args, "--trainer.logger=false"], run=False)
    assert type(cli.model.net).__name__ == net_class
    assert cli.model.net.model_name == "efficientnet-lite0"
    assert cli.datamodule.image_size == recipe["image_size"]
    assert cli.datamodule.batch_size == recipe["batch_size"]
    assert cli.datamodule.resize == resize
    assert cli.trainer.max_epochs == recipe["max_epochs"]
    (budget,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TimeBudget)]
    assert budget.budget_s == 60 * recipe["budget_min"]
    # The last TemperatureCalibration fits the operating point: the recipe's rule.
    calibration = [cb for cb in cli.trainer.callbacks if isinstance(cb, TemperatureCalibration)]
    expected = "sensitivity_binormal" if not extra else "youden_binormal"
    assert calibration[-1].threshold_rule == expected


def test_gpu_recipe_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("BUS_MTL_DATA", str(tmp_path / "nowhere"))
    args, recipe, notes = main_job.build_args(parse("--accelerator", "gpu", "--max-epochs", "7"))
    assert any(a.endswith("recipes/gpu.yaml") for a in args)
    assert recipe["image_size"] == 256 and flag(args, "trainer.max_epochs") == "7"
    assert recipe["precision"] == "bf16-mixed"
    # An override comes after the recipe file, so it wins.
    position = next(i for i, a in enumerate(args) if a.endswith("recipes/gpu.yaml"))
    assert args.index("--trainer.max_epochs=7") > position
    assert len(notes) == 1  # no CPU warning


def test_busi_found_through_the_environment(monkeypatch, tmp_path):
    busi = tmp_path / "busi"
    (busi / "Dataset_BUSI_with_GT").mkdir(parents=True)
    monkeypatch.setenv("BUS_MTL_DATA", str(busi))
    args, _, notes = main_job.build_args(parse("--accelerator", "cpu"))
    assert f"using BUSI at {busi}" in notes[0]
    assert flag(args, "data.sources.init_args.root") == str(busi)
    assert any(a.endswith("data/busi.yaml") for a in args)
    # --data synthetic wins over a BUSI folder; --data busi without one is an error.
    _, _, notes = main_job.build_args(parse("--accelerator", "cpu", "--data", "synthetic"))
    assert "synthetic" in notes[0]
    monkeypatch.setenv("BUS_MTL_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="no BUSI folder"):
        main_job.build_args(parse("--data", "busi"))


def test_external_path_is_checked_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BUS_MTL_DATA", str(tmp_path / "nowhere"))
    code = main_job.main(["--accelerator", "cpu", "--external", str(tmp_path / "missing")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--external {tmp_path / 'missing'}: not found" in err
    assert parse("--external", "none").external == "none" and parse().external is None


def test_find_external_root(monkeypatch, tmp_path):
    from bus_mtl.data.paths import find_external_root

    monkeypatch.setenv("BUS_MTL_EXTERNAL", str(tmp_path))
    assert find_external_root() == tmp_path
    monkeypatch.setenv("BUS_MTL_EXTERNAL", str(tmp_path / "nowhere"))
    assert find_external_root() is None
    monkeypatch.delenv("BUS_MTL_EXTERNAL")
    shared = tmp_path / "shared" / "data" / "breast_lesions_usg"
    shared.mkdir(parents=True)
    (tmp_path / "project").mkdir()
    assert find_external_root(tmp_path / "project") == shared.resolve()


@pytest.mark.slow
def test_main_job_end_to_end_on_tiny_synthetic_data(tmp_path, capsys, monkeypatch):
    """Train, test, and score the best checkpoint on an external manifest (here 8 other
    phantoms) beside the test part's metrics."""
    from bus_mtl.data import SyntheticSource

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    external = tmp_path / "external"
    SyntheticSource(n=8, image_size=64, seed=5, root=external).write()
    code = main_job.main(
        [
            "--data",
            "synthetic",
            "--synthetic-n",
            "32",
            "--image-size",
            "64",
            "--max-epochs",
            "1",
            "--accelerator",
            "cpu",
            "--limit-batches",
            "1",
            "--root",
            str(tmp_path / "runs"),
            "--external",
            str(external),
        ]
    )
    import wandb

    wandb.finish()
    assert code == 0
    out = capsys.readouterr().out
    assert "synthetic phantom set" in out and "CPU recipe" in out
    lines = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if " : " in line
    }
    best = Path(lines["best checkpoint"].split("  (")[0])
    assert best.is_file()
    assert Path(lines["metrics CSV"]).is_file()
    assert "wandb sync" in out and "test/dice" in out
    net, meta = load_net(best)
    # The report names the stored operating point the test metrics used.
    assert lines["decision rule"].startswith(f"malignant when P > {meta['decision_threshold']:.4f}")
    assert f"threshold rule {meta['threshold_rule']}" in lines["decision rule"]
    assert meta["variant"] == "seg_crop_effnet" and meta["image_size"] == 64
    assert meta["resize"] == "letterbox" and meta["threshold_rule"].startswith(
        "sensitivity_binormal"
    )
    assert meta["tta"] == "hflip"  # the CPU recipe evaluates with flip TTA
    (wandb_line,) = [line for line in out.splitlines() if line.startswith("W&B run (offline):")]
    assert os.path.isdir(wandb_line.split(":", 1)[1].strip())
    # The external check: the test part's row and the external set's, side by side.
    assert f"== external check: {best} on {external} ==" in out
    table = out.split("== external check", 1)[1].splitlines()
    assert table[1].split()[:3] == ["n", "Dice", "AUC"]
    assert table[2].startswith("synthetic test part") and table[3].startswith("external (external)")
    metrics = json.loads(
        (Path(lines["metrics CSV"]).parent / "external_external" / "metrics.json").read_text()
    )
    assert metrics["n"] == 8 and metrics["model"]["path"] == str(best)
    assert metrics["threshold"] == pytest.approx(meta["decision_threshold"])
    # It ends with the run's HTML report, which shows the external check too.
    report = Path(lines["report"])
    assert report.is_file() and "external" in report.read_text()


def test_loop_benchmark_takes_the_recipes_net_and_loader():
    """``bench gpu --recipe cpu`` times the main job's own net, size, batch and workers."""
    from bus_mtl.benchmarks.gpu import recipe_setup

    setup = recipe_setup("cpu")
    recipe = main_job.read_recipe("cpu")
    assert setup["class_path"].endswith("SegCropEffNet")
    assert setup["init_args"]["model_name"] == "efficientnet-lite0"
    assert (setup["size"], setup["batch"], setup["workers"]) == (
        recipe["image_size"],
        recipe["batch_size"],
        recipe["num_workers"],
    )
