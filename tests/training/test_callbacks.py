"""Callbacks: temperature scaling (by hand and on checkpoints), validation images as PNG."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from bus_mtl.data import BUSDataModule, SyntheticSource
from bus_mtl.models import SharedEncoder
from bus_mtl.training.calibration import (
    TemperatureCalibration,
    expected_calibration_error,
    fit_temperature,
)
from bus_mtl.training.checkpoint import load_checkpoint
from bus_mtl.training.module import MultiTaskModule
from bus_mtl.training.visualization import ValidationImages


def test_fit_temperature_recovers_the_scale_of_overconfident_logits():
    # Labels drawn from sigmoid(z); logits handed over are 3 z: the NLL optimum is T = 3.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 1, generator=g) * 2
    labels = (torch.rand(20000, generator=g) < torch.sigmoid(z[:, 0])).long()
    t = fit_temperature(3 * z, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert expected_calibration_error(3 * z / t, labels) < expected_calibration_error(3 * z, labels)


def test_fit_temperature_three_classes_and_ignored_labels():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20000, 3, generator=g)
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]
    labels[:100] = -1  # no class label: ignored
    assert fit_temperature(0.5 * z, labels) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="no labelled"):
        fit_temperature(z[:3], torch.full((3,), -1))


def test_calibration_arguments_are_checked():
    with pytest.raises(ValueError, match="max_iter"):
        TemperatureCalibration(max_iter=0)
    with pytest.raises(ValueError, match="num_images"):
        ValidationImages(num_images=-1)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, synthetic_root):
    root = tmp_path_factory.mktemp("calibrated")
    pl.seed_everything(5)
    net = SharedEncoder(init_filters=8, hidden_dim=16)
    net.init_args = {"init_filters": 8, "hidden_dim": 16}
    module = MultiTaskModule(net, log_images=2)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", monitor="val/score", mode="max", save_last=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=CSVLogger(root, name="csv"),
        callbacks=[ckpt, TemperatureCalibration(), ValidationImages()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    dm = BUSDataModule(
        SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root),
        image_size=64,
        batch_size=6,
        n_folds=4,
        val_fraction=0.25,
    )
    trainer.fit(module, datamodule=dm)
    return {"module": module, "trainer": trainer, "ckpt": ckpt, "dm": dm}


def test_temperature_goes_into_module_and_checkpoints(calibrated_run):
    module, ckpt, dm = calibrated_run["module"], calibrated_run["ckpt"], calibrated_run["dm"]
    t = float(module.temperature)
    assert t > 0 and t != 1.0
    # The module's temperature is the NLL optimum of its own validation logits.
    module.eval()
    with torch.no_grad():
        batches = list(dm.val_dataloader())
        logits = torch.cat([module.net(b["image"]).logits for b in batches])
        labels = torch.cat([b["label"] for b in batches])
    # Fitted by minimum NLL: no worse than the raw logits on the validation set.
    nll = torch.nn.functional.binary_cross_entropy_with_logits
    assert nll(logits[:, 0] / t, labels.float()) <= nll(logits[:, 0], labels.float()) + 1e-6
    last = load_checkpoint(ckpt.last_model_path)
    t_last = last["bus_mtl"]["temperature"]
    assert t_last != 1.0 and float(last["state_dict"]["temperature"]) == pytest.approx(t_last)
    best = load_checkpoint(ckpt.best_model_path)
    t_best = best["bus_mtl"]["temperature"]
    assert t_best != 1.0 and float(best["state_dict"]["temperature"]) == pytest.approx(t_best)
    logged = calibrated_run["trainer"].logger.log_dir
    text = (Path(logged) / "metrics.csv").read_text()
    assert "val/ece_calibrated" in text and "val/temperature" in text


def test_validation_images_written_as_png_without_wandb(calibrated_run):
    out = Path(calibrated_run["trainer"].logger.log_dir) / "val_images"
    for epoch in (0, 1):
        for kind in ("overlays", "roc"):
            path = out / f"epoch{epoch:03d}_{kind}.png"
            assert path.is_file(), path
            array = np.asarray(Image.open(path))
            assert array.ndim == 3 and array.std() > 0  # a drawn figure, not a blank image
    # Two examples requested (log_images=2): two rows of two 3-inch panels.
    overlays = np.asarray(Image.open(out / "epoch000_overlays.png"))
    assert overlays.shape[0] == overlays.shape[1]
