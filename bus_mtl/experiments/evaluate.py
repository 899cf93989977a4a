"""External validation: a trained model scored on a labelled set where every image is a test
image (``bus-mtl evaluate``; ``bus-mtl main`` runs it on BrEaST-Lesions_USG).

The flow, top to bottom in :func:`evaluate`::

    samples (a manifest or a source preset, read by bus_mtl.data)
      -> per image: the image and the OR of its masks (bus_mtl.data.io; sizes checked)
         -> predictor.raw_outputs: the model as deployed (its own flip TTA, temperature,
            operating point) and its two flip views
         -> Dice / IoU / HD95 at the image's original size (the training test step's
            SegmentationMetrics.per_image_values), P(malignant) and the malignant call
            (ClassificationMetrics' rule), the flip uncertainty
      -> the metrics over all images (SegmentationMetrics / ClassificationMetrics.compute:
         the definitions of the training logs and of bus-mtl cv)
      -> 95 % percentile bootstrap intervals: the `group` column's patients resampled when
         there is one, else images (stats.cluster_bootstrap_weights, as bus-mtl compare)
      -> the referral curve: the same metrics on the cases kept when the most uncertain
         are referred to a radiologist
      -> OUT/metrics.json, per_image.csv, roc.png, reliability.png, referral.png

Nothing is fitted here: the temperature and the decision threshold are the model's (a
``threshold`` argument overrides the decision threshold), so the numbers say how the
model as trained does on images it has never seen.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bus_mtl import __version__
from bus_mtl.data.errors import DataError, Problem
from bus_mtl.data.io import read_image, read_masks
from bus_mtl.data.sample import CLASS_NAMES, Sample
from bus_mtl.experiments.results import write_json
from bus_mtl.experiments.stats import cluster_bootstrap_weights, unit_codes, weighted_auc
from bus_mtl.inference.predictor import BasePredictor, flip_uncertainty
from bus_mtl.training.metrics import (
    ClassificationMetrics,
    SegmentationMetrics,
    binary_metrics,
    malignant_calls,
)

SCHEMA = "bus_mtl.evaluate/1"
METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
ROC_FILE = "roc.png"
RELIABILITY_FILE = "reliability.png"
REFERRAL_FILE = "referral.png"
#: per_image.csv, in order. ``label``: 0 benign, 1 malignant, 2 normal (as cv's CSVs).
PER_IMAGE_COLUMNS = (
    "id",
    "image",
    "label",
    "label_name",
    "probability",
    "predicted_class",
    "dice",
    "iou",
    "hd95",
    "mask_area",
    "target_area",
    "uncertainty",
    "centre",
    "group",
)
N_BOOT = 2000
CI_LEVEL = 0.95
#: Shares of the cases, the most uncertain first, handed to a radiologist.
REFERRAL_FRACTIONS = (0.1, 0.2, 0.3)
#: Metrics given a bootstrap interval (``<name>_ci`` in metrics.json).
CI_METRICS = ("dice", "iou", "auc", "sensitivity", "specificity")
UNCERTAINTY_DEFINITION = (
    "|P(malignant | image) - P(malignant | left-right mirror)|: the disagreement of the two "
    "flip views, each with the model's temperature (run even when the model does not use "
    "flip TTA)"
)
_SEG_KEYS = ("dice", "iou", "hd95", "mask_area", "target_area")


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and wrote.

    Attributes:
        out_dir: the folder holding the files below.
        metrics: the content of ``metrics.json`` (NaN where undefined; ``null`` in the file).
        per_image: one row per image, columns :data:`PER_IMAGE_COLUMNS`.
    """

    out_dir: Path
    metrics: dict[str, Any]
    per_image: pd.DataFrame

    @property
    def paths(self) -> dict[str, Path]:
        """Every file written, by kind (``metrics``, ``per_image``, ``roc``, ...)."""
        names = {"metrics": METRICS_FILE, **self.metrics.get("files", {})}
        return {k: self.out_dir / v for k, v in names.items() if (self.out_dir / v).is_file()}

    def table(self, name: str | None = None) -> str:
        """The one-row summary table (:func:`format_table`)."""
        return format_table([(name or self.metrics.get("name") or "evaluated", self.metrics)])


