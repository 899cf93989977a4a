"""``bus-mtl evaluate`` / :func:`bus_mtl.experiments.evaluate.evaluate`: a tiny trained
checkpoint (and its ONNX export) on a small manifest of non-square, RGBA, multi-mask phantoms
with patient groups; every number checked against the shared metric functions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from bus_mtl.cli.main import main as bus_mtl
from bus_mtl.data import ManifestSource, make_phantom
from bus_mtl.data.io import read_image, read_masks
from bus_mtl.experiments.evaluate import (
    PER_IMAGE_COLUMNS,
    bootstrap_intervals,
    evaluate,
    format_table,
)
from bus_mtl.experiments.stats import cluster_bootstrap_weights, weighted_auc
from bus_mtl.inference.torch_predictor import TorchPredictor
from bus_mtl.training.metrics import binary_metrics, original_size_seg_metrics
from tests.short_fit import short_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_IMAGES = 16
TEMPERATURE = 0.25  # stored in the checkpoint; spreads the tiny net's probabilities
KEYS = {
    "schema",
    "name",
    "n",
    "n_benign",
    "n_malignant",
    "n_normal",
    "n_classified",
    "dice",
    "dice_lesion",
    "iou",
    "hd95",
    "hd95_undefined",
    "auc",
    "acc",
    "sensitivity",
    "specificity",
    "f1",
    "balanced_acc",
    "ece",
    "brier",
    "dice_ci",
    "iou_ci",
    "auc_ci",
    "sensitivity_ci",
    "specificity_ci",
    "threshold",
    "threshold_source",
    "threshold_rule",
    "mask_threshold",
    "temperature",
    "segmentation_resolution",
    "bootstrap",
    "uncertainty",
    "referral",
    "model",
    "data",
    "command",
    "created",
    "bus_mtl_version",
    "files",
    "elapsed_s",
}


def _size(i: int) -> tuple[int, int]:
    """Original (H, W) of image i: non-square, both wider and taller than the 64 px input."""
    return (48 + 8 * (i % 3), 96 - 8 * (i % 4)) if i % 2 else (90, 60 + 4 * (i % 5))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """16 phantoms (8 malignant) at non-square sizes; even images saved as RGBA (as
    BrEaST-Lesions_USG), image 3's mask split over two files joined by ';' (ORed); groups
    of two images (patients) and a centre column."""
    root = tmp_path_factory.mktemp("external")
    rows = []
    for i in range(N_IMAGES):
        image, mask, label = make_phantom(i, seed=7, size=64)
        h, w = _size(i)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        if i % 2 == 0:
            image = cv2.merge([image, image, image, np.full_like(image, 255)])
        cv2.imwrite(str(root / f"case{i:02d}.png"), image)
        masks = [f"case{i:02d}_tumor.png"]
        if i == 3:
            left, right = mask.copy(), mask.copy()
            left[:, w // 2 :] = 0
            right[:, : w // 2] = 0
            cv2.imwrite(str(root / masks[0]), left * 255)
            masks.append(f"case{i:02d}_other1.png")
            cv2.imwrite(str(root / masks[1]), right * 255)
        else:
            cv2.imwrite(str(root / masks[0]), mask * 255)
        rows.append(
            [
                f"case{i:02d}.png",
                ";".join(masks),
                ("benign", "malignant")[label],
                "ext",
                f"p{i // 2}",
            ]
        )
    path = root / "manifest.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mask", "label", "centre", "group"])
        writer.writerows(rows)
    return path


def _train(root: Path, synthetic_root: Path, net: torch.nn.Module) -> Path:
    """``net`` after 2 steps at 64 px on the synthetic set, saved with ``TEMPERATURE``."""

    from bus_mtl.data import BUSDataModule, SyntheticSource
    from bus_mtl.training import MultiTaskModule

    dm = BUSDataModule(
        SyntheticSource(n=32, image_size=64, seed=0, root=synthetic_root),
        n_folds=4,
        image_size=64,
        batch_size=8,
        augmentation="none",
        cache_dir=str(root / "cache"),
        seed=0,
    )
    module = MultiTaskModule(net, log_images=0)
    trainer = short_trainer(root)
    trainer.fit(module, datamodule=dm)
    module.temperature.fill_(TEMPERATURE)
    trainer.save_checkpoint(root / "model.ckpt")
    return root / "model.ckpt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synthetic_root: Path, manifest: Path) -> Path:
    """``shared_encoder`` (8 filters; its logits vary from image to image from the start)
    after 2 steps, with a stored temperature and, as decision threshold, the midpoint of the
    manifest's two middle probabilities (so both calls occur)."""
    from bus_mtl.models import create

    torch.manual_seed(0)
    net = create("shared_encoder", init_filters=8, hidden_dim=16)
    path = _train(tmp_path_factory.mktemp("eval_run"), synthetic_root, net)
    predictor = TorchPredictor.from_checkpoint(path)
    probs = sorted(
        predictor.predict(s.image).probability for s in ManifestSource(manifest).samples()
    )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["bus_mtl"]["decision_threshold"] = (probs[7] + probs[8]) / 2
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def decision_threshold(ckpt: Path) -> float:
    return float(torch.load(ckpt, weights_only=True)["bus_mtl"]["decision_threshold"])


