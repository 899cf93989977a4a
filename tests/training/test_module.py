"""MultiTaskModule: logged names, single-task heads, per-image test values, predict, checkpoint
metadata and the ``load_net`` round trip, on a tiny in-process fit over the phantom set."""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from bus_mtl.data import BUSDataModule, SyntheticSource
from bus_mtl.models import EfficientNetOnly, SegResNetOnly, SharedEncoder
from bus_mtl.models.rebuild import load_checkpoint, load_net, net_config
from bus_mtl.training.callbacks import INPUT_RES_COLUMNS, PerImagePredictions
from bus_mtl.training.losses import BCEClassLoss, CrossEntropyClassLoss, DiceBCELoss
from bus_mtl.training.metrics import PREDICTION_COLUMNS
from bus_mtl.training.module import MultiTaskModule, malignancy_probability, warmup_cosine
from bus_mtl.training.weighting import UncertaintyWeighting

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SEG_METRICS = {"dice", "iou", "hd95"}
CLS_METRICS = {"auc", "acc", "sensitivity", "specificity", "f1", "balanced_acc", "ece", "brier"}


def make_datamodule(root: Path, batch_size: int = 6) -> BUSDataModule:
    return BUSDataModule(
        SyntheticSource(n=32, image_size=64, seed=0, root=root),
        image_size=64,
        batch_size=batch_size,
        n_folds=4,
        val_fraction=0.25,
        augmentation="light",
    )


def make_trainer(root: Path, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        default_root_dir=root,
        logger=CSVLogger(root, name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
        **kwargs,
    )


def tiny_net(cls=SharedEncoder, **kwargs):
    """A small variant (it records its init args itself, as every MTLNet does)."""
    if cls is not EfficientNetOnly:
        kwargs.setdefault("init_filters", 8)
    if cls is SharedEncoder:
        kwargs.setdefault("hidden_dim", 16)
    return cls(**kwargs)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, synthetic_root):
    """One epoch of SharedEncoder (both heads) + test with per-image CSV."""
    root = tmp_path_factory.mktemp("module_fit")
    pl.seed_everything(3)
    module = MultiTaskModule(tiny_net(), weighting=UncertaintyWeighting())
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", monitor="val/score", mode="max", save_last=True)
    per_image = PerImagePredictions(str(root / "per_image.csv"))
    trainer = make_trainer(root, callbacks=[ckpt, per_image])
    dm = make_datamodule(synthetic_root)
    trainer.fit(module, datamodule=dm)
    results = trainer.test(module, datamodule=dm)
    return {
        "root": root,
        "module": module,
        "trainer": trainer,
        "dm": dm,
        "ckpt": ckpt,
        "results": results[0],
        "metrics": pd.read_csv(Path(trainer.logger.log_dir) / "metrics.csv"),
    }


def test_logged_names_follow_the_contract(fitted):
    columns = set(fitted["metrics"].columns)
    for stage in ("train", "val"):
        expected = {f"{stage}/{n}" for n in SEG_METRICS | CLS_METRICS | {"score"}}
        assert expected <= columns, expected - columns
    assert {"train/loss_step", "train/loss_seg_step", "train/loss_cls_step"} <= columns
    assert {"train/w_seg", "train/w_cls", "val/loss", "val/loss_seg", "val/loss_cls"} <= columns
    expected_test = {f"test/{n}" for n in SEG_METRICS | CLS_METRICS | {"loss", "loss_seg"}}
    assert expected_test <= set(fitted["results"])


def test_uncertainty_weights_are_logged_as_exp_minus_log_var(fitted):
    # The last logged effective weight is exp(-s) of s after the step before it; the log_vars
    # were updated by that step only by an AdamW step of at most ~lr, so the weight stays ~1.
    w = fitted["metrics"]["train/w_seg"].dropna()
    assert len(w) == 3  # 18 training images / batch 6
    assert w.iloc[0] == pytest.approx(1.0)  # s = 0 at the first step
    module = fitted["module"]
    s = float(module.weighting.log_vars["seg"].detach())
    assert s != 0.0  # the weighting parameters are trained


def test_val_score_is_mean_of_dice_and_auc(fitted):
    val = fitted["metrics"].dropna(subset=["val/score"]).iloc[-1]
    assert val["val/score"] == pytest.approx((val["val/dice"] + val["val/auc"]) / 2, abs=1e-6)


