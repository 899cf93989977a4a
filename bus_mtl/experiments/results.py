"""Aggregate per-fold results: mean ± std tables, pooled out-of-fold metrics, file writers.

Layout read here (written by :mod:`bus_mtl.experiments.cv`)::

    OUT/fold_k/metrics.json           {"test/dice": 0.81, ...}   (one fold's test metrics)
    OUT/fold_k/test_predictions.csv   id, centre, label, prob, dice, iou, hd95, mask_area
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bus_mtl.experiments.stats import mean_std
from bus_mtl.training.metrics import ECE_BINS, PREDICTION_COLUMNS, binary_metrics

# The paper's table, in order. "params" comes from the checkpoint, not from a test metric.
TABLE_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "hd95",
    "auc",
    "acc",
    "sensitivity",
    "specificity",
    "f1",
    "params",
)
# Shown as percentages in Markdown (fractions in CSV/JSON).
PERCENT_METRICS = frozenset(
    {"dice", "iou", "auc", "acc", "sensitivity", "specificity", "f1", "balanced_acc"}
)
#: Cross-class near-duplicate groups of a cv folder (written by ``cv.write_split``).
CONFLICTS_CSV = "conflicting_groups.csv"


def fold_dirs(out: Path) -> list[Path]:
    """``OUT/fold_k`` folders sorted by k."""
    dirs = [p for p in Path(out).glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]))


def read_fold_metrics(out: Path, stage: str = "test") -> pd.DataFrame:
    """One row per finished fold (``metrics.json`` present), columns = metric names.

    The ``{stage}/`` prefix is dropped; a ``fold`` column holds k and ``fold_name`` the
    label stored beside the metrics (e.g. ``busi→udiat`` for the cross-centre protocol).
    """
    rows = []
    for d in fold_dirs(out):
        path = d / "metrics.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        row: dict[str, object] = {"fold": int(d.name[5:])}
        row["fold_name"] = data.get("fold_name", d.name)
        for key, value in data.get("metrics", data).items():
            if key.startswith(f"{stage}/"):
                row[key[len(stage) + 1 :]] = _as_float(value)
        if "params" in data:
            row["params"] = _as_float(data["params"])
        rows.append(row)
    return pd.DataFrame(rows)


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def summarize_folds(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and n over folds for every numeric metric column.

    Returns a frame indexed by metric with columns ``mean``, ``std``, ``n`` and one
    ``fold_k`` column per fold.
    """
    metrics = [
        c
        for c in per_fold.columns
        if c not in {"fold", "fold_name"} and pd.api.types.is_numeric_dtype(per_fold[c])
    ]
    rows = {}
    for name in metrics:
        values = per_fold[name].to_numpy(dtype=float)
        mean, std = mean_std(values)
        row = {"mean": mean, "std": std, "n": int((~np.isnan(values)).sum())}
        for k, v in zip(per_fold["fold"], values):
            row[f"fold_{int(k)}"] = v
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")


def read_predictions(out: Path) -> pd.DataFrame:
    """Pooled out-of-fold per-image predictions with a ``fold`` column."""
    frames = []
    for d in fold_dirs(out):
        path = d / "test_predictions.csv"
        if path.is_file():
            df = pd.read_csv(path)
            missing = [c for c in ("id", "label", "prob") if c not in df.columns]
            if missing:
                raise ValueError(f"{path}: missing columns {missing}")
            df.insert(1, "fold", int(d.name[5:]))
            df["threshold"] = _fold_threshold(d)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["id", "fold", *PREDICTION_COLUMNS[1:]])
    return pd.concat(frames, ignore_index=True)


def segmentation_resolution(pred: pd.DataFrame) -> str:
    """Where a results folder's Dice/IoU/HD95 were measured: ``"original"`` (each image's
    original size, HD95 in original pixels; the per-image CSVs then also hold the
    ``*_input`` working-resolution values) or ``"input"`` (the square network input, runs
    made before original-size metrics existed)."""
    return "original" if "dice_input" in pred.columns else "input"


RESOLUTION_NOTE = {
    "original": "Dice/IoU/HD95 at each image's original size (HD95 in original pixels)",
    "input": "Dice/IoU/HD95 at the square network input size (HD95 in input pixels)",
}


def _fold_threshold(fold_dir: Path) -> float:
    """The decision threshold a fold's test metrics were taken at (NaN when not recorded)."""
    path = fold_dir / "metrics.json"
    if not path.is_file():
        return math.nan
    data = json.loads(path.read_text())
    value = data.get("metrics", data).get("test/decision_threshold")
    return float(value) if value is not None else math.nan


def binary_rows(pred: pd.DataFrame) -> pd.DataFrame:
    """Rows with a benign/malignant label and a finite probability."""
    keep = pred["label"].isin([0, 1]) & np.isfinite(pred["prob"].astype(float))
    return pred[keep]


