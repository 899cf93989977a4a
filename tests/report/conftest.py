"""A small real ``bus-mtl main``-like run folder, built once: a tiny net trained 1 epoch on
the synthetic set with the run's own callbacks (CSV logger, ``best-*.ckpt``,
``PerImagePredictions``), its ``config.yaml`` data section and ``split.json``, and a
``bus-mtl evaluate`` of its checkpoint on a two-centre manifest in ``external_ext/``."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import cv2
import pytest
import torch
import yaml

N_EXTERNAL = 16
TEMPERATURE = 0.25  # stored in the checkpoint: spreads the tiny net's probabilities


def _external_manifest(root: Path) -> Path:
    """16 phantoms (8 malignant), non-square, two centres (``north``, ``south``), patient
    groups of two images."""
    from bus_mtl.data import make_phantom

    root.mkdir(parents=True)
    rows = []
    for i in range(N_EXTERNAL):
        image, mask, label = make_phantom(i, seed=7, size=64)
        h, w = (72, 96) if i % 2 else (96, 80)
        cv2.imwrite(str(root / f"case{i:02d}.png"), cv2.resize(image, (w, h)))
        cv2.imwrite(
            str(root / f"case{i:02d}_mask.png"),
            cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) * 255,
        )
        centre = "north" if i < N_EXTERNAL // 2 else "south"
        label_name = ("benign", "malignant")[label]
        rows.append([f"case{i:02d}.png", f"case{i:02d}_mask.png", label_name, centre, f"p{i // 2}"])
    path = root / "manifest.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mask", "label", "centre", "group"])
        writer.writerows(rows)
    return path


def _store_operating_point(ckpt: Path, manifest: Path) -> None:
    """Store ``TEMPERATURE`` and, as the decision threshold, the midpoint of the external
    set's two middle probabilities, so that both calls (and both errors) occur."""
    from bus_mtl.data import ManifestSource
    from bus_mtl.inference.torch_predictor import TorchPredictor

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["bus_mtl"]["temperature"] = TEMPERATURE
    checkpoint["state_dict"]["temperature"] = torch.tensor(TEMPERATURE)
    torch.save(checkpoint, ckpt)
    predictor = TorchPredictor.from_checkpoint(ckpt)
    probs = sorted(
        predictor.predict(s.image).probability for s in ManifestSource(manifest).samples()
    )
    middle = (probs[N_EXTERNAL // 2 - 1] + probs[N_EXTERNAL // 2]) / 2
    checkpoint["bus_mtl"]["decision_threshold"] = middle
    checkpoint["state_dict"]["decision_threshold"] = torch.tensor(middle)
    torch.save(checkpoint, ckpt)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """``<root>/SharedEncoder/version_0``: metrics.csv (with test/*), test_predictions.csv,
    checkpoints/best-epoch=000.ckpt, config.yaml, split.json, external_ext/."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from bus_mtl.cli.main import main as bus_mtl
    from bus_mtl.data import BUSDataModule, SyntheticSource
    from bus_mtl.models import create
    from bus_mtl.training import MultiTaskModule
    from bus_mtl.training.callbacks import PerImagePredictions

    root = tmp_path_factory.mktemp("report_run")
    manifest = _external_manifest(root / "external")
    source = {"n": 32, "image_size": 64, "seed": 0, "root": str(synthetic_root)}
    data = {"n_folds": 4, "fold": 0, "image_size": 64, "batch_size": 8, "seed": 0}
    dm = BUSDataModule(
        SyntheticSource(**source),
        augmentation="none",
        cache_dir=str(root / "cache"),
        **data,
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        module = MultiTaskModule(
            create("shared_encoder", init_filters=8, hidden_dim=16), log_images=0
        )
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=1,
            logger=CSVLogger(str(root), name="SharedEncoder"),
            callbacks=[
                ModelCheckpoint(filename="best-{epoch:03d}", monitor="val/score", mode="max"),
                PerImagePredictions(),
            ],
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        trainer.fit(module, datamodule=dm)
        best = Path(trainer.checkpoint_callback.best_model_path)
        _store_operating_point(best, manifest)
        trainer.test(module, datamodule=dm, ckpt_path=str(best))
    finally:
        torch.set_num_threads(previous)
    folder = Path(trainer.log_dir)
    dm.split.save(folder / "split.json")
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
        "model": {"net": {"class_path": "bus_mtl.models.SharedEncoder"}, "tta": "none"},
        "data": {
            "sources": {"class_path": "bus_mtl.data.SyntheticSource", "init_args": source},
            "augmentation": "none",
            "cache_dir": str(root / "cache"),
            **data,
        },
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with contextlib.redirect_stdout(io.StringIO()):
        code = bus_mtl(
            ["evaluate", "--ckpt", str(best), "--manifest", str(manifest)]
            + ["--out", str(folder / "external_ext"), "--n-boot", "300", "--no-progress"]
        )
    assert code == 0
    return folder


@pytest.fixture(scope="session")
def eval_dir(run_dir: Path) -> Path:
    """The ``bus-mtl evaluate`` output inside :func:`run_dir`."""
    return run_dir / "external_ext"


@pytest.fixture(scope="session")
def eval_report(tmp_path_factory: pytest.TempPathFactory, eval_dir: Path) -> Path:
    """The report of :func:`eval_dir`, written once (3 cases per gallery section)."""
    from bus_mtl.report import write_report

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return write_report(
            eval_dir, tmp_path_factory.mktemp("reports") / "eval.html", per_section=3, n_boot=300
        )
    finally:
        torch.set_num_threads(previous)