def test_per_image_csv_matches_test_metrics(fitted):
    rows = pd.read_csv(fitted["root"] / "per_image.csv")
    assert list(rows.columns) == [*PREDICTION_COLUMNS, *INPUT_RES_COLUMNS]
    assert len(rows) == len(fitted["dm"].datasets["test"]) == rows["id"].nunique()
    # The contract's test/dice is the mean of the per-image Dice, at the original size; the
    # working-resolution figures are logged beside it as *_input.
    results = fitted["results"]
    assert rows["dice"].mean() == pytest.approx(results["test/dice"], abs=1e-4)
    assert rows["dice_input"].mean() == pytest.approx(results["test/dice_input"], abs=1e-4)
    assert rows["iou_input"].mean() == pytest.approx(results["test/iou_input"], abs=1e-4)
    assert set(rows["label"]) <= {0, 1}
    assert rows["prob"].between(0, 1).all()
    assert (rows["mask_area"] >= 0).all()


def test_checkpoint_metadata_and_load_net_round_trip(fitted):
    path = fitted["ckpt"].last_model_path
    meta = load_checkpoint(path)["bus_mtl"]
    dm, module = fitted["dm"], fitted["module"]
    assert meta["variant"] == "shared_encoder"
    assert meta["net_class_path"] == "bus_mtl.models.shared_encoder.SharedEncoder"
    assert meta["net_init_args"]["init_filters"] == 8
    assert meta["net_init_args"]["hidden_dim"] == 16
    assert meta["in_channels"] == 1 and meta["num_classes"] == 1
    assert meta["image_size"] == 64
    assert meta["normalization"] == dm.normalization
    assert meta["class_names"] == ["benign", "malignant"]
    assert meta["threshold"] == 0.5 and meta["temperature"] == 1.0
    # The prevalence the probabilities refer to is recorded. With this tiny set's equal class
    # counts every weighting gives 0.5; test_losses covers how the weighting moves it.
    assert type(module.cls_loss).__name__ == "BCEClassLoss" and module.cls_loss.pos_weight == "auto"
    assert meta["source_prior"] == pytest.approx(0.5)

    net, meta2 = load_net(path)
    assert meta2 == meta and not net.training
    batch = dm.normalize_batch(next(iter(dm.val_dataloader())))
    module.eval()
    with torch.no_grad():
        expected = module.net(batch["image"])
        got = net(batch["image"])
    torch.testing.assert_close(got.mask, expected.mask)
    torch.testing.assert_close(got.logits, expected.logits)


def test_load_net_rejects_a_foreign_checkpoint(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="plain.ckpt.*bus_mtl"):
        load_net(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_net(tmp_path / "missing.ckpt")


def test_hparams_and_metadata_hold_the_same_net_record(fitted):
    module = fitted["module"]
    checkpoint = load_checkpoint(fitted["ckpt"].last_model_path)  # weights_only: plain values
    meta, hparams = checkpoint["bus_mtl"], checkpoint["hyper_parameters"]
    record = {"class_path": meta["net_class_path"], "init_args": meta["net_init_args"]}
    assert hparams["net"] == record == module.net_config == net_config(module.net)
    # Outside the CLI a module instance (the weighting) or function (the default optimizer)
    # is left out: it is in the state_dict, or is code; a None default stays.
    assert "weighting" not in hparams and "optimizer" not in hparams
    assert hparams["seg_loss"] is None and hparams["cls_loss"] is None
    assert hparams["threshold"] == 0.5 and module.hparams_initial["net"] == record


def test_load_from_checkpoint_rebuilds_without_weight_sources(fitted, tmp_path):
    """``MultiTaskModule.load_from_checkpoint`` and ``load_net`` rebuild from the metadata,
    with ``pretrained`` nulled (its file is gone), also for a checkpoint of before the net
    was in the hparams."""
    checkpoint = load_checkpoint(fitted["ckpt"].last_model_path)
    checkpoint["bus_mtl"]["net_init_args"]["pretrained"] = str(tmp_path / "gone.pt")
    del checkpoint["hyper_parameters"]["net"]  # as the checkpoints of before the record
    path = tmp_path / "moved.ckpt"
    torch.save(checkpoint, path)
    # Outside the CLI the hparams hold no loss or weighting: a trained one is passed again.
    loaded = MultiTaskModule.load_from_checkpoint(path, weighting=UncertaintyWeighting())
    net, _ = load_net(path)
    dm, module = fitted["dm"], fitted["module"]
    batch = dm.normalize_batch(next(iter(dm.val_dataloader())))
    module.eval()
    loaded.eval()
    with torch.no_grad():
        expected = module.net(batch["image"])
        for got in (loaded.net(batch["image"]), net(batch["image"])):
            torch.testing.assert_close(got.logits, expected.logits)
            torch.testing.assert_close(got.mask, expected.mask)
    assert loaded.net.init_args["pretrained"] is None
    torch.testing.assert_close(loaded.temperature, module.temperature)
    torch.testing.assert_close(
        loaded.weighting.log_vars["seg"], module.weighting.log_vars["seg"].detach()
    )


def test_load_net_names_the_fix_for_a_net_without_a_record(fitted, tmp_path):
    checkpoint = load_checkpoint(fitted["ckpt"].last_model_path)
    checkpoint["bus_mtl"]["net_init_args"] = None  # a plain nn.Module's run
    path = tmp_path / "plain_net.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(
        ValueError, match=r"plain_net.ckpt.*no constructor arguments.*SharedEncoder"
    ):
        load_net(path)
    with pytest.raises(ValueError, match="load_state_dict"):
        MultiTaskModule.load_from_checkpoint(path)


