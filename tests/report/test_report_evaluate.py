"""The report of a ``bus-mtl evaluate`` folder: its sections, its numbers (those of
metrics.json, as stored), its figures and gallery as embedded images, the per-centre table,
and the gallery's note when the model is gone."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pandas as pd

from bus_mtl.experiments.evaluate import CI_METRICS
from bus_mtl.report import write_report
from bus_mtl.report.evaluate_folder import read_evaluate
from bus_mtl.report.gallery import SECTIONS, choose_cases
from bus_mtl.report.render import format_ci, format_value, report_data
from bus_mtl.training.metrics import binary_metrics

FIGURES = 5  # ROC, reliability, confusion matrix, sensitivity/specificity, referral


def test_sections_and_provenance(eval_report, eval_dir):
    text = eval_report.read_text()
    m = json.loads((eval_dir / "metrics.json").read_text())
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for anchor in ('id="provenance"', 'id="set-0"'):
        assert anchor in text
    for heading in (
        "Provenance",
        "Metrics",
        "Figures",
        "Per centre",
        "Gallery",
        *SECTIONS.values(),
    ):
        assert f">{html.escape(heading)}<" in text, heading
    assert html.escape(m["command"]) in text and m["created"] in text
    assert html.escape(m["model"]["path"]) in text


def test_numbers_are_those_of_metrics_json(eval_report, eval_dir):
    text = eval_report.read_text()
    m = json.loads((eval_dir / "metrics.json").read_text())
    shown = report_data(text)["sets"][0]["metrics"]
    for key in ("n", "n_malignant", "dice", "iou", "hd95", "auc", "sensitivity", "specificity"):
        assert shown[key] == m[key], key
    for key in ("ece", "brier", "threshold"):
        assert shown[key] == m[key], key
    for key in CI_METRICS:
        assert shown[f"{key}_ci"] == m[f"{key}_ci"], key
        cell = f'data-metric="{key}">{format_value(m[key], key)}</td><td class="num">'
        assert cell + format_ci(m[f"{key}_ci"], key) in text, key
    assert np.isfinite(m["auc"]) and m["auc_ci"][0] < m["auc"] < m["auc_ci"][1]


def test_figures_and_gallery_are_embedded(eval_report, eval_dir):
    text = eval_report.read_text()
    frame = read_evaluate(eval_dir).frame
    tiles = sum(len(ids) for ids in choose_cases(frame, 3).values())
    assert tiles >= 6  # worst Dice and typical cases at least
    assert text.count("<img") == FIGURES + 2 * tiles  # contours + CAM per case
    assert text.count('src="data:image/png;base64,') == FIGURES
    assert text.count('src="data:image/jpeg;base64,') == 2 * tiles
    # Self-contained: every src/href is a data URI or an anchor of the page.
    assert not re.search(r'(?:src|href)="(?!data:|#)', text)
    assert "Gallery skipped" not in text and "CAM needs" not in text


def test_per_centre_table(eval_report, eval_dir):
    text = eval_report.read_text()
    per_image = pd.read_csv(eval_dir / "per_image.csv")
    for centre, part in per_image.groupby("centre"):
        assert f'<td class="key">{centre}</td><td class="num">{len(part)}</td>' in text
        calls = (part["predicted_class"] == "malignant").to_numpy()
        auc = float(binary_metrics(part["probability"], part["label"], calls=calls)["auc"])
        row = text.split(f'<td class="key">{centre}</td>', 1)[1].split("</tr>", 1)[0]
        assert f">{format_value(auc, 'auc')} [" in row


def test_gallery_says_why_it_is_missing(eval_dir, tmp_path):
    moved = tmp_path / "ext"
    shutil.copytree(eval_dir, moved)
    metrics = json.loads((moved / "metrics.json").read_text())
    metrics["model"]["path"] = str(tmp_path / "gone.ckpt")
    (moved / "metrics.json").write_text(json.dumps(metrics))
    text = write_report(moved, n_boot=50).read_text()
    assert "Gallery skipped: no model file reachable" in text
    assert html.escape(str(tmp_path / "gone.ckpt")) in text
    assert text.count("<img") == FIGURES
    assert (moved / "report.html").is_file()  # the default place


def test_no_gallery_cases(eval_dir, tmp_path):
    text = write_report(eval_dir, tmp_path / "r.html", per_section=0, n_boot=50).read_text()
    assert text.count("<img") == FIGURES and "Gallery not drawn" in text
