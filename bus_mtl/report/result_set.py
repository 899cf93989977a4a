"""What a report shows, whatever the folder: :class:`ResultSet` (one set of per-image
results with its metrics and intervals) and :class:`Report`; the metrics and 95 % intervals
of a per-image frame (the project's own definitions:
:func:`bus_mtl.training.metrics.binary_metrics`,
:func:`bus_mtl.experiments.evaluate.bootstrap_intervals`), and the per-centre table."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bus_mtl.experiments.evaluate import CI_METRICS, N_BOOT, bootstrap_intervals

#: The metrics table's rows: key -> label (HD95 in pixels, the others fractions).
METRIC_ROWS = {
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95 (px)",
    "auc": "AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "acc": "Accuracy",
    "balanced_acc": "Balanced accuracy",
    "f1": "F1",
    "ece": "ECE",
    "brier": "Brier",
}


#: The per-image frame every reader returns (``ResultSet.frame``), in this order.
FRAME_COLUMNS = (
    "id",
    "label",
    "probability",
    "threshold",
    "call",
    "dice",
    "iou",
    "hd95",
    "uncertainty",
    "centre",
    "group",
    "image",
    "fold",
)


@dataclass
class ResultSet:
    """One set of per-image results and what belongs to it.

    Attributes:
        name: what the set is (``test part (fold 0)``, ``breast_lesions_usg (external)``).
        frame: one row per image, :data:`FRAME_COLUMNS` (``call``: called malignant at
            ``threshold``; ``image``: the file, ``""`` when the CSV does not say; ``fold``:
            -1 outside cv).
        metrics: point values (keys of :data:`METRIC_ROWS`, ``n``, ``n_malignant``,
            ``threshold``) and ``<name>_ci`` = ``[low, high]``.
        ci_source: where the intervals come from, in words.
        checkpoints: fold -> model file (key -1 outside cv): the model the gallery runs.
        samples: returns ``{id: Sample}`` for the gallery's ground-truth masks (may raise;
            the gallery then says why); ``None`` when the folder does not say.
        referral: ``metrics.json``'s referral rows, when stored.
        figures: stored figure files by kind (``roc``, ``reliability``, ``referral``).
        notes: sentences shown under the set's heading.
    """

    name: str
    frame: pd.DataFrame
    metrics: dict[str, Any]
    ci_source: str = ""
    checkpoints: dict[int, Path] = field(default_factory=dict)
    samples: Callable[[], dict[str, Any]] | None = None
    referral: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    threshold_text: str = ""

    @property
    def has_cls(self) -> bool:
        return bool(np.isfinite(self.frame["probability"].to_numpy(dtype=float)).any())

    @property
    def has_seg(self) -> bool:
        return bool(np.isfinite(self.frame["dice"].to_numpy(dtype=float)).any())

    @property
    def has_uncertainty(self) -> bool:
        return bool(np.isfinite(self.frame["uncertainty"].to_numpy(dtype=float)).any())


@dataclass
class Report:
    """Everything the HTML shows, read from one folder.

    Attributes:
        kind: one of :data:`KINDS`.
        folder: the folder read.
        title: the page title.
        provenance: ``(what, value)`` rows: command, data, split, seed, machine, date.
        sets: the result sets, each drawn as a section.
        fold_table: cv: one row per metric, ``mean ± std``, pooled, and each fold's value.
        compare_md: compare: ``compare.md``'s text (the table with paired statistics).
        compare_png: compare: the stored bar chart.
        curves: compare: per protocol, ``(variant, labels, probabilities, calls)`` for the
            ROC overlay.
        notes: sentences for the whole report.
    """

    kind: str
    folder: Path
    title: str
    provenance: list[tuple[str, str]] = field(default_factory=list)
    sets: list[ResultSet] = field(default_factory=list)
    fold_table: pd.DataFrame | None = None
    compare_md: str = ""
    compare_png: Path | None = None
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]] = field(
        default_factory=dict
    )
    notes: list[str] = field(default_factory=list)


def frame_metrics(frame: pd.DataFrame) -> dict[str, Any]:
    """The metrics of a frame: classification by
    :func:`bus_mtl.training.metrics.binary_metrics` (each row at its own threshold, as
    ``bus-mtl cv`` pools folds), Dice/IoU/HD95 as per-image means ignoring NaN."""
    from bus_mtl.training.metrics import binary_metrics

    labels = frame["label"].to_numpy()
    probs = frame["probability"].to_numpy(dtype=float)
    out: dict[str, Any] = {
        "n": int(len(frame)),
        "n_malignant": int((labels == 1).sum()),
    }
    for key in ("dice", "iou", "hd95"):
        v = frame[key].to_numpy(dtype=float)
        out[key] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    keep = np.isin(labels, (0, 1)) & np.isfinite(probs)
    if keep.any():
        values = binary_metrics(
            probs[keep], labels[keep], calls=frame["call"].to_numpy(dtype=bool)[keep]
        )
        out.update({k: float(v) for k, v in values.items()})
    thresholds = np.unique(frame["threshold"].to_numpy(dtype=float))
    out["threshold"] = float(thresholds[0]) if thresholds.size == 1 else math.nan
    return out


def frame_intervals(
    frame: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """95 % percentile bootstrap intervals of a frame's metrics (groups as units)."""
    groups = frame["group"].to_numpy(dtype=object)
    return bootstrap_intervals(
        frame["label"].to_numpy(),
        frame["probability"].to_numpy(dtype=float),
        frame["call"].to_numpy(dtype=bool),
        {k: frame[k].to_numpy(dtype=float) for k in ("dice", "iou")},
        groups if any(g for g in groups) else None,
        n_boot=n_boot,
        seed=seed,
    )