def test_predict_step_applies_temperature(fitted):
    module, dm = fitted["module"], fitted["dm"]
    batch = dm.normalize_batch(next(iter(dm.val_dataloader())))
    module.eval()
    module.temperature.fill_(2.0)
    try:
        with torch.no_grad():
            out = module.predict_step(batch, 0)
            logits = module.net(batch["image"]).logits
    finally:
        module.temperature.fill_(1.0)
    assert out["id"] == list(batch["id"])
    assert out["mask_prob"].shape == batch["mask"].shape
    torch.testing.assert_close(out["prob"], torch.sigmoid(logits[:, 0] / 2.0))


def test_uint8_loader_batches_are_normalised_exactly_once(fitted):
    """The loaders yield uint8; the datamodule's device hook normalises once, giving what
    normalising in the workers gave (albumentations' Normalize after the same
    augmentation); the module refuses a raw batch rather than run on unnormalised pixels."""
    from bus_mtl.data.dataset import collate_samples, reseed_transform
    from bus_mtl.data.transforms import build_transform

    module, dm = fitted["module"], fitted["dm"]
    train = dm.datasets["train"]
    norm = dm.normalization
    old = build_transform(dm.augmentation, norm["mean"], norm["std"], seed=dm.seed)
    keys = [(i, 1000 + i) for i in range(4)]  # (index, augmentation seed), as EpochSampler
    raw = collate_samples([train[k] for k in keys])
    assert raw["image"].dtype == torch.uint8 and raw["mask"].dtype == torch.uint8
    batch = dm.on_after_batch_transfer(raw, 0)
    expected = []
    for i, seed in keys:
        image, mask = train.load_pair(i)
        reseed_transform(old, seed)
        expected.append(torch.from_numpy(old(image=image, mask=mask)["image"])[None])
    expected = torch.stack(expected)
    torch.testing.assert_close(batch["image"], expected, rtol=0, atol=1e-6)  # float32 ulps
    assert batch["mask"].dtype == torch.float32
    # Idempotent: a float batch is not normalised a second time.
    again = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(again["image"], batch["image"])
    module.eval()
    with torch.no_grad():
        got = module(batch["image"])
        want = module(expected)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.mask, want.mask)
    with pytest.raises(TypeError, match="uint8.*normalize_batch"):
        module(raw["image"])


