"""A checkpoint trained with ``data.resize: letterbox``, end to end: its metadata carries the
mode, its test metrics undo the padding, and export, the ONNX Predictor, the PyTorch
predictor and batch prediction all letterbox without being told; old metadata is squash."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from scipy.special import expit

from bus_mtl.data.io import fit_to_square, from_square, read_image
from tests.short_fit import short_trainer

IMAGE_SIZE = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def letterbox_run(tmp_path_factory: pytest.TempPathFactory, nonsquare_root: Path):
    """One training step of a small net on non-square images with ``resize="letterbox"``,
    its test stage (per-image CSV) and its checkpoint."""

    from lightning.pytorch import seed_everything

    from bus_mtl.data import BUSDataModule, ManifestSource
    from bus_mtl.models import create
    from bus_mtl.training import MultiTaskModule
    from bus_mtl.training.callbacks import PerImagePredictions

    root = tmp_path_factory.mktemp("letterbox_run")
    dm = BUSDataModule(
        ManifestSource(nonsquare_root / "manifest.csv", centre="nonsquare"),
        n_folds=2,
        image_size=IMAGE_SIZE,
        batch_size=4,
        augmentation="none",
        dup_threshold=-1,
        cache_dir=str(root / "cache"),
        seed=0,
        resize="letterbox",
    )
    # Every generator seeded (weights, batch order): the check below needs a net whose masks
    # differ between the two geometries, whatever tests ran before in this process.
    seed_everything(0, verbose=False)
    module = MultiTaskModule(create("seg_features_effnet", init_filters=8), log_images=0)
    trainer = short_trainer(
        root, max_steps=1, callbacks=[PerImagePredictions(str(root / "test_predictions.csv"))]
    )
    trainer.fit(module, datamodule=dm)
    ckpt = root / "letterbox.ckpt"
    trainer.save_checkpoint(ckpt)
    trainer.test(module, datamodule=dm)
    return SimpleNamespace(dm=dm, module=module, ckpt=ckpt, rows=root / "test_predictions.csv")


@pytest.fixture(scope="module")
def letterbox_onnx(tmp_path_factory: pytest.TempPathFactory, letterbox_run) -> Path:
    from bus_mtl.inference.export import export_checkpoint

    out = tmp_path_factory.mktemp("letterbox_export") / "letterbox.onnx"
    export_checkpoint(letterbox_run.ckpt, "onnx", out)
    return out


def _rewrite_meta(ckpt: Path, out: Path, **changes) -> Path:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if value is None:
            checkpoint["bus_mtl"].pop(key, None)
        else:
            checkpoint["bus_mtl"][key] = value
    torch.save(checkpoint, out)
    return out


def test_checkpoint_records_letterbox(letterbox_run):
    from bus_mtl.models.rebuild import load_net

    checkpoint = torch.load(letterbox_run.ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["bus_mtl"]["resize"] == "letterbox"
    assert checkpoint["bus_mtl"]["image_size"] == IMAGE_SIZE
    assert load_net(letterbox_run.ckpt)[1]["resize"] == "letterbox"


def test_test_metrics_undo_the_letterbox(letterbox_run):
    """The test stage's original-size Dice is that of the letterboxed logits cropped and
    resized back, not read as a squash."""
    from bus_mtl.training.metrics import original_size_seg_metrics

    dm, module = letterbox_run.dm, letterbox_run.module.eval()
    expected, as_squash = {}, {}
    with torch.no_grad():
        for raw in dm.test_dataloader():
            batch = dm.normalize_batch(raw)
            logits = module(batch["image"], tta=True).mask
            for mode, store in (("letterbox", expected), ("squash", as_squash)):
                dice = original_size_seg_metrics(logits, batch["orig_mask"], resize=mode)["dice"]
                store.update(zip(batch["id"], dice.tolist()))
    with open(letterbox_run.rows, newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(expected) and len(rows) == len(dm.datasets["test"])
    for sample_id, dice in expected.items():
        assert float(rows[sample_id]["dice"]) == pytest.approx(dice, abs=1e-5)
    # The check can tell the two geometries apart on these images.
    assert any(abs(expected[i] - as_squash[i]) > 1e-3 for i in expected)


def _independent_mask_prob(ckpt: Path, path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Letterbox, normalise, run the PyTorch net, crop and resize back, by hand."""
    from bus_mtl.models.rebuild import load_inference_net

    net, meta = load_inference_net(ckpt)
    gray = read_image(path)
    norm = meta["normalization"]
    out = {}
    for mode in ("letterbox", "squash"):
        square, geometry = fit_to_square(gray, IMAGE_SIZE, mode)
        x = (square.astype(np.float32) / 255.0 - norm["mean"]) / norm["std"]
        with torch.no_grad():
            result = net(torch.from_numpy(x)[None, None].float())
        prob = expit(result.mask[0, 0].numpy().astype(np.float64)).astype(np.float32)
        out[mode] = (from_square(prob, geometry), float(result.logits[0, 0]))
    return out["letterbox"][0], out["squash"][0], out["letterbox"][1]


