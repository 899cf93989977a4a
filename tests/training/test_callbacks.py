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
from bus_mtl.models.rebuild import load_checkpoint
from bus_mtl.training.calibration import (
    TemperatureCalibration,
    brier_skill_score,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
)
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
    with pytest.raises(ValueError, match="threshold_rule"):
        TemperatureCalibration(threshold_rule="f1")
    with pytest.raises(ValueError, match="target_sensitivity"):
        TemperatureCalibration(threshold_rule="sensitivity", target_sensitivity=0.0)
    with pytest.raises(ValueError, match="num_images"):
        ValidationImages(num_images=-1)


def test_youden_threshold_by_hand():
    # Sorted probabilities with labels: the cut between 0.6 and 0.4 separates perfectly.
    probs = torch.tensor([0.9, 0.8, 0.6, 0.4, 0.3, 0.1])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    t = choose_threshold(probs, labels, "youden")
    assert t == pytest.approx(0.5)  # half-way between 0.6 and 0.4
    predicted = (probs > t).long()
    assert torch.equal(predicted, labels)
    # One malignant image below a benign one: J is maximal at the cut 0.6 | 0.5.
    probs = torch.tensor([0.9, 0.6, 0.5, 0.3, 0.2, 0.1])
    labels = torch.tensor([1, 1, 0, 1, 0, 0])
    assert choose_threshold(probs, labels, "youden") == pytest.approx(0.55)
    # Unlabelled entries are ignored; one class alone gives the default.
    assert choose_threshold(probs, torch.tensor([1, 1, 1, -1, 1, 1]), "youden", default=0.3) == 0.3
    assert choose_threshold(probs, labels, "fixed", default=0.4) == 0.4


def test_sensitivity_target_threshold():
    probs = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    labels = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    # Sensitivity 3/4 is reached at 0.6, 4/4 only at 0.3: a 0.9 target needs 0.3.
    t = choose_threshold(probs, labels, "sensitivity", target_sensitivity=0.9)
    assert t == pytest.approx(0.25)
    sens = ((probs > t) & (labels == 1)).sum() / (labels == 1).sum()
    assert float(sens) >= 0.9
    t75 = choose_threshold(probs, labels, "sensitivity", target_sensitivity=0.75)
    assert t75 == pytest.approx(0.55)


def test_brier_skill_score_says_no_skill():
    labels = torch.tensor([1, 0, 0, 0])
    prevalence = torch.full((4,), 0.25)
    assert brier_skill_score(prevalence, labels) == pytest.approx(0.0, abs=1e-12)
    assert brier_skill_score(labels.float(), labels) == pytest.approx(1.0)
    assert brier_skill_score(1 - labels.float(), labels) < 0


def test_constant_logits_and_bound_temperatures_are_flagged():
    warn = TemperatureCalibration.warnings_for
    collapsed = {"temperature": 0.21, "logit_std": 1e-3, "brier_skill": 0.0}
    text = " ".join(warn(collapsed))
    assert "near) constant" in text and "no better than predicting" in text
    at_bound = {"temperature": float(np.exp(-3.0)), "logit_std": 2.0, "brier_skill": 0.4}
    assert any("bound" in w for w in warn(at_bound))
    healthy = {"temperature": 1.3, "logit_std": 2.0, "brier_skill": 0.4}
    assert warn(healthy) == []


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, synthetic_root):
    root = tmp_path_factory.mktemp("calibrated")
    pl.seed_everything(5)
    net = SharedEncoder(init_filters=8, hidden_dim=16)
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
        batches = [dm.normalize_batch(b) for b in dm.val_dataloader()]
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
    for key in (
        "val/ece_calibrated",
        "val/temperature",
        "val/decision_threshold",
        "val/brier_skill",
        "val/logit_std",
    ):
        assert key in text, key


def test_decision_threshold_goes_into_checkpoints_and_test_metrics(calibrated_run):
    module, ckpt, dm = calibrated_run["module"], calibrated_run["ckpt"], calibrated_run["dm"]
    # Youden's J (binormal, the default) on the validation part's calibrated probabilities,
    # for the current weights.
    module.eval()
    with torch.no_grad():
        batches = [dm.normalize_batch(b) for b in dm.val_dataloader()]
        logits = torch.cat([module.net(b["image"]).logits for b in batches])
        labels = torch.cat([b["label"] for b in batches])
    probs = torch.sigmoid(logits[:, 0] / module.temperature)
    expected = choose_threshold(probs, labels, "youden_binormal")
    assert float(module.decision_threshold) == pytest.approx(expected, rel=1e-5)
    assert module.threshold_rule == "youden_binormal"
    for path in (ckpt.last_model_path, ckpt.best_model_path):
        meta = load_checkpoint(path)["bus_mtl"]
        assert meta["threshold_rule"] == "youden_binormal"
        assert 0 < meta["decision_threshold"] < 1
        assert "brier_skill" in meta["calibration"]
        state = load_checkpoint(path)["state_dict"]
        assert float(state["decision_threshold"]) == pytest.approx(meta["decision_threshold"])
    # The module's training-part class counts resolved its pos_weight.
    n_benign, n_malignant = module.class_counts
    assert module.cls_loss.resolved_pos_weight == pytest.approx(n_benign / n_malignant)
    # Test metrics are taken at the stored threshold, and say so.
    module.decision_threshold.fill_(0.999)  # "nothing is malignant"
    result = calibrated_run["trainer"].test(module, datamodule=dm, verbose=False)[0]
    assert result["test/decision_threshold"] == pytest.approx(0.999)
    assert result["test/sensitivity"] == 0.0 and result["test/specificity"] == 1.0


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


def test_a_later_calibration_callback_supersedes_an_earlier_one():
    """A recipe appends its own TemperatureCalibration (trainer.callbacks+) after the shared
    list's: only the last one fits the operating point."""
    from types import SimpleNamespace

    first = TemperatureCalibration()
    second = TemperatureCalibration(threshold_rule="sensitivity_binormal", target_sensitivity=0.85)
    trainer = SimpleNamespace(callbacks=[first, ModelCheckpoint(), second], fast_dev_run=False)
    assert first._superseded(trainer) and not second._superseded(trainer)
    # The superseded one returns before touching the module (this stand-in has nothing to fit).
    first.on_train_end(trainer, SimpleNamespace(has_cls=True))
    with pytest.raises(AttributeError):
        second.on_train_end(trainer, SimpleNamespace(has_cls=True))
    alone = SimpleNamespace(callbacks=[first], fast_dev_run=False)
    assert not first._superseded(alone)