@pytest.fixture(scope="module")
def tta_ckpt(tmp_path_factory, ckpt: Path) -> Path:
    """``ckpt``'s weights recorded as trained with ``model.tta: hflip``."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["bus_mtl"]["tta"] = "hflip"
    checkpoint["hyper_parameters"]["tta"] = "hflip"
    path = tmp_path_factory.mktemp("eval_tta") / "tta.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, ckpt: Path, manifest: Path) -> tuple[Path, str]:
    """``bus-mtl evaluate --ckpt ... --manifest ... --out OUT`` once: (OUT, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("eval_out") / "ext"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = bus_mtl(
            ["evaluate", "--ckpt", str(ckpt), "--manifest", str(manifest), "--out", str(out)]
            + ["--no-progress"]
        )
    assert code == 0
    return out, buffer.getvalue()


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _direct(ckpt: Path, manifest: Path, threshold: float) -> dict[str, float]:
    """The metrics straight from the shared functions: the checkpoint's single-image
    outputs, original_size_seg_metrics at each image's size, binary_metrics at ``threshold``."""
    predictor = TorchPredictor.from_checkpoint(ckpt)
    seg, probs, labels = [], [], []
    for s in ManifestSource(manifest).samples():
        gray = read_image(s.image)
        target = read_masks(s.masks, gray.shape)
        raw = predictor.raw_outputs(gray, views=False)
        seg.append(
            original_size_seg_metrics(
                torch.from_numpy(raw.mask_logits)[None, None], [torch.from_numpy(target)], 0.5
            )
        )
        probs.append(float(torch.sigmoid(torch.tensor(raw.logits[0] / TEMPERATURE))))
        labels.append(s.label)
    out = {k: float(torch.cat([r[k] for r in seg]).nanmean()) for k in ("dice", "iou", "hd95")}
    cls = binary_metrics(np.array(probs), np.array(labels), threshold)
    return out | {k: float(v) for k, v in cls.items()}


def test_cli_writes_every_file_and_the_numbers_of_the_shared_functions(
    cli_run, ckpt, manifest, decision_threshold
):
    out, stdout = cli_run
    m = _metrics(out)
    assert KEYS <= set(m), f"missing {sorted(KEYS - set(m))}"
    assert (m["n"], m["n_malignant"], m["n_benign"], m["n_classified"]) == (16, 8, 8, 16)
    direct = _direct(ckpt, manifest, decision_threshold)
    for key in ("dice", "iou", "hd95", "auc", "sensitivity", "specificity", "ece", "brier"):
        assert m[key] == pytest.approx(direct[key], abs=1e-5), key
    assert m["threshold"] == pytest.approx(decision_threshold)
    assert m["threshold_source"] == "model" and m["temperature"] == pytest.approx(TEMPERATURE)
    for key in ("auc", "dice", "iou", "sensitivity", "specificity"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi, (key, lo, m[key], hi)
    assert m["bootstrap"] == {
        "n_resamples": 2000,
        "seed": 0,
        "level": 0.95,
        "method": "percentile",
        "unit": "group",
        "n_units": 8,
    }
    assert m["model"]["path"] == str(ckpt) and m["model"]["format"] == "checkpoint"
    assert str(manifest) in m["data"]["source"] and m["data"]["files"] == [str(manifest)]
    assert m["data"]["centres"] == {"ext": 16}
    assert m["command"].startswith("bus-mtl evaluate --ckpt")
    for name in ("roc", "reliability", "referral"):
        assert (out / m["files"][name]).stat().st_size > 1000
    # The table: one header and one row with n, Dice, AUC [CI], ..., Brier.
    header, row = [line for line in stdout.splitlines() if line.strip()][:2]
    assert header.split()[:3] == ["n", "Dice", "AUC"] and "Brier" in header
    assert row.split()[1] == "16" and f"{m['auc']:.3f} [{m['auc_ci'][0]:.3f}," in row
    assert f"{m['threshold']:.3f}" in row and f"{m['brier']:.3f}" in row


def test_per_image_csv_has_one_row_per_image(cli_run, manifest, decision_threshold):
    out, _ = cli_run
    table = pd.read_csv(out / "per_image.csv", keep_default_na=False)
    assert tuple(table.columns) == PER_IMAGE_COLUMNS
    assert len(table) == N_IMAGES
    assert table["image"].tolist() == [str(manifest.parent / f"case{i:02d}.png") for i in range(16)]
    assert table["group"].tolist() == [f"p{i // 2}" for i in range(16)]
    assert set(table["label_name"]) == {"benign", "malignant"}
    p = table["probability"].astype(float)
    called = np.where(p > decision_threshold, "malignant", "benign")
    assert (table["predicted_class"] == called).all()
    u = table["uncertainty"].astype(float)
    assert ((u >= 0) & (u <= 1)).all() and u.max() > 0
    # Target areas at the original size: image 3's two mask files are ORed.
    areas = table["target_area"].astype(float).to_numpy()
    for i in (2, 3):
        h, w = _size(i)
        full = cv2.resize(
            make_phantom(i, seed=7, size=64)[1], (w, h), interpolation=cv2.INTER_NEAREST
        )
        assert areas[i] == full.sum()
    # The means of the CSV are metrics.json's (9 significant digits in the file).
    m = _metrics(out)
    assert table["dice"].astype(float).mean() == pytest.approx(m["dice"], abs=1e-6)
    recomputed = binary_metrics(p.to_numpy(), table["label"].to_numpy(), decision_threshold)
    assert float(recomputed["auc"]) == pytest.approx(m["auc"], abs=1e-6)


def test_uncertainty_is_the_flip_views_disagreement(cli_run, ckpt, manifest):
    out, _ = cli_run
    table = pd.read_csv(out / "per_image.csv")
    predictor = TorchPredictor.from_checkpoint(ckpt)
    gray = read_image(manifest.parent / "case05.png")
    x = torch.from_numpy(np.ascontiguousarray(gray))
    probs = []
    for view in (x, x.flip(-1)):
        raw = predictor.raw_outputs(np.ascontiguousarray(view.numpy()), views=False)
        probs.append(float(torch.sigmoid(torch.tensor(raw.logits[0] / TEMPERATURE))))
    assert table.loc[5, "uncertainty"] == pytest.approx(abs(probs[0] - probs[1]), abs=1e-5)


def test_referral_curve_recomputed_from_the_csv(cli_run, decision_threshold):
    out, _ = cli_run
    m = _metrics(out)
    table = pd.read_csv(out / "per_image.csv")
    assert [r["referred_fraction"] for r in m["referral"]] == [0.0, 0.1, 0.2, 0.3]
    order = np.argsort(-table["uncertainty"].to_numpy(), kind="stable")
    for r in m["referral"]:
        n_ref = int(math.floor(r["referred_fraction"] * N_IMAGES + 0.5))
        kept = table.iloc[order[n_ref:]]
        assert (r["n_referred"], r["n_kept"]) == (n_ref, N_IMAGES - n_ref)
        direct = binary_metrics(kept["probability"], kept["label"], decision_threshold)
        for key in ("auc", "sensitivity", "specificity"):
            assert r[key] == pytest.approx(float(direct[key]), abs=1e-6, nan_ok=True)
    assert m["referral"][0]["auc"] == pytest.approx(m["auc"], abs=1e-6)


def test_tta_option_is_the_networks_as_in_predict_and_export(tta_ckpt, manifest, tmp_path, capsys):
    """``--tta none`` asks for the single pass with its own operating point, which this
    checkpoint was not calibrated for: refused in one line naming the modes it has."""
    argv = ["evaluate", "--ckpt", str(tta_ckpt), "--manifest", str(manifest)]
    assert bus_mtl([*argv, "--out", str(tmp_path / "none"), "--tta", "none"]) == 2
    err = capsys.readouterr().err
    assert "['hflip'] only, not 'none'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_threshold_override_is_used(ckpt, manifest, tmp_path, capsys):
    out = tmp_path / "t02"
    argv = ["evaluate", "--ckpt", str(ckpt), "--manifest", str(manifest), "--out", str(out)]
    assert bus_mtl([*argv, "--threshold", "0.2", "--no-progress", "--n-boot", "200"]) == 0
    m = _metrics(out)
    assert m["threshold"] == 0.2 and m["threshold_source"] == "override"
    assert m["threshold_rule"] == "given"
    direct = _direct(ckpt, manifest, 0.2)
    assert m["sensitivity"] == pytest.approx(direct["sensitivity"])
    assert m["specificity"] == pytest.approx(direct["specificity"])
    table = pd.read_csv(out / "per_image.csv")
    assert (
        table["predicted_class"] == np.where(table["probability"] > 0.2, "malignant", "benign")
    ).all()
    assert "given on the command line" in capsys.readouterr().out
    assert bus_mtl([*argv, "--threshold", "1.5"]) == 2
    assert "threshold must be in (0, 1)" in capsys.readouterr().err


def test_group_bootstrap_resamples_groups():
    """Each image twice in one group: resampling groups is resampling the unique images
    (the same draws), so the intervals equal those of the unique images alone; resampling
    the duplicated images as if independent gives narrower ones."""
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, y.size), 0, 1)
    calls = p > 0.5
    dice = rng.uniform(0.3, 0.9, y.size)
    twice = {"labels": np.repeat(y, 2), "probs": np.repeat(p, 2), "calls": np.repeat(calls, 2)}
    groups = np.repeat([f"patient{i}" for i in range(y.size)], 2)
    grouped, record = bootstrap_intervals(
        **twice, means={"dice": np.repeat(dice, 2)}, groups=groups, n_boot=500, seed=3
    )
    unique, _ = bootstrap_intervals(y, p, calls, means={"dice": dice}, n_boot=500, seed=3)
    assert record["unit"] == "group" and record["n_units"] == y.size
    for key in ("auc", "sensitivity", "specificity", "dice"):
        np.testing.assert_allclose(grouped[key], unique[key], rtol=0, atol=1e-12)
    naive, record = bootstrap_intervals(
        **twice, means={"dice": np.repeat(dice, 2)}, n_boot=500, seed=3
    )
    assert record["unit"] == "image" and record["n_units"] == 2 * y.size
    assert naive["auc"][1] - naive["auc"][0] < grouped["auc"][1] - grouped["auc"][0]
    # The AUC interval is that of weighted_auc over cluster_bootstrap_weights' draws.
    w = cluster_bootstrap_weights(500, groups, None, 2 * y.size, 3)
    expected = np.percentile(
        weighted_auc(twice["labels"], twice["probs"].astype(np.float32), w), [2.5, 97.5]
    )
    np.testing.assert_allclose(grouped["auc"], expected, atol=1e-7)


