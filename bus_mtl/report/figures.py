"""The report's figures as PNG bytes (matplotlib, Agg backend).

The ROC curve with its operating point, the reliability diagram and the referral curve are
the project's own (:func:`bus_mtl.experiments.evaluate_plots.roc_plot`,
:func:`bus_mtl.training.visualization.reliability_diagram`,
:func:`bus_mtl.experiments.evaluate_plots.referral_plot`), drawn into a temporary file; the
confusion matrix, sensitivity/specificity against the threshold and the ROC overlay of
several models are drawn here.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: The thresholds the sensitivity/specificity curve is drawn at.
THRESHOLD_GRID = np.linspace(0.0, 1.0, 201)


def _via_file(draw: Callable[[Path], Any]) -> bytes:
    """Run ``draw(path)`` (a project function that saves a PNG) and return the bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return path.read_bytes()


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _binary(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0/1 labels, probabilities and the row mask of the benign/malignant rows with a
    probability."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=float)
    keep = np.isin(y, (0, 1)) & np.isfinite(p)
    return y[keep].astype(int), p[keep], keep


def roc_png(labels: Any, probs: Any, metrics: Mapping[str, Any], title: str = "") -> bytes | None:
    """The ROC curve with the operating point (:func:`roc_plot`); ``None`` with one class."""
    from bus_mtl.experiments.evaluate_plots import roc_plot

    y, p, _ = _binary(labels, probs)
    if y.size == 0 or y.min() == y.max():
        return None
    return _via_file(lambda path: roc_plot(y, p, _clean(metrics), path, title=title))


def reliability_png(labels: Any, probs: Any, title: str = "") -> bytes | None:
    """The reliability diagram (:func:`reliability_diagram`); ``None`` without scored rows."""
    from bus_mtl.training.visualization import reliability_diagram

    y, p, _ = _binary(labels, probs)
    if y.size == 0:
        return None
    return _via_file(lambda path: reliability_diagram(p, y, path, title=title))


def referral_png(
    frame: pd.DataFrame, marked: Sequence[Mapping[str, Any]], title: str = ""
) -> bytes | None:
    """The referral curve by flip uncertainty (:func:`referral_curve` on a 2 % grid, the
    stored rows ``marked``); ``frame`` needs ``label, probability, uncertainty, dice`` and
    ``call``. ``None`` without an uncertainty."""
    from bus_mtl.experiments.evaluate import referral_curve
    from bus_mtl.experiments.evaluate_plots import referral_plot

    table = frame.rename(columns={"call": "malignant_call"})
    grid = np.round(np.arange(0.0, 0.51, 0.02), 2)
    curve = referral_curve(table, grid)
    if not curve:
        return None
    marked = list(marked) or referral_curve(table, (0.0, 0.1, 0.2, 0.3))
    return _via_file(lambda path: referral_plot(curve, marked, path, title))


def confusion_png(labels: Any, calls: Any, threshold_text: str = "") -> bytes | None:
    """The 2×2 confusion matrix of the malignant calls (rows: truth, columns: call), counts
    and the share of each true class; ``None`` without benign/malignant rows."""
    y = np.asarray(labels)
    c = np.asarray(calls, dtype=bool)
    keep = np.isin(y, (0, 1))
    if not keep.any():
        return None
    y, c = y[keep].astype(int), c[keep].astype(int)
    matrix = np.array([[np.sum((y == t) & (c == k)) for k in (0, 1)] for t in (0, 1)])
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = ("benign", "malignant")
    for t in (0, 1):
        for k in (0, 1):
            ax.text(
                k,
                t,
                f"{matrix[t, k]}\n{100 * share[t, k]:.0f} %",
                ha="center",
                va="center",
                color="white" if share[t, k] > 0.6 else "black",
                fontsize=11,
            )
    ax.set_xticks([0, 1], [f"called {n}" for n in names])
    ax.set_yticks([0, 1], [f"truly {n}" for n in names])
    ax.set_title(threshold_text or "confusion matrix", fontsize=8)
    return _png(fig)


def threshold_png(labels: Any, probs: Any, thresholds: Sequence[float]) -> bytes | None:
    """Sensitivity and specificity of ``P > t`` against ``t`` (the decision rule of
    :func:`bus_mtl.training.metrics.malignant_calls`), with the stored threshold(s)
    marked; ``None`` with one class."""
    y, p, _ = _binary(labels, probs)
    if y.size == 0 or y.min() == y.max():
        return None
    called = p[None, :] > THRESHOLD_GRID[:, None]  # T×N
    sens = called[:, y == 1].mean(axis=1)
    spec = 1.0 - called[:, y == 0].mean(axis=1)
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.plot(THRESHOLD_GRID, sens, color="tab:red", lw=2, label="sensitivity")
    ax.plot(THRESHOLD_GRID, spec, color="tab:green", lw=2, label="specificity")
    marks = sorted({round(float(t), 6) for t in thresholds if t is not None and math.isfinite(t)})
    for i, t in enumerate(marks):
        ax.axvline(t, color="black", ls="--", lw=1, label="stored threshold" if i == 0 else None)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("decision threshold t (malignant when P > t)")
    ax.set_ylabel("rate")
    ax.legend(loc="lower center", fontsize=8)
    return _png(fig)


def roc_overlay_png(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title: str = ""
) -> bytes | None:
    """Several ROC curves on one set of axes, ``(name, labels, probs, calls)`` each, with
    each operating point (the rates of ``calls``) marked; ``None`` when none has two
    classes."""
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    drawn = 0
    for i, (name, y, p, c) in enumerate(curves):
        y, p, c = np.asarray(y).astype(int), np.asarray(p, dtype=float), np.asarray(c, dtype=bool)
        if y.size == 0 or y.min() == y.max():
            continue
        pt = torch.as_tensor(p.astype(np.float32))
        yt = torch.as_tensor(y.astype(np.int64))
        fpr, tpr, _ = binary_roc(pt, yt)
        auc = float(binary_auroc(pt, yt))
        colour = f"C{i % 10}"
        ax.plot(fpr.numpy(), tpr.numpy(), color=colour, lw=1.6, label=f"{name}: AUC {auc:.3f}")
        sens = float(c[y == 1].mean())
        spec = float(1 - c[y == 0].mean())
        ax.plot([1 - spec], [sens], "o", color=colour, ms=6)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{title} (dots: operating points)".strip(), fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def _clean(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``None`` (JSON null) as NaN, as ``roc_plot`` compares numbers."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k.endswith("_ci"):
            out[k] = [math.nan if x is None else float(x) for x in (v or [math.nan, math.nan])]
        elif v is None:
            out[k] = math.nan
        else:
            out[k] = v
    return out