def result_from_frame(
    name: str,
    frame: pd.DataFrame,
    logged: Mapping[str, float] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    grouped: bool = False,
) -> ResultSet:
    """A :class:`ResultSet` from a per-image frame: point values as ``logged`` (a run's
    test metrics) where given, else from the frame (:func:`frame_metrics`); intervals
    bootstrapped from the frame (:func:`bus_mtl.experiments.evaluate.bootstrap_intervals`)."""
    metrics = frame_metrics(frame)
    from_log = [k for k in METRIC_ROWS if logged and logged.get(k) is not None]
    for key in from_log:
        metrics[key] = float(logged[key])
    cis, boot = frame_intervals(frame, n_boot, seed)
    metrics.update({f"{k}_ci": cis.get(k) for k in CI_METRICS})
    unit = (
        f"{boot['n_units']} units (near-duplicate groups of split.json; other images alone)"
        if grouped and boot["unit"] == "group"
        else f"{boot['n_units']} images"
    )
    ci_source = (
        f"bootstrapped here from the per-image CSV: {boot['n_resamples']} percentile "
        f"resamples over {unit}, seed {boot['seed']}"
    )
    notes = []
    if from_log:
        notes.append(
            "Point values: the run's logged test metrics (metrics.csv); intervals: "
            "bootstrap of its per-image CSV."
        )
    return ResultSet(name, frame, metrics, ci_source=ci_source, notes=notes)


def frame_from_predictions(
    pred: pd.DataFrame,
    threshold: float | np.ndarray,
    groups: Mapping[str, str] | None,
    malignant_calls: Callable[..., Any],
) -> pd.DataFrame:
    n = len(pred)
    probs = pred["prob"].to_numpy(dtype=float) if "prob" in pred else np.full(n, np.nan)
    t = np.broadcast_to(np.asarray(threshold, dtype=float), (n,)).copy()
    calls = malignant_calls(np.nan_to_num(probs, nan=-1.0), t).cpu().numpy().astype(bool)
    ids = pred["id"].astype(str)

    def col(name: str, default: Any = np.nan) -> Any:
        return pred[name] if name in pred else default

    frame = pd.DataFrame(
        {
            "id": ids,
            "label": pred["label"].astype(int),
            "probability": probs,
            "threshold": t,
            "call": calls,
            "dice": col("dice"),
            "iou": col("iou"),
            "hd95": col("hd95"),
            "uncertainty": col("uncertainty"),
            "centre": col("centre", "").fillna("").astype(str) if "centre" in pred else "",
            "group": [(groups or {}).get(i, "") for i in ids],
            "image": "",
            "fold": pred["fold"].astype(int) if "fold" in pred else -1,
        }
    )
    return frame[list(FRAME_COLUMNS)]


def centre_table(result: ResultSet, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame | None:
    """One row per centre (``None`` with a single centre): n, malignant, Dice, AUC,
    sensitivity, specificity (:func:`frame_metrics`) and their bootstrap intervals
    (:func:`frame_intervals`), each centre on its own images."""
    centres = result.frame["centre"].fillna("").astype(str)
    names = sorted(c for c in centres.unique())
    if len(names) < 2:
        return None
    rows = []
    for name in names:
        part = result.frame[centres == name]
        values = frame_metrics(part)
        cis, _ = frame_intervals(part, n_boot, seed)
        row: dict[str, Any] = {
            "centre": name or "(none)",
            "n": values["n"],
            "malignant": values["n_malignant"],
        }
        for key in ("dice", "auc", "sensitivity", "specificity"):
            row[key] = values.get(key, math.nan)
            row[f"{key}_ci"] = cis.get(key)
        rows.append(row)
    return pd.DataFrame(rows)
