"""EMA of the weights: the average is the formula's, it is what validation, checkpoints,
calibration and a rebuilt net see, and the raw weights survive for resuming."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from bus_mtl.models import SharedEncoder
from bus_mtl.models.rebuild import load_checkpoint, load_net
from bus_mtl.training.calibration import TemperatureCalibration, collect_logits, fit_temperature
from bus_mtl.training.ema import EMA, ema_decay_at
from bus_mtl.training.module import MultiTaskModule
from tests.training.test_module import make_datamodule, make_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_decay_warms_up_to_its_cap():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.9, 1000) == 0.9
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="start_step"):
        EMA(start_step=-1)


class _Recorder(Callback):
    """The net's floating-point parameters after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: v.detach().clone() for k, v in pl_module.net.named_parameters()})


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, synthetic_root):
    root = tmp_path_factory.mktemp("ema")
    pl.seed_everything(3)
    module = MultiTaskModule(SharedEncoder(init_filters=8, hidden_dim=16), log_images=0)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", monitor="val/score", mode="max", save_last=True)
    recorder, ema = _Recorder(), EMA(decay=0.9)
    calibration = TemperatureCalibration()
    # EMA listed after the calibration, as a recipe's `callbacks+` puts it.
    trainer = make_trainer(root, max_epochs=2, callbacks=[ckpt, recorder, calibration, ema])
    dm = make_datamodule(synthetic_root)
    trainer.fit(module, datamodule=dm)
    return {"module": module, "trainer": trainer, "ckpt": ckpt, "dm": dm, "recorder": recorder}


def test_average_follows_the_warmed_up_formula(ema_run):
    steps = ema_run["recorder"].steps
    assert len(steps) >= 6
    expected = {k: v.clone() for k, v in steps[0].items()}
    for n, weights in enumerate(steps[1:], start=1):
        d = ema_decay_at(0.9, n)
        for k in expected:
            expected[k] += (weights[k] - expected[k]) * (1 - d)
    net = ema_run["module"].net
    for k, v in net.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], rtol=1e-5, atol=1e-6)
    # ... and not the raw weights of the last step.
    assert any(not torch.allclose(v.detach(), steps[-1][k]) for k, v in net.named_parameters())


def test_callback_moves_ahead_of_calibration_which_fits_the_average(ema_run):
    trainer, module, dm = ema_run["trainer"], ema_run["module"], ema_run["dm"]
    kinds = [type(cb) for cb in trainer.callbacks]
    assert kinds.index(EMA) < kinds.index(TemperatureCalibration)
    # The module's temperature is the one fitted on the weights it now holds (the average).
    loader = [dm.normalize_batch(b) for b in dm.val_dataloader()]
    logits, labels = collect_logits(module.net, loader, module.device)
    assert float(module.temperature) == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


def test_checkpoints_hold_the_average_and_keep_the_raw_weights(ema_run):
    module, ckpt = ema_run["module"], ema_run["ckpt"]
    last = load_checkpoint(ckpt.last_model_path)
    raw = last["current_model_state"]
    rebuilt, _ = load_net(ckpt.last_model_path)
    for k, v in module.net.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v, msg=k)
    differs = [
        k
        for k, v in module.net.state_dict().items()
        if v.is_floating_point() and not torch.allclose(raw[f"net.{k}"], v)
    ]
    assert differs, "current_model_state should hold the raw (not averaged) weights"
    assert float(last["state_dict"]["temperature"]) == pytest.approx(float(module.temperature))


def test_test_after_fit_uses_the_averaged_calibrated_checkpoint(ema_run):
    trainer, ckpt, dm = ema_run["trainer"], ema_run["ckpt"], ema_run["dm"]
    module = ema_run["module"]
    best = load_checkpoint(ckpt.best_model_path)
    result = trainer.test(module, datamodule=dm, ckpt_path="best", verbose=False)[0]
    # Lightning's WeightAveraging would have loaded current_model_state (the raw weights)
    # here, with the uncalibrated threshold of training time.
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, best["state_dict"][k], msg=k)
    assert result["test/decision_threshold"] == pytest.approx(best["bus_mtl"]["decision_threshold"])