def test_steps_and_callbacks_see_normalised_float_batches(tmp_path, synthetic_root):
    """Every Lightning path (train, val, predict steps, batch-end callbacks) gets the batch
    after the datamodule's hook: float32, normalised once."""
    seen: dict[str, list[tuple[torch.dtype, torch.dtype]]] = {}
    first_val: dict[str, object] = {}

    class Spy(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args):
            seen.setdefault("callback", []).append((batch["image"].dtype, batch["mask"].dtype))
            first_val.setdefault("id", list(batch["id"]))
            first_val.setdefault("image", batch["image"].clone())

    class Recording(MultiTaskModule):
        def _shared_step(self, batch, stage):
            seen.setdefault(stage, []).append((batch["image"].dtype, batch["mask"].dtype))
            return super()._shared_step(batch, stage)

        def predict_step(self, batch, batch_idx):
            seen.setdefault("predict", []).append((batch["image"].dtype, batch["mask"].dtype))
            return super().predict_step(batch, batch_idx)

    module = Recording(tiny_net())
    dm = make_datamodule(synthetic_root)
    trainer = make_trainer(tmp_path, callbacks=[Spy()], limit_train_batches=1)
    trainer.fit(module, datamodule=dm)
    trainer.predict(module, datamodule=dm)
    assert set(seen) == {"train", "val", "callback", "predict"}
    for stage, dtypes in seen.items():
        assert set(dtypes) == {(torch.float32, torch.float32)}, stage
    # The val batch the steps and callbacks saw is the loader's batch normalised once.
    loader_batch = next(iter(dm.val_dataloader()))
    assert loader_batch["image"].dtype == torch.uint8 and loader_batch["id"] == first_val["id"]
    norm = dm.normalization
    manual = (loader_batch["image"].double() / 255 - norm["mean"]) / norm["std"]
    torch.testing.assert_close(first_val["image"], manual.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("cls", "has_seg", "has_cls"),
    [(SegResNetOnly, True, False), (EfficientNetOnly, False, True)],
)
def test_single_task_nets_log_only_their_head(tmp_path, synthetic_root, cls, has_seg, has_cls):
    pl.seed_everything(0)
    module = MultiTaskModule(tiny_net(cls))
    assert (module.seg_loss is not None) == has_seg
    assert (module.cls_loss is not None) == has_cls
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, datamodule=make_datamodule(synthetic_root))
    logged = set(trainer.callback_metrics)
    assert ("val/dice" in logged) == has_seg
    assert ("val/auc" in logged) == has_cls
    assert ("val/loss_seg" in logged) == has_seg
    assert ("val/loss_cls" in logged) == has_cls
    assert "val/score" in logged
    assert ("train/w_cls" in logged) == has_cls


def test_default_losses_follow_num_classes():
    assert isinstance(MultiTaskModule(tiny_net()).cls_loss, BCEClassLoss)
    three = MultiTaskModule(tiny_net(num_classes=3))
    assert isinstance(three.cls_loss, CrossEntropyClassLoss)
    assert isinstance(three.seg_loss, DiceBCELoss)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="threshold"):
        MultiTaskModule(tiny_net(), threshold=1.5)
    with pytest.raises(ValueError, match="warmup_epochs"):
        MultiTaskModule(tiny_net(), warmup_epochs=-1)


def test_net_config_is_the_record_the_net_made_of_its_constructor_call():
    net = EfficientNetOnly(model_name="efficientnet-b1")
    config = net_config(net)  # every parameter, defaults included, as the call bound them
    assert config["class_path"] == "bus_mtl.models.efficientnet.EfficientNetOnly"
    assert config["init_args"] == net.init_args
    assert config["init_args"]["model_name"] == "efficientnet-b1"
    assert config["init_args"]["pretrained"] is None
    assert {"in_channels", "num_classes"} <= set(config["init_args"])


class _Hidden(torch.nn.Module):
    has_seg = False

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(width, 1)  # width not stored anywhere

    def forward(self, x):  # pragma: no cover - never run
        return self.layer(x)


def test_a_plain_module_is_named_with_the_fix_not_guessed():
    with pytest.raises(ValueError, match=r"_Hidden records no constructor arguments.*MTLNet"):
        net_config(_Hidden(width=8))
    # MultiTaskModule still trains it, and says its checkpoints will not rebuild.
    with pytest.warns(UserWarning, match="will not rebuild with load_net"):
        module = MultiTaskModule(_Hidden(width=8))
    assert module.net_config is None and module.hparams["net"] is None
    # Set by hand, init_args is the record like any MTLNet's.
    hidden = _Hidden(width=8)
    hidden.init_args = {"width": 8}
    assert net_config(hidden)["init_args"] == {"width": 8}


