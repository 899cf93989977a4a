"""cv results list the cross-class near-duplicate groups (no training: split and summary
only; fixture ``conflicting_busi_root`` in tests/conftest.py)."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from bus_mtl.experiments.cv import build_datamodule, fold_jobs, record_inputs, write_split
from bus_mtl.experiments.results import CONFLICTS_CSV, write_cv_summary

CONFLICT = ["busi/benign (2)", "busi/malignant (9)"]


def _config(tmp_path, root, **data):
    cfg = {
        "data": {
            "sources": {"class_path": "bus_mtl.data.BUSISource", "init_args": {"root": str(root)}},
            "image_size": 64,
            "cache_dir": str(tmp_path / "cache"),
            **data,
        }
    }
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_drop_conflicting_from_yaml(tmp_path, conflicting_busi_root):
    cfg = _config(tmp_path, conflicting_busi_root, drop_conflicting=True)
    assert build_datamodule([cfg]).drop_conflicting is True
    cfg = _config(tmp_path, conflicting_busi_root)
    assert build_datamodule([cfg]).drop_conflicting is False  # default: data as published
    assert build_datamodule([cfg], ["--data.drop_conflicting=true"]).drop_conflicting is True


def test_write_split_writes_conflicts_and_variants_get_a_copy(tmp_path, conflicting_busi_root):
    cfg = _config(tmp_path, conflicting_busi_root)
    out = tmp_path / "cv"
    out.mkdir()
    write_split(build_datamodule([cfg]), out / "split.json", "kfold", folds=3)
    table = pd.read_csv(out / CONFLICTS_CSV, dtype={"test_fold": str})
    assert list(table["id"]) == CONFLICT and set(table["label_name"]) == {"benign", "malignant"}
    folds = json.loads((out / "split.json").read_text())["folds"]
    k = next(k for k, f in enumerate(folds) if CONFLICT[0] in f["test"])
    assert CONFLICT[1] in folds[k]["test"] and list(table["test_fold"]) == [str(k)] * 2
    # A folder sharing that split (a compare variant) gets the list beside its own results.
    variant = tmp_path / "compare" / "variant"
    record_inputs(variant, None, fold_jobs([cfg], variant, out / "split.json"))
    assert (variant / CONFLICTS_CSV).read_text() == (out / CONFLICTS_CSV).read_text()


def _fold(out, k, ids, labels):
    d = out / f"fold_{k}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"fold": k, "metrics": {"test/dice": 0.5}}))
    n = len(ids)
    pd.DataFrame(
        {"id": ids, "centre": ["busi"] * n, "label": labels, "prob": [0.5] * n, "dice": [0.5] * n}
    ).to_csv(d / "test_predictions.csv", index=False)


def test_summary_counts_conflicts(tmp_path):
    out = tmp_path / "cv"
    _fold(out, 0, ["busi/benign (1)", *CONFLICT], [0, 0, 1])
    _fold(out, 1, ["busi/benign (3)", "busi/malignant (4)"], [0, 1])
    pd.DataFrame(
        {"group": [0, 0], "id": CONFLICT, "label": [0, 1], "test_fold": ["0", "0"]}
    ).to_csv(out / CONFLICTS_CSV, index=False)
    payload = write_cv_summary(out)
    assert payload["conflicting_groups"] == {"groups": 1, "images": 2, "evaluated": 2}
    md = (out / "summary.md").read_text()
    assert "Cross-class near-duplicate groups (labels disagree): 1 groups, 2 images" in md
    assert "2 of these images are among the test predictions" in md
    # Dropped (data.drop_conflicting): listed, but none evaluated.
    (out / "fold_0" / "test_predictions.csv").unlink()
    _fold(tmp_path / "x", 0, ["busi/benign (1)"], [0])
    (tmp_path / "x" / "fold_0" / "test_predictions.csv").rename(
        out / "fold_0" / "test_predictions.csv"
    )
    assert write_cv_summary(out)["conflicting_groups"]["evaluated"] == 0
    # A folder without the list (made before it existed) says nothing about it.
    (out / CONFLICTS_CSV).unlink()
    assert "conflicting_groups" not in write_cv_summary(out)
    assert "Cross-class" not in (out / "summary.md").read_text()
