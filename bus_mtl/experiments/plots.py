"""PNG figures for experiment folders (matplotlib, Agg backend: no display needed).

The reliability diagram is ``bus_mtl.training.visualization.reliability_diagram``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bus_mtl.experiments.results import PERCENT_METRICS  # noqa: E402


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