# ---------------------------------------------------------------------------------------------
# The whole run


def evaluate(
    predictor: BasePredictor,
    samples: Iterable[Sample] | Any,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    referral_fractions: Sequence[float] = REFERRAL_FRACTIONS,
    name: str = "",
    model: str | None = None,
    data: str | Mapping[str, Any] | None = None,
    command: str | None = None,
    progress: bool = False,
    plots: bool = True,
) -> EvaluationResult:
    """Score ``predictor`` on every sample and write ``out_dir``'s files.

    Args:
        predictor: an ONNX :class:`~bus_mtl.inference.Predictor` or a
            :class:`~bus_mtl.inference.TorchPredictor` (``from_checkpoint``); its mask
            threshold, temperature and decision threshold are used as stored.
        samples: :class:`~bus_mtl.data.Sample` records, or a source (anything with
            ``samples()``, e.g. ``ManifestSource(csv)``).
        out_dir: created if needed; ``metrics.json``, ``per_image.csv``, ``roc.png``,
            ``reliability.png`` and ``referral.png`` are written there.
        threshold: the malignancy decision threshold in (0, 1) instead of the model's.
        n_boot, seed: bootstrap resamples and their seed (intervals are reproducible).
        referral_fractions: shares of the cases referred, in (0, 1).
        name: what the evaluated set is called in the table.
        model, data, command: recorded in ``metrics.json``: the model file, where the
            samples came from (a description, or a mapping merged into ``data``, e.g.
            ``{"source": ..., "files": [manifest paths]}``), the command line.
        progress: show a progress bar.
        plots: write the PNG figures.

    Raises:
        DataError: every unreadable image or mask and every mask whose size differs from
            its image, all at once, before anything is written.
        ValueError: no samples, a threshold outside (0, 1), a referral fraction outside
            (0, 1), or a predictor with its own (non-model) flip averaging.
    """
    start = time.perf_counter()
    if hasattr(samples, "samples") and callable(samples.samples):
        samples = samples.samples()
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to evaluate: the manifest or source lists no image")
    info = predictor.info
    if predictor.mirror_average and info.tta == "none":
        raise ValueError(
            "the predictor averages the probabilities of the image and its mirror itself "
            "(mirror_average=True), which the model was not calibrated for: evaluate scores "
            "the model as trained; build the predictor with mirror_average=False (a "
            "checkpoint trained with model.tta: hflip has its flip inside, calibrated)"
        )
    bad = [f for f in referral_fractions if not 0.0 < float(f) < 1.0]
    if bad:
        raise ValueError(f"referral fractions must be in (0, 1), got {bad}")
    decision = _decision_threshold(predictor, threshold)

    frame, seg, cls = _score_samples(predictor, samples, decision, progress)
    metrics: dict[str, Any] = {"schema": SCHEMA, "name": name, **_counts(frame)}
    if seg is not None:
        metrics.update({k: float(v) for k, v in seg.compute().items()})
    else:
        metrics.update(
            dict.fromkeys(("dice", "dice_lesion", "iou", "hd95", "hd95_undefined"), math.nan)
        )
    metrics.update(_classification(cls))
    metrics.update(
        threshold=decision if info.num_classes == 1 else math.nan,
        threshold_source="override" if threshold is not None else "model",
        threshold_rule=_threshold_rule(info, threshold),
        mask_threshold=float(predictor.threshold),
        temperature=float(info.temperature),
        segmentation_resolution="original",
    )
    cis, boot = bootstrap_intervals(
        frame["label"].to_numpy(),
        frame["probability"].to_numpy(dtype=float),
        frame["malignant_call"].to_numpy(dtype=bool),
        {k: frame[k].to_numpy(dtype=float) for k in ("dice", "iou")},
        frame["group"].to_numpy(dtype=object),
        n_boot=n_boot,
        seed=seed,
    )
    metrics.update({f"{k}_ci": cis.get(k, [math.nan, math.nan]) for k in CI_METRICS})
    metrics["bootstrap"] = boot
    available = bool(info.has_cls) and bool(np.isfinite(frame["uncertainty"]).any())
    metrics["uncertainty"] = {
        "definition": UNCERTAINTY_DEFINITION,
        "available": available,
        "mean": float(np.nanmean(frame["uncertainty"])) if available else math.nan,
        "note": "" if available else _no_uncertainty_reason(info),
    }
    metrics["referral"] = (
        referral_curve(frame, (0.0, *sorted(float(f) for f in referral_fractions)))
        if available
        else []
    )
    metrics["model"] = _model_record(predictor, model)
    where = dict(data) if isinstance(data, Mapping) else {"source": data or ""}
    metrics["data"] = {
        "source": "",
        "files": [],
        **where,
        "centres": dict(Counter(frame["centre"])),
    }
    metrics["command"] = command or ""
    metrics["created"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    metrics["bus_mtl_version"] = __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image = frame[list(PER_IMAGE_COLUMNS)]
    per_image.to_csv(out_dir / PER_IMAGE_FILE, index=False, float_format="%.9g")
    files = {"per_image": PER_IMAGE_FILE}
    if plots:
        files.update(_write_plots(frame, metrics, out_dir, name))
    metrics["files"] = files
    metrics["elapsed_s"] = round(time.perf_counter() - start, 2)
    write_json(out_dir / METRICS_FILE, metrics)
    return EvaluationResult(out_dir, metrics, per_image.reset_index(drop=True))


def _decision_threshold(predictor: BasePredictor, threshold: float | None) -> float:
    if threshold is None:
        return float(predictor.decision_threshold)
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(
            f"threshold must be in (0, 1) (a malignancy probability), got {threshold!r}"
        )
    return float(threshold)


def _threshold_rule(info: Any, threshold: float | None) -> str:
    if info.num_classes != 1:
        return "argmax"
    if threshold is not None:
        return "given"
    # Exports and checkpoints from before the rule was recorded: the mask threshold.
    return info.threshold_rule or "unrecorded"


def _no_uncertainty_reason(info: Any) -> str:
    if not info.has_cls:
        return "the model has no classification head"
    return (
        "the model's graph averages the image and its mirror itself, so the two views are "
        "not observable: evaluate the checkpoint (--ckpt), or an export made with --tta none"
    )


def _model_record(predictor: BasePredictor, path: str | None) -> dict[str, Any]:
    info = predictor.info
    fmt = "onnx" if hasattr(predictor, "session") else "checkpoint"
    return {
        "path": str(path or getattr(predictor, "model_path", "") or ""),
        "format": fmt,
        "variant": info.variant,
        "tta": info.tta,
        "image_size": info.image_size,
        "resize": info.resize,
        "num_classes": info.num_classes,
        "has_seg": info.has_seg,
        "has_cls": info.has_cls,
        "stored_decision_threshold": float(info.class_threshold),
    }


# ---------------------------------------------------------------------------------------------
# Per image


def _score_samples(
    predictor: BasePredictor, samples: list[Sample], decision: float, progress: bool
) -> tuple[pd.DataFrame, SegmentationMetrics | None, ClassificationMetrics | None]:
    """One row per sample and the two metrics, filled the way the training test step fills
    them (per-image values added with ``update(per_image=...)``; calibrated logits)."""
    info = predictor.info
    k = info.num_classes
    seg = SegmentationMetrics(threshold=float(predictor.threshold)) if info.has_seg else None
    cls = ClassificationMetrics(num_classes=k, threshold=decision) if info.has_cls else None
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for sample in _progress(samples, progress):
        try:
            gray = read_image(sample.image)
            target = read_masks(sample.masks, gray.shape)
        except DataError as err:
            problems.extend(err.problems)
            continue
        if problems:
            continue  # the set has a problem: only collect the others, run no model
        raw = predictor.raw_outputs(gray, views=True)
        row = _row(sample)
        if seg is not None:
            if raw.mask_logits is None:
                raise RuntimeError("the model metadata says it segments but it gave no mask")
            logits = torch.as_tensor(np.ascontiguousarray(raw.mask_logits, dtype=np.float32))
            values = seg.per_image_values(
                logits[None, None], [torch.from_numpy(target)], resize=info.resize
            )
            seg.update(per_image=values)
            row.update({key: float(values[key][0]) for key in _SEG_KEYS})
        if cls is not None:
            if raw.logits is None:
                raise RuntimeError("the model metadata says it classifies but it gave no logits")
            # As ClassificationMetrics.update takes them: logits / T, in float32.
            scaled = torch.as_tensor(raw.logits / info.temperature, dtype=torch.float32)[None]
            if k == 1:
                p = float(torch.sigmoid(scaled)[0, 0])
                predicted = int(bool(malignant_calls(p, decision)))
            else:
                probs = torch.softmax(scaled, dim=1)[0]
                p, predicted = float(probs[1]), int(probs.argmax())
            row.update(
                probability=p,
                predicted_class=info.class_names[predicted],
                malignant_call=predicted == 1,
                logits=scaled[0],
            )
            if raw.view_logits is not None:
                row["uncertainty"] = flip_uncertainty(raw.view_logits, info.temperature)
        rows.append(row)
    if problems:
        raise DataError(problems)
    frame = pd.DataFrame(rows)
    if cls is not None:
        # Labels the classifier can score: benign/malignant (and normal for K = 3).
        scored = frame["label"].isin(range(3 if k == 3 else 2)).to_numpy()
        if scored.any():
            cls.update(
                torch.stack(list(frame.loc[scored, "logits"])),
                torch.tensor(frame.loc[scored, "label"].to_numpy(dtype=np.int64)),
            )
    return frame, seg, cls


def _row(sample: Sample) -> dict[str, Any]:
    """A sample's row before the model runs: what a head the model lacks leaves empty."""
    label = int(sample.label)
    return {
        "id": sample.id,
        "image": str(Path(sample.image).absolute()),
        "label": label,
        "label_name": CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else "",
        **dict.fromkeys((*_SEG_KEYS, "probability", "uncertainty"), math.nan),
        "predicted_class": "",
        "malignant_call": False,
        "centre": sample.centre,
        "group": sample.group or "",
    }


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description="evaluating", transient=True)


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    labels = frame["label"].to_numpy()
    return {
        "n": len(frame),
        "n_benign": int((labels == 0).sum()),
        "n_malignant": int((labels == 1).sum()),
        "n_normal": int((labels == 2).sum()),
    }


