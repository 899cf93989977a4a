"""The figures of ``bus-mtl evaluate`` (matplotlib, Agg backend): the ROC curve with the
operating point marked, and the referral curve. The reliability diagram is
``bus_mtl.training.visualization.reliability_diagram``, the one of the project.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_roc  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def roc_plot(
    labels: np.ndarray,
    probs: np.ndarray,
    metrics: Mapping[str, Any],
    path: Path,
    title: str = "",
) -> None:
    """The ROC curve of ``probs`` (N,) against 0/1 ``labels`` (N,), with the operating point
    (1 - specificity, sensitivity) at ``metrics["threshold"]`` marked; the legend gives the
    AUC and its interval (``metrics["auc"]``, ``metrics["auc_ci"]``)."""
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    fpr, tpr, _ = binary_roc(p, y)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    auc = float(metrics.get("auc", math.nan))
    lo, hi = (metrics.get("auc_ci") or [math.nan, math.nan])[:2]
    label = f"AUC {auc:.3f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        label += f" [{lo:.3f}, {hi:.3f}]"
    ax.plot(fpr.numpy(), tpr.numpy(), color="tab:blue", lw=2, label=label)
    sens, spec = metrics.get("sensitivity"), metrics.get("specificity")
    if sens is not None and spec is not None and math.isfinite(sens) and math.isfinite(spec):
        threshold = metrics.get("threshold")
        where = (
            f"P > {threshold:.3f}"
            if threshold is not None and math.isfinite(threshold)
            else "argmax"
        )
        ax.plot(
            [1 - spec],
            [sens],
            "o",
            color="tab:red",
            ms=8,
            label=f"operating point ({where}): sens {sens:.2f}, spec {spec:.2f}",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    _save(fig, path)


def referral_plot(
    curve: Sequence[Mapping[str, Any]],
    marked: Sequence[Mapping[str, Any]],
    path: Path,
    title: str = "",
) -> None:
    """AUC, sensitivity and specificity of the kept cases against the share of the most
    uncertain cases referred: ``curve`` drawn as lines, ``marked`` (metrics.json's
    ``referral`` rows) as points."""
    fig, ax = plt.subplots(figsize=(5, 4))
    colours = {"auc": "tab:blue", "sensitivity": "tab:red", "specificity": "tab:green"}
    for key, colour in colours.items():
        x = [100 * r["referred_fraction"] for r in curve]
        ax.plot(x, [r[key] for r in curve], color=colour, lw=1.5, label=key)
        ax.plot(
            [100 * r["referred_fraction"] for r in marked],
            [r[key] for r in marked],
            "o",
            color=colour,
            ms=5,
        )
    ax.set_xlabel("most uncertain cases referred (%)")
    ax.set_ylabel("on the cases kept")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"{title}: referral by flip uncertainty".strip(": "))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
