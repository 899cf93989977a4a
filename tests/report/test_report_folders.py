"""The report of the other folder kinds: a ``bus-mtl main`` run (logged test metrics,
intervals bootstrapped from its per-image CSV with split.json's groups, its external check),
hand-made ``cv`` and ``compare`` folders, and folders that are none of them."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from bus_mtl.cli.main import main as bus_mtl
from bus_mtl.experiments.compare import read_groups, write_comparison
from bus_mtl.experiments.evaluate import bootstrap_intervals
from bus_mtl.experiments.results import pooled_metrics, read_predictions, write_cv_summary
from bus_mtl.report import write_report
from bus_mtl.report.collect import detect_kind
from bus_mtl.report.render import format_value, report_data
from bus_mtl.report.run_folder import read_logged_test_metrics


def test_run_folder(run_dir, tmp_path):
    assert detect_kind(run_dir) == "run"
    text = write_report(run_dir, tmp_path / "run.html", per_section=2, n_boot=300).read_text()
    sets = report_data(text)["sets"]
    assert [s["name"] for s in sets] == ["test part (fold 0)", "external (external)"]
    shown = sets[0]["metrics"]
    logged = read_logged_test_metrics(run_dir / "metrics.csv")
    for key in ("dice", "iou", "auc", "sensitivity", "specificity"):
        assert shown[key] == pytest.approx(logged[key], abs=1e-12), key
    # The intervals: the evaluate command's bootstrap of the per-image CSV, groups as units.
    pred = pd.read_csv(run_dir / "test_predictions.csv", dtype={"id": str})
    groups = read_groups(run_dir / "split.json")
    probs = pred["prob"].to_numpy(dtype=float)
    cis, _ = bootstrap_intervals(
        pred["label"].to_numpy(),
        probs,
        probs > logged["decision_threshold"],
        {k: pred[k].to_numpy(dtype=float) for k in ("dice", "iou")},
        np.array([groups.get(i, "") for i in pred["id"]], dtype=object),
        n_boot=300,
        seed=0,
    )
    for key, interval in cis.items():
        assert shown[f"{key}_ci"] == pytest.approx(interval), key
    external = json.loads((run_dir / "external_ext" / "metrics.json").read_text())
    assert sets[1]["metrics"]["auc"] == external["auc"]
    # Provenance from config.yaml and split.json; the gallery found the synthetic images.
    assert "seed_everything 0" in text and "kfold (version 2), seed 0, 4 fold(s), fold 0" in text
    assert "accelerator cpu" in text and "best-epoch=000.ckpt" in text
    assert "Ground-truth masks not found" not in text and "Gallery skipped" not in text
    assert text.count('src="data:image/jpeg;base64,') >= 4
    assert "the per-image CSV has no uncertainty column" in text  # the test part's CSV


def _fold(root, k, ids, labels, probs, dice, threshold, centre):
    d = root / f"fold_{k}"
    d.mkdir(parents=True)
    metrics = {
        "test/dice": float(np.mean(dice)),
        "test/auc": 0.8,
        "test/decision_threshold": threshold,
    }
    (d / "metrics.json").write_text(
        json.dumps({"fold": k, "metrics": metrics, "checkpoint": str(root / "gone.ckpt")})
    )
    pd.DataFrame(
        {"id": ids, "centre": centre, "label": labels, "prob": probs, "dice": dice, "iou": dice}
    ).to_csv(d / "test_predictions.csv", index=False)


@pytest.fixture
def cv_dir(tmp_path):
    """Two folds of 20 images, thresholds 0.4 and 0.6, one centre per fold."""
    rng = np.random.default_rng(0)
    out = tmp_path / "cv"
    for k, (threshold, centre) in enumerate(((0.4, "busi"), (0.6, "udiat"))):
        labels = np.array([0, 1] * 10)
        probs = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, 20), 0.01, 0.99)
        ids = [f"{centre}/img{k}_{i}" for i in range(20)]
        _fold(out, k, ids, labels, probs, rng.uniform(0.4, 0.9, 20), threshold, centre)
    write_cv_summary(out)
    return out


def test_cv_folder(cv_dir, tmp_path):
    assert detect_kind(cv_dir) == "cv"
    text = write_report(cv_dir, tmp_path / "cv.html", n_boot=200).read_text()
    shown = report_data(text)["sets"][0]["metrics"]
    pooled = pooled_metrics(read_predictions(cv_dir))
    for key in ("dice", "auc", "sensitivity", "specificity"):
        assert shown[key] == pytest.approx(pooled[key]), key
        assert shown[f"{key}_ci"][0] <= shown[key] <= shown[f"{key}_ci"][1], key
    assert ">Per fold<" in text and "<th>fold 0</th><th>fold 1</th>" in text
    assert ">busi<" in text and ">udiat<" in text  # the per-centre table
    assert "each fold&#x27;s stored threshold" in text
    assert "Gallery skipped: no model file reachable" in text
    assert text.count("<img") == 4  # ROC per fold, reliability, confusion, thresholds


def test_compare_folder(tmp_path):
    rng = np.random.default_rng(1)
    n = 40
    labels = np.array([0, 1] * (n // 2))
    folds = np.arange(n) % 2
    ids = [f"busi/l{i}" for i in range(n)]
    for variant, signal in (("seg_features_effnet", 1.2), ("segresnet", 0.4)):
        probs = 1 / (1 + np.exp(-(labels * signal + rng.normal(0, 0.6, n))))
        for k in (0, 1):
            sel = folds == k
            _fold(
                tmp_path / variant,
                k,
                np.asarray(ids)[sel],
                labels[sel],
                probs[sel],
                rng.uniform(0.5, 0.9, sel.sum()),
                0.5,
                "busi",
            )
    folders = {("kfold", v): tmp_path / v for v in ("seg_features_effnet", "segresnet")}
    write_comparison(tmp_path, folders, n_boot=100)
    assert detect_kind(tmp_path) == "compare"
    text = write_report(tmp_path, tmp_path / "compare.html", n_boot=100).read_text()
    assert ">Comparison of variants<" in text
    table = (tmp_path / "compare.md").read_text()
    header = "p Dice Wilcoxon (raw / Holm)"
    assert header in table and f"<th>{html.escape(header)}</th>" in text
    row = next(line for line in table.splitlines() if line.startswith("| kfold | segresnet"))
    p_values = row.split("|")[-2].strip()  # the paired test's p-values, as compare.md has them
    assert f'<td class="num">{html.escape(p_values)}</td>' in text
    sets = report_data(text)["sets"]
    assert [s["name"] for s in sets] == [
        "seg_features_effnet (kfold): pooled out-of-fold test images"
    ]
    assert "compare.png: mean ± std over folds" in text
    assert "every variant&#x27;s pooled out-of-fold ROC" in text


def test_not_a_results_folder(tmp_path, capsys):
    with pytest.raises(ValueError, match="not a results folder of bus-mtl"):
        detect_kind(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        detect_kind(tmp_path / "missing")
    assert bus_mtl(["report", str(tmp_path)]) == 2
    assert "bus-mtl report:" in capsys.readouterr().err


def test_cli_writes_and_prints_the_path(cv_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "r.html"
    assert bus_mtl(["report", str(cv_dir), "-o", str(out), "--n-boot", "50"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert out.is_file()
    assert format_value(0.5, "dice") == "0.500" and format_value(12.34, "hd95") == "12.3"