def test_onnx_predictor_letterboxes_from_metadata(letterbox_run, letterbox_onnx, odd_images):
    from bus_mtl.inference.predictor import Predictor

    predictor = Predictor(letterbox_onnx)
    assert predictor.info.resize == "letterbox"
    sidecar = json.loads(letterbox_onnx.with_suffix(".json").read_text())
    assert sidecar["resize"] == "letterbox"
    path = odd_images["gray"]
    h, w = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
    result = predictor.predict(path)
    assert result.mask_prob.shape == (h, w) and result.mask.shape == (h, w)
    expected, squashed, logit = _independent_mask_prob(letterbox_run.ckpt, path)
    np.testing.assert_allclose(result.mask_prob, expected, atol=1e-4)
    assert np.abs(result.mask_prob - squashed).max() > 1e-3  # the mode made a difference
    temperature = predictor.info.temperature
    assert result.probability == pytest.approx(float(expit(logit / temperature)), abs=1e-4)


def test_torch_predictor_and_batch_prediction_letterbox(
    letterbox_run, letterbox_onnx, odd_images, tmp_path
):
    from bus_mtl.inference.predict import predict_files
    from bus_mtl.inference.predictor import Predictor
    from bus_mtl.inference.torch_predictor import TorchPredictor

    eager = TorchPredictor.from_checkpoint(letterbox_run.ckpt)
    assert eager.info.resize == "letterbox"
    deployed = Predictor(letterbox_onnx)
    path = odd_images["rgba"]  # 70×45: taller than wide
    a, b = eager.predict(path), deployed.predict(path)
    assert a.mask_prob.shape == (70, 45)
    np.testing.assert_allclose(a.mask_prob, b.mask_prob, atol=1e-4)
    summary = predict_files(deployed, [path], tmp_path / "out", progress=False)
    assert not summary.failed
    written = cv2.imread(str(tmp_path / "out" / "masks" / f"{path.stem}.png"), 0)
    np.testing.assert_array_equal(written > 0, b.mask > 0)


def test_old_metadata_without_resize_is_squash(letterbox_run, tmp_path):
    from bus_mtl.inference.metadata import ModelInfo
    from bus_mtl.inference.torch_predictor import TorchPredictor
    from bus_mtl.models.rebuild import load_net

    old = _rewrite_meta(letterbox_run.ckpt, tmp_path / "old.ckpt", resize=None)
    assert "resize" not in torch.load(old, weights_only=True)["bus_mtl"]
    assert load_net(old)[1]["resize"] == "squash"
    assert TorchPredictor.from_checkpoint(old).info.resize == "squash"
    exported = ModelInfo(image_size=64, resize="letterbox").to_dict()
    assert exported["resize"] == "letterbox"
    del exported["resize"]
    assert ModelInfo.from_dict(exported).resize == "squash"
    assert ModelInfo.from_json(json.dumps(exported)).resize == "squash"


def test_bad_resize_in_metadata_is_refused(letterbox_run, tmp_path):
    from bus_mtl.inference.metadata import ModelInfo
    from bus_mtl.models.rebuild import load_net

    bad = _rewrite_meta(letterbox_run.ckpt, tmp_path / "bad.ckpt", resize="pad")
    valid = r"\('squash', 'letterbox'\)"
    with pytest.raises(ValueError, match=rf"\['resize'\]: 'pad' is not one of {valid}"):
        load_net(bad)
    with pytest.raises(ValueError, match=rf"resize: 'pad' is not one of {valid}"):
        ModelInfo(image_size=64, resize="pad")
    with pytest.raises(ValueError, match="model.onnx: invalid.*resize"):
        ModelInfo.from_json(json.dumps({"image_size": 64, "resize": "pad"}), source="model.onnx")
