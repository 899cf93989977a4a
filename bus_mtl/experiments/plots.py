"""PNG figures for experiment folders (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bus_mtl.experiments.results import ECE_BINS, PERCENT_METRICS, reliability_bins  # noqa: E402


def reliability_diagram(
    labels: np.ndarray, probs: np.ndarray, path: Path, n_bins: int = ECE_BINS, title: str = ""
) -> float:
    """Save a reliability diagram (observed malignant fraction vs mean probability per bin)
    with a histogram of the probabilities below it. Returns the ECE."""
    bins = reliability_bins(labels, probs, n_bins)
    centres = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    width = 1.0 / n_bins
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    filled = bins["count"] > 0
    ax.bar(
        centres[filled],
        bins["frequency"][filled],
        width=width * 0.9,
        color="tab:blue",
        alpha=0.8,
        label="observed malignant fraction",
    )
    ax.plot(bins["confidence"][filled], bins["frequency"][filled], "o", color="tab:red", ms=4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction malignant")
    ax.set_title(f"{title}  ECE = {bins['ece']:.3f}".strip())
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centres, bins["count"], width=width * 0.9, color="grey")
    hist.set_xlim(0, 1)
    hist.set_xlabel("predicted malignancy probability")
    hist.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return float(bins["ece"])


def comparison_plot(
    table: pd.DataFrame,
    path: Path,
    metrics: Sequence[str] = ("dice", "iou", "auc", "acc", "f1"),
    label_column: str = "label",
) -> None:
    """Grouped bars of mean ± std over folds, one group per metric, one bar per row.

    ``table`` has a ``label_column`` (variant, or variant/protocol) and ``<metric>_mean``,
    ``<metric>_std`` columns.
    """
    metrics = [m for m in metrics if f"{m}_mean" in table.columns]
    if not metrics:
        raise ValueError(f"none of the metrics to plot are in the table: {list(table.columns)}")
    n_rows = len(table)
    x = np.arange(len(metrics))
    width = 0.8 / max(n_rows, 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(metrics) + 0.2 * n_rows, 4))
    for i, (_, row) in enumerate(table.iterrows()):
        scale = np.array([100.0 if m in PERCENT_METRICS else 1.0 for m in metrics])
        means = np.array([row[f"{m}_mean"] for m in metrics], dtype=float) * scale
        stds = np.nan_to_num(np.array([row[f"{m}_std"] for m in metrics], dtype=float)) * scale
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            means,
            width,
            yerr=stds,
            capsize=3,
            label=str(row[label_column]),
        )
    ax.set_xticks(x, [f"{m} (%)" if m in PERCENT_METRICS else m for m in metrics])
    ax.set_ylabel("mean ± std over folds")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