def _classification(cls: ClassificationMetrics | None) -> dict[str, float]:
    names = ("auc", "acc", "sensitivity", "specificity", "f1", "balanced_acc", "ece", "brier")
    if cls is None or not cls.probs:
        return dict.fromkeys(names, math.nan) | {"n_classified": 0}
    out = {name: float(value) for name, value in cls.compute().items()}
    out["n_classified"] = int(sum(len(p) for p in cls.probs))
    return out


# ---------------------------------------------------------------------------------------------
# Intervals and the referral curve


def _scored(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Rows with a benign/malignant label and a probability: what AUC and the rates use."""
    labels = np.asarray(labels)
    return np.isin(labels, (0, 1)) & np.isfinite(np.asarray(probs, dtype=float))


def bootstrap_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    calls: np.ndarray,
    means: Mapping[str, np.ndarray] | None = None,
    groups: np.ndarray | Sequence | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Percentile bootstrap intervals of AUC, sensitivity, specificity and of the mean of
    each array in ``means`` (e.g. per-image Dice), all from the same resamples.

    Each resample draws the independent units (``groups``: equal values form one unit, a
    patient; ``None``/``""`` an image of its own; all images when ``groups`` is None) with
    replacement (:func:`bus_mtl.experiments.stats.cluster_bootstrap_weights`). AUC is the
    weighted Mann-Whitney statistic (ties 1/2: torchmetrics' AUROC), the rates are weighted
    counts of ``calls`` (the malignant calls at the threshold used). Resamples where a value
    is undefined (one class drawn) are left out of its interval.

    Args:
        labels: (N,) 0 benign, 1 malignant; other values are left out of AUC and the rates.
        probs: (N,) P(malignant), NaN for images without one.
        calls: (N,) bool, called malignant.
        means: name -> (N,) per-image values whose mean gets an interval (NaN ignored).

    Returns:
        ``({name: [low, high]}, {"n_resamples", "seed", "level", "method", "unit",
        "n_units"})``.
    """
    labels = np.asarray(labels)
    n = labels.size
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        if not any(g is not None and g != "" for g in groups):
            groups = None
    units = unit_codes(groups, n)
    record = {
        "n_resamples": int(n_boot),
        "seed": int(seed),
        "level": float(level),
        "method": "percentile",
        "unit": "group" if groups is not None else "image",
        "n_units": int(np.unique(units).size),
    }
    out: dict[str, list[float]] = {}
    if n == 0 or n_boot < 1:
        return out, record
    w = cluster_bootstrap_weights(n_boot, groups, None, n, seed)
    tail = 100.0 * (1.0 - level) / 2.0

    def interval(values: np.ndarray) -> list[float]:
        values = values[np.isfinite(values)]
        if values.size < 2:
            return [math.nan, math.nan]
        lo, hi = np.percentile(values, [tail, 100.0 - tail])
        return [float(lo), float(hi)]

    for name, values in (means or {}).items():
        v = np.asarray(values, dtype=float)
        ok = np.isfinite(v)
        if ok.any():
            wk = w[:, ok]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = interval(wk @ v[ok] / wk.sum(axis=1))
    keep = _scored(labels, probs)
    if keep.any():
        y = (labels[keep] == 1).astype(float)
        p = np.asarray(probs, dtype=np.float32)[keep].astype(float)  # the metrics' precision
        c = np.asarray(calls, dtype=bool)[keep].astype(float)
        wk = w[:, keep]
        pos, neg = wk @ y, wk @ (1.0 - y)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["auc"] = interval(weighted_auc(y, p, wk))
            out["sensitivity"] = interval(np.where(pos > 0, wk @ (c * y) / pos, np.nan))
            out["specificity"] = interval(
                np.where(neg > 0, wk @ ((1.0 - c) * (1.0 - y)) / neg, np.nan)
            )
    return out, record


def referral_curve(frame: pd.DataFrame, fractions: Sequence[float]) -> list[dict[str, Any]]:
    """AUC, sensitivity and specificity (:func:`bus_mtl.training.metrics.binary_metrics`, the
    calls as made) on the cases kept when the ``fraction`` most uncertain ones are referred.

    ``frame`` has ``label``, ``probability``, ``malignant_call``, ``uncertainty`` (and
    ``dice``); cases without a benign/malignant label or an uncertainty take no part.
    Ties in uncertainty are broken by the cases' order. Returns one dict per fraction:
    ``referred_fraction, n_referred, n_kept, n_malignant_kept, auc, sensitivity,
    specificity, dice`` (mean Dice of the kept cases).
    """
    labels = frame["label"].to_numpy()
    probs = frame["probability"].to_numpy(dtype=float)
    unc = frame["uncertainty"].to_numpy(dtype=float)
    idx = np.flatnonzero(_scored(labels, probs) & np.isfinite(unc))
    n = idx.size
    if n == 0:
        return []
    # Most uncertain first; a stable sort keeps the cases' order among equals.
    order = idx[np.argsort(-unc[idx], kind="stable")]
    dice = frame["dice"].to_numpy(dtype=float) if "dice" in frame else np.full(len(frame), np.nan)
    calls = frame["malignant_call"].to_numpy(dtype=bool)
    rows = []
    for fraction in fractions:
        n_ref = int(math.floor(float(fraction) * n + 0.5))
        kept = order[n_ref:]
        values = binary_metrics(probs[kept], labels[kept], calls=calls[kept])
        d = dice[kept]
        rows.append(
            {
                "referred_fraction": float(fraction),
                "n_referred": n_ref,
                "n_kept": int(kept.size),
                "n_malignant_kept": int((labels[kept] == 1).sum()),
                "auc": float(values["auc"]),
                "sensitivity": float(values["sensitivity"]),
                "specificity": float(values["specificity"]),
                "dice": float(np.nanmean(d)) if np.isfinite(d).any() else math.nan,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Output


def _write_plots(
    frame: pd.DataFrame, metrics: dict[str, Any], out_dir: Path, name: str
) -> dict[str, str]:
    from bus_mtl.experiments.evaluate_plots import referral_plot, roc_plot
    from bus_mtl.training.visualization import reliability_diagram

    files: dict[str, str] = {}
    labels = frame["label"].to_numpy()
    probs = frame["probability"].to_numpy(dtype=float)
    keep = _scored(labels, probs)
    y, p = labels[keep].astype(int), probs[keep]
    title = name or "evaluation"
    if keep.any() and 0 < y.sum() < y.size:
        roc_plot(y, p, metrics, out_dir / ROC_FILE, title=title)
        files["roc"] = ROC_FILE
    if keep.any():
        reliability_diagram(p, y, out_dir / RELIABILITY_FILE, title=title)
        files["reliability"] = RELIABILITY_FILE
    if metrics["referral"]:
        grid = np.round(np.arange(0.0, 0.51, 0.02), 2)
        referral_plot(
            referral_curve(frame, grid), metrics["referral"], out_dir / REFERRAL_FILE, title
        )
        files["referral"] = REFERRAL_FILE
    return files


#: The summary table's columns: header -> how a metrics dict gives the cell.
TABLE_COLUMNS = ("n", "Dice", "AUC [95% CI]", "Sens", "Spec", "Thr", "ECE", "Brier")


def _num(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{v:.{digits}f}" if math.isfinite(v) else "—"


def table_cells(metrics: Mapping[str, Any]) -> list[str]:
    """One row of :data:`TABLE_COLUMNS` from a metrics dict (``metrics.json``'s keys)."""
    ci = metrics.get("auc_ci") or [math.nan, math.nan]
    auc = _num(metrics.get("auc"))
    if auc != "—" and all(_num(v) != "—" for v in ci):
        auc += f" [{_num(ci[0])}, {_num(ci[1])}]"
    n = metrics.get("n")
    return [
        str(int(n)) if isinstance(n, (int, float)) and math.isfinite(n) else "—",
        _num(metrics.get("dice")),
        auc,
        _num(metrics.get("sensitivity")),
        _num(metrics.get("specificity")),
        _num(metrics.get("threshold")),
        _num(metrics.get("ece")),
        _num(metrics.get("brier")),
    ]


def format_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """A plain-text table, one row per ``(name, metrics)``: n, Dice, AUC [95 % CI],
    sensitivity, specificity (at the threshold used), the threshold, ECE, Brier."""
    header = ["", *TABLE_COLUMNS]
    body = [[name, *table_cells(m)] for name, m in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), *(line(r) for r in body)])