def test_onnx_and_checkpoint_give_the_same_metrics(cli_run, ckpt, manifest, tmp_path):
    from bus_mtl.inference.export import export_checkpoint
    from bus_mtl.inference.predictor import Predictor

    onnx = export_checkpoint(ckpt, "onnx", tmp_path / "model.onnx").path
    result = evaluate(Predictor(onnx), ManifestSource(manifest), tmp_path / "onnx", n_boot=2000)
    ref = _metrics(cli_run[0])
    assert result.metrics["model"]["format"] == "onnx"
    for key in ("dice", "iou", "auc", "sensitivity", "specificity", "ece", "brier"):
        assert result.metrics[key] == pytest.approx(ref[key], abs=2e-3), key
    assert result.metrics["auc_ci"] == pytest.approx(ref["auc_ci"], abs=2e-3)
    assert result.metrics["uncertainty"]["available"]  # no TTA in the graph: both views run


def test_tta_checkpoint_predicts_the_flip_average_and_its_onnx_has_no_views(
    tta_ckpt, manifest, tmp_path
):
    from bus_mtl.inference.export import export_checkpoint
    from bus_mtl.inference.predictor import Predictor

    predictor = TorchPredictor.from_checkpoint(tta_ckpt)
    gray = read_image(manifest.parent / "case01.png")
    raw = predictor.raw_outputs(gray, views=True)
    from bus_mtl.inference.preprocess import preprocess

    mask, logits = predictor._run(preprocess(gray, predictor.info))  # FlipTTA, in one call
    np.testing.assert_allclose(raw.mask_logits, mask[0, 0], atol=1e-5)
    np.testing.assert_allclose(raw.logits, logits[0], atol=1e-5)
    assert raw.view_logits.shape == (2, 1)
    torch_run = evaluate(predictor, ManifestSource(manifest), tmp_path / "ckpt", n_boot=100)
    assert torch_run.metrics["uncertainty"]["available"] and torch_run.metrics["referral"]
    onnx = export_checkpoint(tta_ckpt, "onnx", tmp_path / "tta.onnx").path
    onnx_run = evaluate(Predictor(onnx), ManifestSource(manifest), tmp_path / "onnx", n_boot=100)
    assert onnx_run.metrics["auc"] == pytest.approx(torch_run.metrics["auc"], abs=2e-3)
    assert onnx_run.metrics["dice"] == pytest.approx(torch_run.metrics["dice"], abs=2e-3)
    assert not onnx_run.metrics["uncertainty"]["available"] and onnx_run.metrics["referral"] == []
    assert "--tta none" in onnx_run.metrics["uncertainty"]["note"]
    assert onnx_run.per_image["uncertainty"].isna().all()
    assert not (tmp_path / "onnx" / "referral.png").exists()