def test_warmup_cosine_schedule_by_hand():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)  # warmup starts at 1 %
    assert lrs[1] == pytest.approx(0.01 + 0.99 / 2)
    assert lrs[2] == pytest.approx(1.0)  # cosine from the peak
    # cos decay: step 2 + k of 8 -> 0.5 (1 + cos(pi k / 8))
    assert lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_malignancy_probability_for_one_and_three_logits():
    logit = torch.tensor([[0.0], [2.0]])
    torch.testing.assert_close(malignancy_probability(logit), torch.sigmoid(logit[:, 0]))
    three = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0]])
    torch.testing.assert_close(malignancy_probability(three), torch.tensor([1 / 3, 0.5]))


def test_stage_metrics_are_prefixed_clones_per_head():
    """One collection per stage (keys ``{stage}/...``), members only for the heads the net
    has, HD95 off for training; an epoch logs only the members that saw an update."""
    from bus_mtl.training.metrics import BINARY_METRICS
    from bus_mtl.training.module import _compute_and_reset

    module = MultiTaskModule(tiny_net())
    stages = {stage: module.stage_metrics(stage) for stage in ("train", "val", "test")}
    assert len({id(m["seg"]) for m in stages.values()}) == 3  # clones, not one shared metric
    assert [m.prefix for m in stages.values()] == ["train/", "val/", "test/"]
    assert not stages["train"]["seg"].with_hd95
    assert stages["val"]["seg"].with_hd95 and stages["test"]["seg"].with_hd95
    assert module.orig_size_metrics.prefix == "test/"
    # Metric states stay out of checkpoints (a checkpoint holds the weights, never a
    # half-accumulated epoch).
    assert not [k for k in module.state_dict() if "metrics." in k]
    val = stages["val"]
    val["cls"].update(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0]))
    values = _compute_and_reset(val)  # the mask head saw nothing: no NaN val/dice
    assert set(values) == {f"val/{k}" for k in BINARY_METRICS}
    assert not val["cls"].update_called and _compute_and_reset(val) == {}
    with pytest.raises(ValueError, match="'fit'"):
        module.stage_metrics("fit")
    cls_only = MultiTaskModule(tiny_net(EfficientNetOnly))
    assert set(cls_only.stage_metrics("val").keys(keep_base=True)) == {"cls"}
    assert cls_only.orig_size_metrics is None
    seg_only = MultiTaskModule(tiny_net(SegResNetOnly))
    assert set(seg_only.stage_metrics("test").keys(keep_base=True)) == {"seg"}


def test_lr_scales_give_parameter_groups_their_own_rate():
    from bus_mtl.models import SegResNetEffNetFeatures

    net = SegResNetEffNetFeatures(init_filters=8, model_name="efficientnet-lite0")
    module = MultiTaskModule(
        net,
        optimizer=lambda params: torch.optim.AdamW(params, lr=4e-3),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1),
        lr_scales={"net.effnet": 0.25, "net.effnet._fc": 1.0},
    )
    groups = module.param_groups()
    by_scale = {g.get("lr_scale", 1.0): g["params"] for g in groups}
    effnet = {id(p) for n, p in net.named_parameters() if n.startswith("effnet.")}
    fc = {id(p) for n, p in net.named_parameters() if n.startswith("effnet._fc.")}
    # The longest prefix wins: the classifier's new FC keeps the full rate.
    assert {id(p) for p in by_scale[0.25]} == effnet - fc
    assert {id(p) for p in by_scale[1.0] if id(p) in fc} == fc
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = {g.get("lr_scale", 1.0): g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({0.25: 1e-3, 1.0: 4e-3})
    assert sorted(scheduler.base_lrs) == pytest.approx([1e-3, 4e-3, 4e-3])  # scaled before it

    with pytest.raises(ValueError, match=r"lr_scales\['net.effnet'\] must be a number > 0, got 0"):
        MultiTaskModule(net, lr_scales={"net.effnet": 0})
    with pytest.raises(
        ValueError, match="parameter-name prefixes such as 'net.effnet', got 'net.'"
    ):
        MultiTaskModule(net, lr_scales={"net.": 0.5})
    typo = MultiTaskModule(net, lr_scales={"net.efnet": 0.5})
    with pytest.raises(ValueError, match=r"under \['net.efnet'\].*'net.effnet'"):
        typo.param_groups()
