"""A training run's folder (``runs/main/<Net>/version_N`` of ``bus-mtl main`` or ``fit``):
its logged test metrics (``metrics.csv``), the per-image CSV of ``PerImagePredictions``
with intervals bootstrapped from it (``split.json``'s near-duplicate groups as units), its
best checkpoint, provenance from ``config.yaml``, ``split.json`` and ``budget.json``, and
the ``external_<name>/`` evaluations beside it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bus_mtl.experiments.evaluate import SCHEMA
from bus_mtl.report.evaluate_folder import read_evaluate
from bus_mtl.report.files import (
    config_samples,
    file_time,
    find_best_checkpoint,
    read_json,
    read_yaml,
    sources_text,
    split_groups,
)
from bus_mtl.report.result_set import Report, frame_from_predictions, result_from_frame


def run_report(folder: Path, n_boot: int, seed: int) -> Report:
    """The :class:`Report` of a training run's version folder: its test part (when it was
    tested) and each ``external_<name>/`` evaluation."""
    config = read_yaml(folder / "config.yaml")
    logged = read_logged_test_metrics(folder / "metrics.csv")
    ckpt = find_best_checkpoint(folder)
    fold = (config.get("data") or {}).get("fold")
    report = Report("run", folder, f"Training run: {_run_name(folder)}")
    report.provenance = _run_provenance(folder, config, ckpt)
    predictions = folder / "test_predictions.csv"
    groups = split_groups(folder / "split.json")
    if predictions.is_file():
        threshold = logged.get("decision_threshold")
        notes = []
        if threshold is None and ckpt is not None:
            threshold = _checkpoint_threshold(ckpt)
        if threshold is None:
            threshold = 0.5
            notes.append(
                "No decision threshold recorded (no test/decision_threshold in metrics.csv, no "
                "checkpoint): the calls use P > 0.5."
            )
        frame = read_test_predictions(predictions, threshold, groups)
        name = f"test part (fold {fold})" if fold is not None else "test part"
        result = result_from_frame(name, frame, logged, n_boot, seed, groups is not None)
        result.checkpoints = {-1: ckpt} if ckpt is not None else {}
        result.samples = config_samples(folder / "config.yaml")
        result.notes += notes
        result.threshold_text = (
            f"malignant when P > {threshold:.4f} (the checkpoint's stored operating point, "
            "as the test step used it)"
        )
        report.sets.append(result)
    else:
        report.notes.append(
            f"{folder}: no test_predictions.csv (the run has not been tested, or ran without "
            "the PerImagePredictions callback): no test-part section."
        )
    for ext in sorted(folder.glob("external_*/metrics.json")):
        if read_json(ext).get("schema") == SCHEMA:
            result = read_evaluate(ext.parent)
            result.name = f"{result.name} (external)"
            report.sets.append(result)
    return report


def _run_name(folder: Path) -> str:
    return "/".join(folder.resolve().parts[-3:])


def read_logged_test_metrics(path: Path) -> dict[str, float]:
    """The ``test/*`` values a Lightning ``metrics.csv`` logged (the last row holding
    each), without the prefix; ``{}`` without the file."""
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    out: dict[str, float] = {}
    for col in table.columns:
        if col.startswith("test/"):
            values = pd.to_numeric(table[col], errors="coerce").dropna()
            if len(values):
                out[col[len("test/") :]] = float(values.iloc[-1])
    return out


def _checkpoint_threshold(ckpt: Path) -> float | None:
    import torch

    try:
        meta = torch.load(ckpt, map_location="cpu", weights_only=True).get("bus_mtl", {})
    except Exception:  # an unreadable checkpoint: the report says it has no threshold
        return None
    value = meta.get("decision_threshold", meta.get("threshold"))
    return float(value) if value is not None else None


def read_test_predictions(
    path: Path, threshold: float | np.ndarray, groups: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """A ``PerImagePredictions`` CSV (``id, centre, label, prob, dice, iou, hd95,
    mask_area``) as the report's frame, called malignant when ``prob > threshold``
    (:func:`bus_mtl.training.metrics.malignant_calls`, the test step's rule)."""
    from bus_mtl.training.metrics import malignant_calls

    pred = pd.read_csv(path, dtype={"id": str})
    return frame_from_predictions(pred, threshold, groups, malignant_calls)


def _run_provenance(
    folder: Path, config: Mapping[str, Any], ckpt: Path | None
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    budget = folder / "budget.json"
    if budget.is_file() and (folder / "config.yaml").is_file():
        from bus_mtl.training.budget import reproduce_command

        record = read_json(budget)
        rows.append(
            ("command", reproduce_command(["--config", str(folder / "config.yaml")], record))
        )
        rows.append(
            (
                "time budget",
                f"{record.get('epochs_run', '?')} epoch(s) in "
                f"{float(record.get('elapsed_s', 0)) / 60:.1f} of {record.get('minutes', '?')} min",
            )
        )
    elif (folder / "config.yaml").is_file():
        rows.append(("command", f"bus-mtl fit --config {folder / 'config.yaml'}"))
    else:
        rows.append(("command", "not recorded"))
    data = config.get("data") or {}
    model = config.get("model") or {}
    trainer = config.get("trainer") or {}
    net = model.get("net") or {}
    rows.append(
        (
            "model",
            f"{net.get('class_path', '?')} {json.dumps(net.get('init_args') or {})}, "
            f"TTA {model.get('tta', 'none')}",
        )
    )
    rows.append(("checkpoint", str(ckpt) if ckpt is not None else "none found in checkpoints/"))
    rows.append(("data", sources_text(data.get("sources"))))
    rows.append(("split", _split_text(folder / "split.json", data)))
    seed = config.get("seed_everything")
    rows.append(
        (
            "seed",
            f"seed_everything {seed}, data.seed {data.get('seed', '?')}"
            if seed is not None
            else "not recorded",
        )
    )
    rows.append(
        (
            "machine",
            f"accelerator {trainer.get('accelerator', '?')}, "
            f"devices {trainer.get('devices', '?')}, "
            f"precision {trainer.get('precision', '?')}, {data.get('image_size', '?')} px "
            f"({data.get('resize', 'squash')}), batch {data.get('batch_size', '?')}"
            if trainer
            else "not recorded",
        )
    )
    rows.append(("date", file_time(folder / "metrics.csv") or file_time(ckpt) or "not recorded"))
    return rows


def _split_text(path: Path, data: Mapping[str, Any]) -> str:
    if not path.is_file():
        return f"{data.get('split', '?')}, fold {data.get('fold', '?')} (no split.json)"
    split = read_json(path)
    fold = int(data.get("fold") or 0)
    folds = split.get("folds") or []
    sizes = ""
    if 0 <= fold < len(folds):
        part = folds[fold]
        sizes = ", " + ", ".join(f"{k} {len(part.get(k, []))}" for k in ("train", "val", "test"))
    return (
        f"{split.get('kind', '?')} (version {split.get('version', 1)}), seed "
        f"{split.get('seed', '?')}, {split.get('n_folds', '?')} fold(s), fold {fold}{sizes}; "
        f"{len(split.get('groups') or [])} near-duplicate groups (pHash distance <= "
        f"{split.get('dup_threshold', '?')}); file {path}"
    )
