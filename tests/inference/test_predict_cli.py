"""``bus-mtl predict`` on files: outputs, bad files, folders, single-task models."""

from __future__ import annotations

import csv
import shutil
import sys
import types

import cv2
import numpy as np
import pytest

from bus_mtl.cli.main import main
from bus_mtl.inference.overlay import make_overlay


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_unreadable_file_is_skipped_and_exit_nonzero(mtl_onnx, odd_images, tmp_path, capsys):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    inputs = [
        str(odd_images["rgb"]),
        str(bad),
        str(tmp_path / "missing.png"),
        str(odd_images["gray"]),
    ]
    code = main(["predict", "--model", str(mtl_onnx), "--input", *inputs, "--output", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 image(s) predicted, 2 failed" in err
    assert "corrupt.png" in err and "missing.png" in err
    rows = _rows(out / "predictions.csv")
    assert [r["file"] for r in rows] == [str(odd_images["rgb"]), str(odd_images["gray"])]
    assert list(rows[0]) == [
        "file",
        "probability",
        "predicted_class",
        "lesion_area",
        "lesion_found",
        "uncertainty",
    ]
    for stem in ("scan_rgb", "scan_gray"):
        assert (out / "masks" / f"{stem}.png").is_file()
        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == (97, 131, 3)
    assert not (out / "masks" / "corrupt.png").exists()


def test_folder_input_skips_busi_masks_and_empty_folder_fails(
    mtl_onnx, odd_images, tmp_path, capsys
):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(odd_images["gray"], folder / "benign (1).png")
    cv2.imwrite(str(folder / "benign (1)_mask.png"), np.zeros((97, 131), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--model",
                str(mtl_onnx),
                "--input",
                str(folder),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert [r["file"] for r in _rows(out / "predictions.csv")] == [str(folder / "benign (1).png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(["predict", "--model", str(mtl_onnx), "--input", str(empty), "--output", str(out)])
        == 2
    )
    assert "empty: folder holds no image file" in capsys.readouterr().err


def test_csv_values_match_written_mask(mtl_onnx, odd_images, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--model",
                str(mtl_onnx),
                "--input",
                str(odd_images["rgba"]),
                "--output",
                str(out),
                "--threshold",
                "0.3",
                "--no-progress",
            ]
        )
        == 0
    )
    row = _rows(out / "predictions.csv")[0]
    mask = cv2.imread(str(out / "masks/scan_rgba.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (70, 45)
    assert int(row["lesion_area"]) == int((mask == 255).sum())
    assert row["lesion_found"] == str(bool((mask == 255).any()))
    p = float(row["probability"])
    assert row["predicted_class"] == ("malignant" if p > 0.3 else "benign")


@pytest.mark.slow
def test_segmentation_only_model_leaves_class_columns_empty(seg_only_ckpt, odd_images, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--ckpt",
                str(seg_only_ckpt),
                "--input",
                str(odd_images["gray"]),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    row = _rows(out / "predictions.csv")[0]
    assert row["probability"] == "" and row["predicted_class"] == ""
    assert row["lesion_area"] != "" and row["lesion_found"] in {"True", "False"}
    assert (out / "masks/scan_gray.png").is_file() and (out / "overlays/scan_gray.png").is_file()


def test_same_stem_from_two_folders_gets_distinct_outputs(mtl_onnx, odd_images, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(odd_images["gray"], tmp_path / name / "scan.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--model",
                str(mtl_onnx),
                "--input",
                str(tmp_path / "a/scan.png"),
                str(tmp_path / "b/scan.png"),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["scan.png", "scan_1.png"]


def test_config_delegates_to_lightning_cli(monkeypatch):
    calls = []
    fake = types.ModuleType("bus_mtl.cli.lightning")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "bus_mtl.cli.lightning", fake)
    assert main(["predict", "--config", "experiments/base.yaml", "--ckpt_path", "x.ckpt"]) == 0
    assert calls == [["predict", "--config", "experiments/base.yaml", "--ckpt_path", "x.ckpt"]]


def test_overlay_draws_contour_and_text():
    gray = np.full((120, 160), 90, np.uint8)
    mask = np.zeros_like(gray)
    mask[50:90, 60:110] = 1
    rgb = make_overlay(gray, mask, 0.9, "malignant")
    assert rgb.shape == (120, 160, 3)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80)
    assert red[50, 80] or red[49, 80] or red[51, 80]  # contour on the top edge of the mask
    assert not red[70, 85]  # the inside is untouched
    assert (rgb[:10, :40] != 90).any()  # text box in the top-left corner
    with pytest.raises(ValueError, match="shape"):
        make_overlay(gray, mask[:10], 0.5, "benign")


def test_uncertainty_column_is_the_flip_views_disagreement(mtl_ckpt, odd_images, tmp_path):
    """The model runs no TTA: predict also runs the mirror for the uncertainty, and the
    prediction itself stays the single pass's."""
    from bus_mtl.data.io import read_image
    from bus_mtl.inference.torch_predictor import TorchPredictor

    out = tmp_path / "out"
    argv = ["predict", "--ckpt", str(mtl_ckpt), "--input", str(odd_images["gray"])]
    assert main([*argv, "--output", str(out), "--no-progress"]) == 0
    row = _rows(out / "predictions.csv")[0]
    predictor = TorchPredictor.from_checkpoint(mtl_ckpt)
    gray = read_image(odd_images["gray"])
    plain = predictor.predict_gray(gray).probability
    mirror = predictor.predict_gray(np.ascontiguousarray(gray[:, ::-1])).probability
    assert float(row["uncertainty"]) == pytest.approx(abs(plain - mirror), abs=1e-5)
    assert float(row["probability"]) == pytest.approx(plain, abs=1e-5)
    assert predictor.predict_gray(gray).uncertainty is None  # only when asked for
