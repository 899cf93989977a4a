"""Aggregation, pooled metrics, tables and plots from hand-made fold folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bus_mtl.experiments.compare import join_predictions, write_comparison
from bus_mtl.experiments.results import (
    format_mean_std,
    pooled_metrics,
    read_fold_metrics,
    read_predictions,
    summarize_folds,
    write_cv_summary,
)
from bus_mtl.training.metrics import reliability_bins


def make_fold(root, k, metrics, preds, params=1000):
    d = root / f"fold_{k}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(
        json.dumps({"fold": k, "fold_name": f"fold {k}", "metrics": metrics, "params": params})
    )
    pd.DataFrame(preds).to_csv(d / "test_predictions.csv", index=False)
    (d / "DONE").write_text("")


def preds(ids, labels, probs, dice):
    return {
        "id": ids,
        "centre": ["busi"] * len(ids),
        "label": labels,
        "prob": probs,
        "dice": dice,
        "iou": dice,
        "hd95": [3.0] * len(ids),
        "mask_area": [10] * len(ids),
    }


@pytest.fixture
def cv_folder(tmp_path):
    out = tmp_path / "cv"
    make_fold(
        out,
        0,
        {"test/dice": 0.70, "test/auc": 0.90, "test/loss": 0.3},
        preds(["a", "b", "c"], [1, 0, 0], [0.9, 0.2, 0.6], [0.7, 0.8, math.nan]),
    )
    make_fold(
        out,
        1,
        {"test/dice": 0.80, "test/auc": 1.00, "test/loss": 0.1},
        preds(["d", "e", "f"], [1, 1, 0], [0.4, 0.7, 0.1], [0.6, 0.9, 0.5]),
    )
    return out


def test_mean_std_over_folds_by_hand(cv_folder):
    per_fold = read_fold_metrics(cv_folder)
    assert list(per_fold["fold"]) == [0, 1]
    s = summarize_folds(per_fold)
    assert s.loc["dice", "mean"] == pytest.approx(0.75)
    # sample std of (0.70, 0.80): sqrt((0.05^2 + 0.05^2) / 1) = 0.0707...
    assert s.loc["dice", "std"] == pytest.approx(math.sqrt(0.005))
    assert s.loc["auc", "fold_1"] == pytest.approx(1.0)
    assert s.loc["params", "mean"] == 1000


def test_pooled_metrics_by_hand(cv_folder):
    payload = write_cv_summary(cv_folder)
    pooled = payload["pooled"]
    # positives a .9, d .4, e .7; negatives b .2, c .6, f .1 -> pairs won: 3 + 2 + 3 = 8/9
    assert pooled["auc"] == pytest.approx(8 / 9)
    # threshold 0.5: TP a, e; FN d; FP c; TN b, f
    assert pooled["sensitivity"] == pytest.approx(2 / 3)
    assert pooled["specificity"] == pytest.approx(2 / 3)
    assert pooled["acc"] == pytest.approx(4 / 6)
    assert pooled["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert pooled["dice"] == pytest.approx(np.mean([0.7, 0.8, 0.6, 0.9, 0.5]))
    for name in ("summary.csv", "summary.md", "summary.json"):
        assert (cv_folder / name).is_file()
    md = (cv_folder / "summary.md").read_text()
    assert "75.00 ± 7.07" in md
    assert json.loads((cv_folder / "summary.json").read_text())["metrics"]["dice"]["n"] == 2
    # These hand-made folds have no *_input columns: metrics of the square network input.
    assert "at the square network input size" in md


def test_summary_states_original_resolution(tmp_path):
    out = tmp_path / "cv"
    rows = preds(["a", "b"], [1, 0], [0.9, 0.2], [0.7, 0.8])
    rows.update({"dice_input": [0.75, 0.85], "iou_input": [0.6, 0.7]})
    make_fold(out, 0, {"test/dice": 0.75, "test/dice_input": 0.8}, rows)
    write_cv_summary(out)
    md = (out / "summary.md").read_text()
    assert "at each image's original size (HD95 in original pixels)" in md


def test_reliability_bins_by_hand():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.95, 0.85])
    b = reliability_bins(p, y, n_bins=10)
    assert b["count"][0] == 1 and b["count"][1] == 1 and b["count"][8] == 1
    # bins: [0,.1) conf .05 freq 0; [.1,.2) .15 vs 1; [.8,.9) .85 vs 1; [.9,1] .95 vs 1
    ece = (0.05 + 0.85 + 0.15 + 0.05) / 4
    assert b["ece"] == pytest.approx(ece)
    assert pooled_metrics(pd.DataFrame({"label": y, "prob": p}))["ece"] == pytest.approx(ece)


def test_format_mean_std():
    assert format_mean_std(0.8119, 0.012, "dice") == "81.19 ± 1.20"
    assert format_mean_std(12.345, math.nan, "hd95") == "12.35"
    assert format_mean_std(4_100_000, 0, "params") == "4.10M"


def test_comparison_table_statistics_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"busi/img{i}" for i in range(40)]
    labels = np.array([1, 0, 0] * 13 + [0])  # both classes in each fold of 20
    strong = labels * 0.6 + rng.uniform(0, 0.4, 40)
    weak = rng.uniform(0, 1, 40)
    folders = {}
    for name, probs, dice in (
        ("good", strong, rng.uniform(0.7, 0.9, 40)),
        ("poor", weak, rng.uniform(0.3, 0.6, 40)),
    ):
        vdir = tmp_path / name
        for k in range(2):
            part = slice(20 * k, 20 * (k + 1))
            make_fold(
                vdir,
                k,
                {"test/dice": float(dice[part].mean()), "test/auc": 0.9 if name == "good" else 0.5},
                preds(ids[part], labels[part], probs[part], dice[part]),
            )
        folders[("kfold", name)] = vdir
    table = write_comparison(tmp_path, folders)
    good = table.set_index("variant").loc["good"]
    poor = table.set_index("variant").loc["poor"]
    assert good["reference"] == "good" and poor["reference"] == "good"  # the first given
    assert poor["p_dice_wilcoxon"] < 1e-4  # every image's Dice is higher for "good"
    assert poor["p_auc_delong"] < 0.01  # per-fold DeLong, combined over the two folds
    assert poor["delta_auc"] < 0 and poor["delta_dice"] < 0
    for name in ("compare.csv", "compare.md", "compare.json", "compare.png", "per_image.csv"):
        assert (tmp_path / name).is_file(), name
    joined = pd.read_csv(tmp_path / "per_image.csv")
    assert len(joined) == 40 and {"prob_good", "prob_poor", "dice_good"} <= set(joined.columns)
    assert "| ref |" in (tmp_path / "compare.md").read_text()


def test_join_predictions_aligns_by_id():
    a = pd.DataFrame({"id": ["x", "y"], "label": [1, 0], "fold": [0, 0], "prob": [0.9, 0.1]})
    b = pd.DataFrame({"id": ["y", "x"], "label": [0, 1], "fold": [0, 0], "prob": [0.3, 0.6]})
    j = join_predictions({("kfold", "a"): a, ("kfold", "b"): b}).set_index("id")
    assert j.loc["x", "prob_a"] == 0.9 and j.loc["x", "prob_b"] == 0.6


def test_pooled_metrics_use_each_folds_stored_threshold(tmp_path):
    # Fold 0 decided at 0.3, fold 1 at 0.8: the same probability 0.5 is malignant in fold 0
    # and benign in fold 1, as each fold's own test metrics counted it.
    make_fold(
        tmp_path,
        0,
        {"test/decision_threshold": 0.3},
        preds(["a", "b"], [1, 0], [0.5, 0.1], [0.7, 0.8]),
    )
    make_fold(
        tmp_path,
        1,
        {"test/decision_threshold": 0.8},
        preds(["c", "d"], [1, 0], [0.5, 0.1], [0.6, 0.9]),
    )
    pred = read_predictions(tmp_path)
    assert sorted(pred["threshold"].unique()) == [0.3, 0.8]
    pooled = pooled_metrics(pred)
    assert pooled["sensitivity"] == pytest.approx(1 / 2)  # a found, c missed
    assert pooled["specificity"] == pytest.approx(1.0)
    # Without stored thresholds every row is decided at 0.5 (strictly above, as in training).
    plain = pooled_metrics(pred.drop(columns="threshold"))
    assert plain["sensitivity"] == 0.0


def test_cv_summary_recomputed_from_per_image_csvs(tmp_path):
    """Every classification number of a cv summary (per fold and pooled) is what the shared
    definition gives on the per-image CSVs: the folds are written by the real writers (the
    test metrics of ClassificationMetrics at each fold's stored threshold, the CSV of
    PerImagePredictions), then recomputed with ``binary_metrics`` from the files alone."""
    from types import SimpleNamespace

    import torch

    from bus_mtl.training.callbacks import PerImagePredictions
    from bus_mtl.training.metrics import BINARY_METRICS, ClassificationMetrics, binary_metrics

    out = tmp_path / "cv"
    g = torch.Generator().manual_seed(7)
    stored = {}
    for k in range(3):
        n = 30
        y = torch.randint(0, 2, (n,), generator=g)
        y[:2] = torch.tensor([0, 1])
        logits = (y * 2 - 1) * 0.8 + torch.randn(n, generator=g) * 1.5
        logits[3:6] = logits[2]  # ties
        logits[7] = 35.0  # probability exactly 1 (its own ECE bin in torchmetrics)
        # a malignant image scored just below a benign one: 2.4e-7 apart, a tie to 6 digits
        logits[9:11], y[9:11] = torch.tensor([4.6, 4.60002]), torch.tensor([1, 0])
        probs = torch.sigmoid(logits)
        # fold 1's stored threshold is one of its test probabilities: p > t leaves it benign
        t = float(probs[8]) if k == 1 else (0.5, 0.5, 0.31)[k]
        t = float(torch.tensor(t, dtype=torch.float32))  # logged from a float32 buffer
        stored[k] = t
        metric = ClassificationMetrics(threshold=t)
        metric.update(logits[:, None], y)
        logged = {f"test/{name}": float(v) for name, v in metric.compute().items()}
        logged.update({"test/decision_threshold": t, "test/dice": 0.7})
        d = out / f"fold_{k}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"fold": k, "metrics": logged}))
        writer = PerImagePredictions(str(d / "test_predictions.csv"))
        writer.on_test_epoch_start(None, None)
        row = {
            "id": [f"f{k}_{i}" for i in range(n)],
            "centre": ["busi"] * n,
            "label": y,
            "prob": probs,
            "dice": torch.rand(n, generator=g),
            "iou": torch.rand(n, generator=g),
            "hd95": torch.rand(n, generator=g) * 10,
            "mask_area": torch.randint(0, 500, (n,), generator=g).float(),
        }
        writer.on_test_batch_end(None, None, row, None, 0)
        writer.on_test_end(SimpleNamespace(is_global_zero=True), None)

    payload = write_cv_summary(out)
    frames = []
    for k in range(3):
        csv = pd.read_csv(out / f"fold_{k}" / "test_predictions.csv")
        fold = binary_metrics(csv["prob"].to_numpy(), csv["label"].to_numpy(), stored[k])
        for name in BINARY_METRICS:
            assert payload["metrics"][name]["values"][k] == pytest.approx(
                fold[name].item(), abs=1e-6, nan_ok=True
            ), (k, name)
        frames.append(csv.assign(threshold=stored[k]))
    pooled_csv = pd.concat(frames)
    pooled = binary_metrics(
        pooled_csv["prob"].to_numpy(), pooled_csv["label"].to_numpy(), pooled_csv["threshold"]
    )
    for name in BINARY_METRICS:
        assert payload["pooled"][name] == pytest.approx(pooled[name].item(), abs=1e-7), name
        mean = np.mean(payload["metrics"][name]["values"])
        assert payload["metrics"][name]["mean"] == pytest.approx(mean)
    assert payload["pooled"]["n_classified"] == 90


def test_per_image_table_carries_each_folds_threshold(tmp_path):
    # per_image.csv (and the compare notebook's calls) need the threshold each fold decided at
    make_fold(tmp_path, 0, {"test/decision_threshold": 0.3}, preds(["a"], [1], [0.4], [0.7]))
    make_fold(tmp_path, 1, {"test/decision_threshold": 0.8}, preds(["b"], [0], [0.4], [0.6]))
    j = join_predictions({("kfold", "v"): read_predictions(tmp_path)}).set_index("id")
    assert j.loc["a", "threshold_v"] == 0.3 and j.loc["b", "threshold_v"] == 0.8
