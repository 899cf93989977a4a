"""``MultiTaskModule(tta="hflip")``: training steps on the net alone; validation, test,
predict and the calibration on the flip average; ``tta`` in hparams and checkpoint metadata."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bus_mtl.models import FlipTTA, SharedEncoder
from bus_mtl.models.rebuild import checkpoint_tta, load_checkpoint, load_inference_net, load_net
from bus_mtl.training.calibration import TemperatureCalibration, choose_threshold, fit_temperature
from bus_mtl.training.checkpoint import build_metadata
from bus_mtl.training.losses import BCEClassLoss
from bus_mtl.training.module import MultiTaskModule
from tests.training.test_module import make_datamodule, make_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(seed: int = 0) -> tuple[MultiTaskModule, MultiTaskModule]:
    """Two modules on identical nets, one without TTA and one with (no trainer, so a class
    loss without "auto" weights)."""
    torch.manual_seed(seed)
    net = SharedEncoder(init_filters=8, hidden_dim=16)
    return (
        MultiTaskModule(copy.deepcopy(net), cls_loss=BCEClassLoss(), log_images=0),
        MultiTaskModule(copy.deepcopy(net), cls_loss=BCEClassLoss(), log_images=0, tta="hflip"),
    )


def _batch(synthetic_root, n: int = 4) -> dict:
    dm = make_datamodule(synthetic_root, batch_size=n)
    dm.setup("fit")
    return dm.normalize_batch(next(iter(dm.train_dataloader())))


@pytest.mark.filterwarnings("ignore:.*self.log")  # no trainer: nothing is logged
def test_tta_changes_evaluation_not_training(synthetic_root):
    plain, tta = _pair()
    batch = _batch(synthetic_root)
    losses = []
    with torch.no_grad():
        for m in (plain, tta):
            torch.manual_seed(1)  # the same dropout draws
            losses.append(m.train().training_step(batch, 0))
    assert torch.equal(losses[0], losses[1])  # training never sees the mirror
    # Both took the same BatchNorm statistics: the nets are still identical.
    for a, b in zip(plain.net.state_dict().values(), tta.net.state_dict().values()):
        assert torch.equal(a, b)
    for m in (plain, tta):
        m.eval()
    with torch.no_grad():
        val = [m.validation_step(batch, 0) for m in (plain, tta)]
        rows = [m.test_step(batch, 0) for m in (plain, tta)]
        pred = [m.predict_step(batch, 0) for m in (plain, tta)]
        wrapped = FlipTTA(tta.net)(batch["image"])
    assert not torch.allclose(val[0]["mask_prob"], val[1]["mask_prob"])
    # Every evaluation of the TTA module is the wrapper's output.
    torch.testing.assert_close(val[1]["mask_prob"], torch.sigmoid(wrapped.mask))
    prob = torch.sigmoid(wrapped.logits[:, 0])
    torch.testing.assert_close(val[1]["prob"], prob)
    torch.testing.assert_close(rows[1]["prob"], prob)  # the PerImagePredictions rows
    torch.testing.assert_close(pred[1]["prob"], prob)
    torch.testing.assert_close(pred[1]["mask_prob"], torch.sigmoid(wrapped.mask))
    assert isinstance(tta.eval_net(), FlipTTA) and plain.eval_net() is plain.net


def test_tta_argument_is_checked_and_recorded():
    with pytest.raises(ValueError, match=r"got 'flip'.*tta='hflip'"):
        MultiTaskModule(SharedEncoder(init_filters=8, hidden_dim=16), tta="flip")
    with pytest.raises(ValueError, match="bare net and tta='hflip'"):
        MultiTaskModule(FlipTTA(SharedEncoder(init_filters=8, hidden_dim=16)))
    plain, tta = _pair()
    assert plain.hparams["tta"] == "none" and tta.hparams["tta"] == "hflip"
    assert build_metadata(tta, None)["tta"] == "hflip"
    assert build_metadata(plain, None)["tta"] == "none"


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory, synthetic_root):
    """One epoch with ``tta="hflip"``, calibrated, with a last checkpoint."""
    root = tmp_path_factory.mktemp("tta_fit")
    pl.seed_everything(7)
    module = MultiTaskModule(SharedEncoder(init_filters=8, hidden_dim=16), tta="hflip")
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    # One training step is enough: the point is what the calibration is fitted on.
    trainer = make_trainer(root, callbacks=[ckpt, TemperatureCalibration()], limit_train_batches=1)
    dm = make_datamodule(synthetic_root)
    trainer.fit(module, datamodule=dm)
    return {"module": module, "dm": dm, "path": ckpt.last_model_path, "root": root}


def test_calibration_fits_on_the_tta_logits(tta_run):
    module, dm = tta_run["module"], tta_run["dm"]
    module.eval()
    with torch.no_grad():
        batches = [dm.normalize_batch(b) for b in dm.val_dataloader()]
        labels = torch.cat([b["label"] for b in batches])
        flipped = torch.cat([FlipTTA(module.net)(b["image"]).logits for b in batches])
        bare = torch.cat([module.net(b["image"]).logits for b in batches])
    t = fit_temperature(flipped, labels)
    assert float(module.temperature) == pytest.approx(t, rel=1e-5)
    assert fit_temperature(bare, labels) != pytest.approx(t, rel=1e-5)  # the test can tell
    expected = choose_threshold(
        torch.sigmoid(flipped[:, 0].double() / t), labels, "youden_binormal"
    )
    assert float(module.decision_threshold) == pytest.approx(expected, rel=1e-5)
    # The checkpoint's values were fitted on the TTA logits of its own weights (the last
    # checkpoint holds the current ones).
    meta = load_checkpoint(tta_run["path"])["bus_mtl"]
    assert meta["temperature"] == pytest.approx(t, rel=1e-5)
    assert meta["decision_threshold"] == pytest.approx(expected, rel=1e-5)


def test_tta_round_trips_through_the_checkpoint(tta_run, tmp_path):
    path = tta_run["path"]
    checkpoint = load_checkpoint(path)
    assert checkpoint["bus_mtl"]["tta"] == "hflip" == checkpoint["hyper_parameters"]["tta"]
    # Same state_dict keys as without TTA: the wrapper is never part of the module tree.
    assert all(k.startswith(("net.", "weighting.", "metrics.", "orig_size_metrics.",
                             "temperature", "decision_threshold", "seg_loss.", "cls_loss."))
               for k in checkpoint["state_dict"])  # fmt: skip
    assert not any(k.startswith("net.net.") for k in checkpoint["state_dict"])
    bare, _ = load_net(path)
    evaluated, meta = load_inference_net(path)
    assert not isinstance(bare, FlipTTA) and isinstance(evaluated, FlipTTA)
    assert not evaluated.training and checkpoint_tta(meta) == "hflip"
    assert MultiTaskModule.load_from_checkpoint(path).tta == "hflip"

    # A checkpoint from before TTA (no key anywhere) was evaluated on the net alone.
    del checkpoint["bus_mtl"]["tta"], checkpoint["hyper_parameters"]["tta"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    net, meta = load_inference_net(old)
    assert not isinstance(net, FlipTTA) and checkpoint_tta(meta) == "none"
    assert MultiTaskModule.load_from_checkpoint(old).tta == "none"

    checkpoint["bus_mtl"]["tta"] = "rot90"
    bad = tmp_path / "bad.ckpt"
    torch.save(checkpoint, bad)
    with pytest.raises(ValueError, match=r"bad.ckpt.*\['tta'\].*got 'rot90'"):
        load_inference_net(bad)


def test_a_tta_checkpoint_also_carries_its_single_pass_operating_point(tta_run, tmp_path):
    """The single pass of a TTA checkpoint (half the latency when deployed) gets its own
    temperature and threshold, fitted on the bare net's validation logits."""
    module, dm = tta_run["module"], tta_run["dm"]
    module.eval()
    with torch.no_grad():
        batches = [dm.normalize_batch(b) for b in dm.val_dataloader()]
        labels = torch.cat([b["label"] for b in batches])
        bare = torch.cat([module.net(b["image"]).logits for b in batches])
    t_bare = fit_temperature(bare, labels)
    th_bare = choose_threshold(
        torch.sigmoid(bare[:, 0].double() / t_bare), labels, "youden_binormal"
    )
    path = tta_run["path"]
    meta = load_checkpoint(path)["bus_mtl"]
    points = meta["operating_points"]
    assert sorted(points) == ["hflip", "none"]
    assert points["hflip"]["temperature"] == meta["temperature"]  # the own mode = top level
    assert points["none"]["temperature"] == pytest.approx(t_bare, rel=1e-5)
    assert points["none"]["decision_threshold"] == pytest.approx(th_bare, rel=1e-5)
    assert points["none"]["threshold_rule"] == "youden_binormal"
    assert points["none"]["temperature"] != pytest.approx(meta["temperature"], rel=1e-5)
    assert module.operating_points["none"]["temperature"] == pytest.approx(t_bare, rel=1e-5)

    single, single_meta = load_inference_net(path, tta="none")
    assert not isinstance(single, FlipTTA) and single_meta["tta"] == "none"
    assert single_meta["temperature"] == pytest.approx(t_bare, rel=1e-5)
    assert single_meta["decision_threshold"] == pytest.approx(th_bare, rel=1e-5)
    own, own_meta = load_inference_net(path, tta="hflip")
    assert isinstance(own, FlipTTA) and own_meta["temperature"] == meta["temperature"]
    # Reloaded modules keep them, so a checkpoint they save again does too.
    reloaded = MultiTaskModule.load_from_checkpoint(path)
    assert reloaded.operating_points == points
    assert build_metadata(reloaded, None)["operating_points"] == points

    # A checkpoint calibrated for its own mode only cannot make up another one.
    checkpoint = load_checkpoint(path)
    del checkpoint["bus_mtl"]["operating_points"]
    old = tmp_path / "own_only.ckpt"
    torch.save(checkpoint, old)
    with pytest.raises(ValueError, match=r"own_only.ckpt.*\['hflip'\] only, not 'none'"):
        load_inference_net(old, tta="none")
    with pytest.raises(ValueError, match=r"got 'rot90'"):
        load_inference_net(path, tta="rot90")
