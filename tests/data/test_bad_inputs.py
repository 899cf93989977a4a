"""Every bad input gives one clear error naming the file or key, all found in one run."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from bus_mtl.data import BUSDataModule, BUSISource, DataError, ManifestSource, check_data


@pytest.fixture
def broken_busi(busi_tree: Path) -> Path:
    top = busi_tree / "Dataset_BUSI_with_GT"
    (top / "benign" / "benign (2).png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")  # corrupt
    (top / "benign" / "benign (3)_mask.png").unlink()  # missing mask
    Image.new("1", (10, 10)).save(top / "malignant" / "malignant (1)_mask.png")  # wrong size
    for f in (top / "normal").iterdir():  # empty folder (used with normal="class")
        f.unlink()
    return busi_tree


def test_check_reports_everything_at_once(broken_busi: Path, tmp_path: Path) -> None:
    report = check_data(BUSISource(broken_busi, normal="class"), 64, tmp_path / "c")
    text = "\n".join(str(p) for p in report.errors)
    assert not report.ok and len(report.errors) == 4, text
    assert "benign (2).png: unreadable or corrupt" in text
    assert "benign (3).png: missing mask" in text
    assert "malignant (1)_mask.png: mask size 10x10" in text
    assert "normal: empty folder" in text


class _Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Conv2d(1, 1, 1)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return self.layer(batch["image"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_fails_before_first_step(broken_busi: Path, tmp_path: Path) -> None:
    dm = BUSDataModule(
        BUSISource(broken_busi),
        image_size=64,
        batch_size=2,
        n_folds=2,
        cache_dir=str(tmp_path / "c"),
    )
    model = _Probe()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(DataError) as err:
        trainer.fit(model, datamodule=dm)
    assert model.steps == 0
    assert "benign (2).png" in str(err.value) and "benign (3).png" in str(err.value)


def test_manifest_problems(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    csv = tmp_path / "m.csv"
    csv.write_text(
        "image,mask,label\nok.png,ok.png,suspicious\nnope.png,ok.png,benign\nok.png,gone.png,1\nok.png,,0\n"
    )
    _, problems = ManifestSource(csv).scan()
    text = "\n".join(map(str, problems))
    assert "m.csv:2: unknown label 'suspicious'" in text
    assert "nope.png: image file not found (manifest" in text
    assert "gone.png: mask file not found" in text
    assert "m.csv:5: missing mask for ok.png" in text
    (tmp_path / "empty.csv").write_text("image,mask,label\n")
    with pytest.raises(DataError, match="empty.csv"):
        ManifestSource(tmp_path / "empty.csv").samples()
    (tmp_path / "cols.csv").write_text("path,diagnosis\na.png,benign\n")
    with pytest.raises(DataError, match="cols.csv.*missing column"):
        ManifestSource(tmp_path / "cols.csv").samples()


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*not found"):
        BUSISource(tmp_path / "nowhere").samples()
    for name in ("benign", "malignant"):
        (tmp_path / "b" / name).mkdir(parents=True)
    with pytest.raises(DataError, match="benign: empty folder"):
        BUSISource(tmp_path / "b").samples()
