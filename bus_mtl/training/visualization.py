"""Validation overlays and ROC curve, as W&B images or PNG files; the reliability diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics.classification import BinaryAUROC, BinaryROC

from bus_mtl.training.metrics import ECE_BINS, reliability_bins


def _figure_to_array(fig: Any) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _display(image: Tensor) -> np.ndarray:
    """C×H×W normalised image -> H×W or H×W×3 in [0, 1] (min-max, for display only)."""
    array = image.float().cpu().numpy()
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def draw_overlays(examples: list[dict[str, Any]], threshold: float) -> np.ndarray:
    """One row per example: image with ground-truth (green) and predicted (red) contours,
    then the lesion probability map. Returns an H×W×3 uint8 array."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = len(examples)
    fig, axes = plt.subplots(rows, 2, figsize=(6, 3 * rows), squeeze=False)
    for ax_row, ex in zip(axes, examples):
        image = _display(ex["image"])
        ax_row[0].imshow(image, cmap="gray" if image.ndim == 2 else None)
        mask = ex["mask"][0].float().cpu().numpy()
        if mask.max() > 0:
            ax_row[0].contour(mask, levels=[0.5], colors="lime", linewidths=1)
        title = f"{ex['id']}  label={ex['label']}"
        if not np.isnan(ex["prob"]):
            title += f"  p(malignant)={ex['prob']:.2f}"
        ax_row[0].set_title(title, fontsize=7)
        prob = ex["mask_prob"]
        if prob is not None:
            prob = prob[0].float().cpu().numpy()
            if (prob > threshold).any():
                ax_row[0].contour(prob, levels=[threshold], colors="red", linewidths=1)
            ax_row[1].imshow(prob, cmap="magma", vmin=0.0, vmax=1.0)
            ax_row[1].set_title("lesion probability", fontsize=7)
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    array = _figure_to_array(fig)
    plt.close(fig)
    return array


def draw_roc(fpr: Tensor, tpr: Tensor, auc: float) -> np.ndarray:
    """The ROC curve with its AUC in the legend, as an H×W×3 uint8 array."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr.cpu().numpy(), tpr.cpu().numpy(), label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    fig.tight_layout()
    array = _figure_to_array(fig)
    plt.close(fig)
    return array


def reliability_diagram(
    probs: Any, labels: Any, path: str | Path, n_bins: int = ECE_BINS, title: str = ""
) -> float:
    """Save a reliability diagram PNG of malignancy ``probs`` against ``labels`` (observed
    malignant fraction vs mean probability per bin, a histogram of the probabilities below
    it); returns the ECE, the one the training logs report (:func:`reliability_bins`).

    Labels other than 0/1 and NaN probabilities are dropped. The one diagram of the project:
    ``bus-mtl cv`` draws it for the pooled out-of-fold probabilities.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    probs = np.asarray(probs, dtype=float).ravel()
    labels = np.asarray(labels, dtype=float).ravel()
    if probs.shape != labels.shape:
        raise ValueError(f"probs and labels differ in length: {probs.shape} vs {labels.shape}")
    keep = np.isfinite(probs) & np.isin(labels, (0, 1))
    if not keep.any():
        raise ValueError("no image with a malignancy probability and a 0/1 label to plot")
    bins = reliability_bins(probs[keep], labels[keep].astype(int), n_bins)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return float(bins["ece"])


class ValidationImages(Callback):
    """Each validation epoch: overlays of a few images and the ROC curve.

    Logged with ``WandbLogger.log_image`` (keys ``val/overlays``, ``val/roc``) when a W&B
    logger is attached, otherwise saved as ``val_images/epoch<NNN>_{overlays,roc}.png`` in
    the trainer's log dir. Uses the ``mask_prob``/``prob`` that ``validation_step`` returns.
    The ROC curve covers the whole validation set (torchmetrics syncs it under DDP); the
    overlays are the first images rank 0 sees.

    Args:
        num_images: images per epoch; ``None``: the module's ``log_images``.
        every_n_epochs: draw every n-th validation epoch.
    """

    def __init__(self, num_images: int | None = None, every_n_epochs: int = 1) -> None:
        if num_images is not None and num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images!r}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs!r}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self._examples: list[dict[str, Any]] = []
        self._roc: BinaryROC | None = None
        self._auroc: BinaryAUROC | None = None

    def _active(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._examples = []
        self._roc = BinaryROC().to(pl_module.device)
        self._auroc = BinaryAUROC().to(pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer) or not isinstance(outputs, dict):
            return
        prob, label = outputs.get("prob"), outputs.get("label")
        if prob is not None and label is not None and self._roc is not None:
            keep = (label >= 0) & ~torch.isnan(prob)
            if keep.any():
                target = (label[keep] == 1).long()
                self._roc.update(prob[keep], target)
                self._auroc.update(prob[keep], target)
        wanted = self.num_images if self.num_images is not None else pl_module.log_images
        mask_prob = outputs.get("mask_prob")
        for i in range(batch["image"].shape[0]):
            if len(self._examples) >= wanted:
                break
            self._examples.append(
                {
                    "id": batch["id"][i],
                    "image": batch["image"][i].detach().cpu(),
                    "mask": batch["mask"][i].detach().cpu(),
                    "mask_prob": mask_prob[i].cpu() if mask_prob is not None else None,
                    "prob": float(prob[i]) if prob is not None else float("nan"),
                    "label": int(batch["label"][i]),
                }
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        images: dict[str, np.ndarray] = {}
        roc, auroc = self._roc, self._auroc
        # compute() syncs across ranks: every rank must call it.
        if roc is not None and roc.update_called:
            fpr, tpr, _ = roc.compute()
            images["roc"] = draw_roc(fpr, tpr, float(auroc.compute()))
        if trainer.is_global_zero and self._examples:
            images["overlays"] = draw_overlays(self._examples, float(pl_module.threshold))
        self._examples = []
        if trainer.is_global_zero and images:
            self._publish(trainer, images)

    def _publish(self, trainer: pl.Trainer, images: dict[str, np.ndarray]) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for logger in wandb_loggers:
            for name, array in images.items():
                logger.log_image(key=f"val/{name}", images=[array], step=trainer.global_step)
        if wandb_loggers:
            return
        from PIL import Image

        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "val_images"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, array in images.items():
            Image.fromarray(array).save(out_dir / f"epoch{trainer.current_epoch:03d}_{name}.png")