def test_source_preset_with_data_sources_not_config(ckpt, manifest, tmp_path, capsys):
    preset = tmp_path / "external.yaml"
    preset.write_text(f"class_path: bus_mtl.data.ManifestSource\ninit_args:\n  csv: {manifest}\n")
    out = tmp_path / "external"
    argv = ["evaluate", "--ckpt", str(ckpt), "--data.sources", str(preset), "--out", str(out)]
    assert bus_mtl([*argv, "--n-boot", "50", "--no-progress"]) == 0
    m = _metrics(out)
    assert m["n"] == N_IMAGES and m["name"] == "external"
    # --config is for config files: a source preset there is one line naming the option.
    capsys.readouterr()
    argv = ["evaluate", "--ckpt", str(ckpt), "--config", str(preset), "--out", str(out)]
    assert bus_mtl(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"give it with --data.sources {preset}" in err
    # --data.* options apply to the preset.
    other = tmp_path / "elsewhere.csv"
    argv = ["evaluate", "--ckpt", str(ckpt), "--data.sources", str(preset)]
    code = bus_mtl([*argv, f"--data.sources.init_args.csv={other}", "--out", str(tmp_path / "x")])
    assert code == 2
    assert f"{other}: manifest CSV not found" in capsys.readouterr().err


def _bad_manifest(manifest: Path, tmp_path: Path, edit) -> Path:
    rows = list(csv.reader(manifest.open()))
    edit(rows)
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _run_bad(ckpt: Path, csv_path: Path, tmp_path: Path, capsys) -> str:
    out = tmp_path / "bad_out"
    code = bus_mtl(
        ["evaluate", "--ckpt", str(ckpt), "--manifest", str(csv_path), "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (out / "metrics.json").exists()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_manifest_is_one_line_naming_it(ckpt, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "manifest.csv"
    err = _run_bad(ckpt, missing, tmp_path, capsys)
    assert err == f"bus-mtl evaluate: error: {missing}: manifest CSV not found"


def test_unknown_label_is_one_line_naming_the_row(ckpt, manifest, tmp_path, capsys):
    def edit(rows):
        rows[4][2] = "maybe"

    bad = _bad_manifest(manifest, tmp_path, edit)
    # The CSV sits elsewhere: paths relative to it are made absolute.
    rows = list(csv.reader(bad.open()))
    for r in rows[1:]:
        r[0] = str(manifest.parent / r[0])
        r[1] = ";".join(str(manifest.parent / m) for m in r[1].split(";"))
    with bad.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    err = _run_bad(ckpt, bad, tmp_path, capsys)
    assert f"{bad}:5" in err and "unknown label 'maybe'" in err


def test_wrong_size_mask_is_one_line_naming_the_mask(ckpt, manifest, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(manifest.parent, folder)
    bad_mask = folder / "case06_tumor.png"
    cv2.imwrite(str(bad_mask), np.zeros((10, 12), np.uint8))
    err = _run_bad(ckpt, folder / "manifest.csv", tmp_path, capsys)
    assert err.startswith(f"bus-mtl evaluate: error: {bad_mask}: mask size 12x10 (WxH) differs")


def test_format_table_puts_rows_side_by_side():
    a = {
        "n": 130,
        "dice": 0.7,
        "auc": 0.9,
        "auc_ci": [0.85, 0.95],
        "sensitivity": 0.8,
        "specificity": 0.85,
        "threshold": 0.41,
        "ece": 0.05,
        "brier": 0.1,
    }
    b = {**a, "n": 252, "auc_ci": [None, None], "ece": math.nan}
    text = format_table([("BUSI test", a), ("external", b)])
    lines = text.splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines[1:]}) == 1
    assert "0.900 [0.850, 0.950]" in lines[1] and "—" in lines[2]


def test_predict_csv_uncertainty_equals_evaluate(cli_run, ckpt, manifest, tmp_path):
    """``bus-mtl predict`` writes the same per-image uncertainty (and probability)."""
    out, _ = cli_run
    table = pd.read_csv(out / "per_image.csv")
    images = [str(manifest.parent / f"case{i:02d}.png") for i in (0, 5, 9)]
    argv = ["predict", "--ckpt", str(ckpt), "--input", *images, "--output", str(tmp_path)]
    assert bus_mtl([*argv, "--no-progress"]) == 0
    rows = pd.read_csv(tmp_path / "predictions.csv")
    assert rows["uncertainty"].min() > 1e-4  # the views do disagree on this net
    for i, row in zip((0, 5, 9), rows.itertuples()):
        assert row.uncertainty == pytest.approx(table.loc[i, "uncertainty"], abs=1e-5)
        assert row.probability == pytest.approx(table.loc[i, "probability"], abs=1e-5)


def test_segmentation_only_model(tmp_path_factory, synthetic_root, manifest, tmp_path):
    """No classification head: Dice/IoU/HD95 with intervals, no AUC, no ROC, no referral."""
    from bus_mtl.models import create

    torch.manual_seed(0)
    path = _train(
        tmp_path_factory.mktemp("seg_run"), synthetic_root, create("segresnet", init_filters=8)
    )
    result = evaluate(TorchPredictor.from_checkpoint(path), ManifestSource(manifest), tmp_path)
    m = result.metrics
    assert math.isfinite(m["dice"]) and m["dice_ci"][0] <= m["dice"] <= m["dice_ci"][1]
    assert math.isnan(m["auc"]) and math.isnan(m["auc_ci"][0]) and m["n_classified"] == 0
    assert m["referral"] == [] and "no classification head" in m["uncertainty"]["note"]
    assert sorted(m["files"]) == ["per_image"]
    assert result.per_image["probability"].isna().all()
    assert json.loads((tmp_path / "metrics.json").read_text())["auc"] is None  # NaN -> null
    assert "—" in result.table()
