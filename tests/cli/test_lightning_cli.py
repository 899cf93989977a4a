"""``bus-mtl fit|validate|test``: the real LightningCLI on the experiment YAMLs."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bus_mtl.cli.lightning import resume_version
from bus_mtl.cli.main import main
from bus_mtl.models import list_variants
from bus_mtl.models.rebuild import load_net

PROJECT = Path(__file__).resolve().parents[2]
EXPERIMENTS = PROJECT / "experiments"


def tiny_data_args(synthetic_root: Path) -> list[str]:
    return [
        "--data.sources",
        str(EXPERIMENTS / "data" / "synthetic.yaml"),
        "--data.sources.init_args.n=32",
        "--data.sources.init_args.image_size=64",
        f"--data.sources.init_args.root={synthetic_root}",
        "--data.image_size=64",
        "--data.batch_size=6",
        "--data.num_workers=0",
        "--data.n_folds=4",
        "--data.val_fraction=0.25",
    ]


@pytest.mark.parametrize("variant", list_variants())
def test_print_config_resolves_every_variant_with_linked_channels(variant, capsys):
    code = main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "base.yaml"),
            "--data.sources",
            str(EXPERIMENTS / "data" / "busi.yaml"),
            "--model.net",
            str(EXPERIMENTS / "variants" / f"{variant}.yaml"),
            "--print_config",
        ]
    )
    assert code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    variant_yaml = yaml.safe_load((EXPERIMENTS / "variants" / f"{variant}.yaml").read_text())
    net = config["model"]["net"]
    assert net["class_path"] == variant_yaml["class_path"]
    # in_channels / num_classes come from the data module (link_arguments), not the YAML.
    assert "in_channels" not in net["init_args"] and "num_classes" not in net["init_args"]
    assert config["data"]["sources"]["class_path"] == "bus_mtl.data.BUSISource"
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/score"


def test_fast_dev_run_on_base_yaml(tmp_path, synthetic_root):
    code = main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "base.yaml"),
            *tiny_data_args(synthetic_root),
            "--model.net",
            str(EXPERIMENTS / "variants" / "shared_encoder.yaml"),
            "--model.net.init_args.init_filters=8",
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            "--trainer.precision=32",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert code == 0


def test_bad_config_value_names_the_key(tmp_path, synthetic_root, capsys):
    code = main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "quickstart.yaml"),
            *tiny_data_args(synthetic_root),
            "--model.threshold=1.5",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert code == 2
    assert "threshold must be in (0, 1), got 1.5" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, synthetic_root):
    """The quickstart recipe (default loggers: CSV + W&B offline), 4 epochs on 32 images."""
    root = tmp_path_factory.mktemp("quickstart")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = main(
            [
                "fit",
                "--config",
                str(EXPERIMENTS / "quickstart.yaml"),
                *tiny_data_args(synthetic_root),
                "--trainer.max_epochs=4",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={root}",
            ]
        )
    finally:
        import wandb

        wandb.finish()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert code == 0
    (log_dir,) = root.glob("SharedEncoder/version_0")
    return {"root": root, "log_dir": log_dir}


def test_short_fit_lowers_the_training_loss(quickstart_run):
    frame = pd.read_csv(quickstart_run["log_dir"] / "metrics.csv")
    epochs = frame.dropna(subset=["train/loss_epoch"]).set_index("epoch")["train/loss_epoch"]
    assert list(epochs.index) == [0, 1, 2, 3]
    assert epochs.iloc[-1] < epochs.iloc[0]


def test_config_saved_and_wandb_offline_files_written(quickstart_run):
    root, log_dir = quickstart_run["root"], quickstart_run["log_dir"]
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["net"]["class_path"] == "bus_mtl.models.SharedEncoder"
    # The split is recorded beside the config, and it is the split the run trained on.
    from bus_mtl.data import Split

    split = Split.load(log_dir / "split.json")
    assert split.seed == saved["data"]["seed"]
    fold = split.folds[saved["data"]["fold"]]
    assert fold["train"] and fold["test"] and not set(fold["train"]) & set(fold["test"])
    (run_dir,) = root.glob("wandb/offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    content = run_file.read_bytes()
    # The resolved config went into the run config; metrics and images were logged.
    assert b"val_fraction" in content and b"init_filters" in content
    assert b"val/dice" in content
    media = list(run_dir.glob("files/media/images/val/*.png"))
    assert any("overlays" in p.name for p in media) and any("roc" in p.name for p in media)


def test_cli_checkpoint_rebuilds_with_load_net(quickstart_run):
    last = quickstart_run["log_dir"] / "checkpoints" / "last.ckpt"
    net, meta = load_net(last)
    assert meta["variant"] == "shared_encoder"
    # From the CLI config: YAML init args plus the linked in_channels / num_classes.
    assert meta["net_init_args"]["init_filters"] == 8
    assert meta["net_init_args"]["in_channels"] == 1
    assert meta["net_init_args"]["num_classes"] == 1
    assert meta["temperature"] > 0 and meta["image_size"] == 64


def test_cli_checkpoint_hparams_hold_the_net_record_and_reload(quickstart_run):
    """Under the CLI too, hyper_parameters["net"] is the net's own record (the one the
    metadata holds, linked in_channels included); the other sub-configs stay for
    ``MultiTaskModule.load_from_checkpoint``, which rebuilds the net like ``load_net``."""
    import torch

    from bus_mtl.training import MultiTaskModule

    last = quickstart_run["log_dir"] / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    meta, hparams = checkpoint["bus_mtl"], checkpoint["hyper_parameters"]
    assert hparams["net"] == {
        "class_path": meta["net_class_path"],
        "init_args": meta["net_init_args"],
    }
    assert hparams["net"]["init_args"]["in_channels"] == 1
    assert hparams["optimizer"]["class_path"] == "torch.optim.AdamW"
    module = MultiTaskModule.load_from_checkpoint(last).eval()
    net, _ = load_net(last)
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(module.net(image).logits, net(image).logits)
    assert float(module.temperature) == pytest.approx(meta["temperature"])


def test_test_subcommand_writes_per_image_csv(quickstart_run, synthetic_root, tmp_path):
    last = quickstart_run["log_dir"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "test_predictions.csv"  # no logger: PerImagePredictions writes here
    code = main(
        [
            "test",
            "--config",
            str(EXPERIMENTS / "quickstart.yaml"),
            *tiny_data_args(synthetic_root),
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--ckpt_path={last}",
        ]
    )
    assert code == 0
    rows = pd.read_csv(out)
    assert len(rows) == 8 and rows["dice"].between(0, 1).all()


def test_resume_version_finds_the_run_to_continue(tmp_path):
    for n in (0, 1, 2):
        (tmp_path / "Net" / f"version_{n}" / "checkpoints").mkdir(parents=True)
    (tmp_path / "Net" / "version_1" / "checkpoints" / "last.ckpt").touch()
    assert resume_version(tmp_path, "Net", "last") == 1
    assert resume_version(tmp_path, "Net", None) is None
    explicit = tmp_path / "Net" / "version_2" / "checkpoints" / "best.ckpt"
    assert resume_version(tmp_path, "Net", str(explicit)) == 2
    assert resume_version(tmp_path, "Other", "last") is None
    assert resume_version(tmp_path, "Net", str(tmp_path / "elsewhere.ckpt")) is None