def pooled_metrics(pred: pd.DataFrame, threshold: float = 0.5, n_bins: int = ECE_BINS) -> dict:
    """Metrics over all out-of-fold images at once (not a mean of fold means).

    Classification by :func:`bus_mtl.training.metrics.binary_metrics`, the definition the
    training logs (and so each fold's ``metrics.json``) use: AUC by torchmetrics,
    "malignant" when ``prob > threshold``, ECE with ``n_bins`` (15) equal-width bins of the
    malignancy probability (L1), Brier of that probability. Each row is decided at its own
    fold's threshold (column ``threshold``, the operating point fitted on that fold's
    validation part, as ``read_predictions`` adds it); rows without one use ``threshold``.
    Classification uses rows labelled 0/1 with a finite ``prob``; Dice/IoU/HD95 are
    per-image means ignoring NaN (images where they do not apply).
    """
    out: dict[str, float] = {"n_images": float(len(pred))}
    for name in ("dice", "iou", "hd95"):
        if name in pred.columns:
            vals = pred[name].to_numpy(dtype=float)
            out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    cls = binary_rows(pred)
    if len(cls):
        t = np.full(len(cls), float(threshold))
        if "threshold" in cls.columns:
            given = cls["threshold"].to_numpy(dtype=float)
            t = np.where(np.isfinite(given), given, t)
        values = binary_metrics(
            cls["prob"].to_numpy(dtype=float), cls["label"].to_numpy(dtype=int), t, n_bins=n_bins
        )
        out.update({k: float(v) for k, v in values.items()})
        out["n_classified"] = float(len(cls))
    return out


def format_mean_std(mean: float, std: float, metric: str) -> str:
    """``81.19 ± 1.20`` for fractions shown as %, ``12.3 ± 0.4`` for HD95, ``4.1M`` for params."""
    if metric == "params":
        return "—" if not np.isfinite(mean) else f"{mean / 1e6:.2f}M"
    if not np.isfinite(mean):
        return "—"
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    digits = 2
    text = f"{mean * scale:.{digits}f}"
    if np.isfinite(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``frame`` (index not included; cells as str)."""
    cols = list(columns or frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: Path, data: object) -> None:
    """JSON with NaN written as ``null`` (strict JSON readers reject NaN)."""
    Path(path).write_text(json.dumps(_jsonable(data), indent=2) + "\n")


def conflicts_summary(out: Path, pred: pd.DataFrame | None = None) -> dict | None:
    """Counts from ``OUT/conflicting_groups.csv`` (None when the folder has none): cross-class
    near-duplicate ``groups``, their ``images``, and how many of those images are
    ``evaluated`` (present in the per-image test predictions ``pred``)."""
    path = Path(out) / CONFLICTS_CSV
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"id": str})
    ids = set(table["id"]) if "id" in table else set()
    evaluated = len(ids & set(pred["id"].astype(str))) if pred is not None and len(pred) else 0
    groups = table["group"].nunique() if "group" in table else 0
    return {"groups": int(groups), "images": len(ids), "evaluated": evaluated}


def write_cv_summary(out: Path, metrics: Iterable[str] | None = None) -> dict:
    """Write ``summary.csv``, ``summary.md``, ``summary.json`` for one cv folder.

    Returns the JSON payload: per-metric mean/std/n/fold values, per-fold rows and pooled
    out-of-fold metrics.
    """
    out = Path(out)
    per_fold = read_fold_metrics(out)
    if per_fold.empty:
        raise ValueError(f"{out}: no finished fold (no fold_*/metrics.json)")
    summary = summarize_folds(per_fold)
    if metrics is not None:
        wanted = [m for m in metrics if m in summary.index]
        summary = summary.loc[wanted + [m for m in summary.index if m not in wanted]]
    summary.to_csv(out / "summary.csv")
    pred = read_predictions(out)
    pooled = pooled_metrics(pred) if len(pred) else {}

    shown = summary.copy()
    shown["mean ± std"] = [
        format_mean_std(r["mean"], r["std"], str(m)) for m, r in summary.iterrows()
    ]
    shown["pooled"] = [
        format_mean_std(pooled.get(str(m), math.nan), math.nan, str(m)) for m in summary.index
    ]
    shown = shown.reset_index()
    fold_names = ", ".join(f"{int(r['fold'])} = {r['fold_name']}" for _, r in per_fold.iterrows())
    md = [
        f"# Cross-validation summary: {out.name}",
        "",
        f"{len(per_fold)} folds ({fold_names}). Mean ± sample std (ddof=1) over folds; "
        "'pooled' = computed once over all out-of-fold test images. Percentages for "
        f"fractions; {RESOLUTION_NOTE[segmentation_resolution(pred)]}.",
        "",
        markdown_table(shown, ["metric", "mean ± std", "pooled", "n"]),
        "",
    ]
    conflicts = conflicts_summary(out, pred)
    if conflicts is not None:
        md += [
            f"Cross-class near-duplicate groups (labels disagree): {conflicts['groups']} "
            f"groups, {conflicts['images']} images, listed in {CONFLICTS_CSV}; "
            f"{conflicts['evaluated']} of these images are among the test predictions "
            "(`data.drop_conflicting: true` leaves them out of every part).",
            "",
        ]
    (out / "summary.md").write_text("\n".join(md))
    payload = {
        "folds": per_fold.to_dict(orient="records"),
        "metrics": {
            str(m): {
                "mean": r["mean"],
                "std": r["std"],
                "n": int(r["n"]),
                "values": [r[c] for c in summary.columns if c.startswith("fold_")],
            }
            for m, r in summary.iterrows()
        },
        "pooled": pooled,
    }
    if conflicts is not None:
        payload["conflicting_groups"] = conflicts
    write_json(out / "summary.json", payload)
    return payload
