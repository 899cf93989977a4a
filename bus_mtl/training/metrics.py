"""Segmentation and classification metrics as torchmetrics ``Metric``\\ s.

Both metrics keep raw per-sample values in list states reduced with ``dist_reduce_fx="cat"``,
so under DDP ``compute()`` sees every sample exactly once (Lightning's
``DistributedSampler`` may repeat a few samples to even out the last batch; that is the
sampler's doing, not the metric's). Means are taken in ``compute()``, never averaged across
ranks.

Segmentation: per-image Dice, IoU and HD95 (pixels) on the thresholded lesion mask.

Empty-mask policy (images without a lesion: normal images, or an empty prediction):

* target and prediction both empty -> Dice = IoU = 1 (a correct rejection); HD95 is not
  applicable: NaN, left out of the HD95 mean;
* exactly one of them empty (a missed lesion or a false detection) -> Dice = IoU = 0;
  HD95 is undefined: NaN, left out of the HD95 mean and counted in ``hd95_undefined``,
  the fraction of all images where this happened (so a model cannot improve its HD95 by
  predicting nothing on hard images without it showing);
* both non-empty -> the usual values; HD95 is the symmetric 95th-percentile Hausdorff
  distance between the two mask contours in pixels, computed by MONAI's
  ``compute_hausdorff_distance(percentile=95)`` (contour = mask XOR its binary erosion,
  Euclidean distance, ``torch.quantile`` linear interpolation in float32, maximum of both
  directions).

Classification: AUC, accuracy, sensitivity, specificity, F1, balanced accuracy, ECE and
Brier score for the malignant class, defined once in :func:`binary_metrics` (torchmetrics
functional) and used by the training logs (:class:`ClassificationMetrics`), the pooled cv
metrics (``bus_mtl.experiments.results.pooled_metrics``), temperature calibration
(``val/ece_*``) and the reliability diagram (:func:`reliability_bins`):

* decision: malignant when ``p > threshold`` (strictly: a probability equal to the
  threshold is benign; :func:`malignant_calls`), at the model's stored decision threshold;
* AUC: ``binary_auroc`` (ties count 1/2);
* ECE: ``binary_calibration_error`` with :data:`ECE_BINS` (15) equal-width bins ``[k/15,
  (k+1)/15)`` (a probability of exactly 1 gets a bin of its own), L1 norm, of
  ``P(malignant)`` against the 0/1 malignant indicator: one-vs-rest for the malignant class
  whatever the number of classes (never top-label);
* Brier: mean of ``(P(malignant) - y)^2``.

Probabilities are taken as float32 (what the network produces), so metrics recomputed from
the per-image CSVs (written with 9 significant digits) equal the logged ones.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_calibration_error,
    binary_stat_scores,
)
from torchmetrics.utilities import dim_zero_cat

from bus_mtl.data.io import from_square, square_geometry

__all__ = [
    "BINARY_METRICS",
    "ECE_BINS",
    "PREDICTION_COLUMNS",
    "ClassificationMetrics",
    "SegmentationMetrics",
    "binary_metrics",
    "brier_score",
    "calibration_error",
    "hd95",
    "malignant_calls",
    "original_size_seg_metrics",
    "per_image_seg_metrics",
    "reliability_bins",
]

MALIGNANT = 1
#: Equal-width bins of the expected calibration error (L1), everywhere.
ECE_BINS = 15
#: What :func:`binary_metrics` returns, in order.
BINARY_METRICS = ("auc", "acc", "sensitivity", "specificity", "f1", "balanced_acc", "ece", "brier")
#: One row per test image of ``test_predictions.csv`` (``PerImagePredictions`` writes it,
#: :mod:`bus_mtl.experiments.results` reads it), in order.
PREDICTION_COLUMNS = ("id", "centre", "label", "prob", "dice", "iou", "hd95", "mask_area")


def _nanmean(x: Tensor) -> Tensor:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    finite = x[~torch.isnan(x)]
    if finite.numel() == 0:
        return torch.tensor(float("nan"), dtype=torch.float32, device=x.device)
    return finite.float().mean()


def _cat_state(state: list[Tensor] | Tensor, empty: Tensor) -> Tensor:
    """A "cat" list state as one tensor: a list before ``compute()``'s DDP sync, already one
    tensor after it, ``empty`` when nothing was added."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else empty


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance in pixels between two H×W boolean masks.

    MONAI's ``compute_hausdorff_distance(percentile=95)`` (contour = mask XOR its binary
    erosion, Euclidean distance between contour pixels, ``torch.quantile`` of each direction
    in float32, the larger of the two), inside this module's empty-mask policy: NaN when
    either mask is empty (MONAI would warn and give inf or NaN). Runs on the bounding box of
    both masks (plus one pixel): the contours and distances are the same, and a 500×600
    original-size BUSI mask is not converted and scanned in full.
    """
    # Imported here: MONAI's metrics add about a second to the import of this module, which
    # the cv summaries and temperature calibration use without ever needing HD95.
    from monai.metrics import compute_hausdorff_distance

    if not pred.any() or not target.any():
        return float("nan")
    rows = np.flatnonzero((pred | target).any(axis=1))
    cols = np.flatnonzero((pred | target).any(axis=0))
    # Crop with a 1-pixel margin, clipped to the image: MONAI's erosion counts pixels outside
    # the array as background, so a contour touching the image border stays a contour.
    box = (
        slice(max(rows[0] - 1, 0), rows[-1] + 2),
        slice(max(cols[0] - 1, 0), cols[-1] + 2),
    )
    with warnings.catch_warnings():
        # MONAI (1.5, 1.6) passes its own deprecated ``always_return_as_numpy`` to
        # ``get_mask_edges``; the FutureWarning is about MONAI's code, not ours.
        warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
        value = compute_hausdorff_distance(
            torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None],
            torch.from_numpy(np.ascontiguousarray(target[box]))[None, None],
            include_background=True,  # the single channel is the lesion, not a background
            percentile=95,
        )
    return float(value)


def per_image_seg_metrics(
    mask_logits: Tensor,
    target: Tensor,
    threshold: float = 0.5,
    include_background: bool = False,
    with_hd95: bool = True,
) -> dict[str, Tensor]:
    """Per-image segmentation metrics under the module's empty-mask policy.

    Args:
        mask_logits: B×1×H×W lesion logits; the prediction is ``sigmoid(logits) > threshold``.
        target: B×1×H×W ground-truth mask in {0, 1}.
        threshold: probability threshold.
        include_background: also score the background (1 - mask) and report the mean of the
            background and lesion Dice / IoU. HD95 is always the lesion contour's (the
            background's contour is the lesion's plus the image frame).
        with_hd95: compute HD95 (on the CPU). ``False`` leaves it NaN and keeps everything on
            the input's device with no host sync — what a training step wants.

    Returns:
        float32 tensors of shape (B,) on the input's device: ``dice``, ``iou``, ``hd95``
        (NaN where not defined), ``mask_area`` (predicted lesion pixels) and
        ``target_area`` (ground-truth lesion pixels).
    """
    if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"expected mask logits of shape B×1×H×W, got {tuple(mask_logits.shape)}.")
    if target.shape != mask_logits.shape:
        raise ValueError(
            f"mask target shape {tuple(target.shape)} does not match the mask logits "
            f"{tuple(mask_logits.shape)}."
        )
    pred = torch.sigmoid(mask_logits.detach().float()) > threshold
    true = target.detach() > 0.5
    dice, iou = _dice_iou(pred, true)
    if include_background:
        dice_bg, iou_bg = _dice_iou(~pred, ~true)
        dice, iou = (dice + dice_bg) / 2, (iou + iou_bg) / 2
    if with_hd95:
        pred_np = pred[:, 0].cpu().numpy()
        true_np = true[:, 0].cpu().numpy()
        hd = torch.tensor([hd95(p, t) for p, t in zip(pred_np, true_np)], dtype=torch.float32).to(
            mask_logits.device
        )
    else:
        hd = torch.full_like(dice, float("nan"))
    return {
        "dice": dice,
        "iou": iou,
        "hd95": hd,
        "mask_area": pred.flatten(1).sum(1).float(),
        "target_area": true.flatten(1).sum(1).float(),
    }


def original_size_seg_metrics(
    mask_logits: Tensor,
    targets: list[Tensor],
    threshold: float = 0.5,
    include_background: bool = False,
    with_hd95: bool = True,
    resize: str = "squash",
) -> dict[str, Tensor]:
    """:func:`per_image_seg_metrics` at each image's original size.

    The network sees every image as a square (BUSI's aspect ratio runs from 0.57 to 2.05:
    squashed, or letterboxed with padding); a clinician's mask is drawn on the original.
    Each image's logits are brought back to its target's H0×W0 by
    :func:`~bus_mtl.data.io.from_square` (padding cropped, bilinear, like a deployed model's
    output) before thresholding, so Dice, IoU and HD95 (in original pixels) are those of
    the mask a user would get.

    Args:
        mask_logits: B×1×S×S lesion logits at the working resolution.
        targets: B masks of shape H0×W0 (any dtype, lesion > 0.5 or > 0), one per image.
        resize: how the inputs were made square (``"squash"`` or ``"letterbox"``: the
            datamodule's ``resize``, a checkpoint's ``meta["resize"]``).
    """
    if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"expected mask logits of shape B×1×H×W, got {tuple(mask_logits.shape)}.")
    if len(targets) != mask_logits.shape[0]:
        raise ValueError(
            f"{len(targets)} original-size masks for a batch of {mask_logits.shape[0]} images."
        )
    rows = []
    # One host copy per batch: the resize back is OpenCV's, shared with inference.
    host = mask_logits.detach().float().cpu().numpy()
    for logits, target in zip(host, targets):
        if target.ndim != 2:
            raise ValueError(f"original-size masks must be H×W, got {tuple(target.shape)}.")
        geometry = square_geometry(tuple(target.shape), logits.shape[-1], resize)
        up = torch.from_numpy(from_square(logits[0], geometry)).to(mask_logits.device)
        up = up[None, None]
        true = (target.to(up.device) > 0).float()[None, None]
        rows.append(per_image_seg_metrics(up, true, threshold, include_background, with_hd95))
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def _dice_iou(pred: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image Dice and IoU of boolean B×1×H×W masks; 1 when both are empty."""
    inter = (pred & true).flatten(1).sum(1).float()
    p = pred.flatten(1).sum(1).float()
    t = true.flatten(1).sum(1).float()
    union = p + t - inter
    both_empty = union == 0
    dice = torch.where(both_empty, 1.0, 2 * inter / (p + t).clamp(min=1))
    iou = torch.where(both_empty, 1.0, inter / union.clamp(min=1))
    return dice, iou


class SegmentationMetrics(Metric):
    """Per-image mean Dice, IoU and HD95 (pixels) of a lesion mask; see the module docstring
    for the empty-mask policy.

    ``update(mask_logits: B×1×H×W, target: B×1×H×W)`` takes logits (the prediction is
    ``sigmoid(logits) > threshold``). ``compute()`` returns ``{"dice", "iou", "hd95",
    "hd95_undefined", "dice_lesion"}``: means over images (HD95 over the images where it is
    defined) and the fraction of images with exactly one empty mask. ``accumulated()``
    returns the accumulated per-image values. A caller that needs a batch's per-image values
    as well (``test_step``'s rows) takes them from ``per_image_values(mask_logits, target)``
    (this metric's settings, state untouched) and adds them with ``update(per_image=...)``,
    so HD95 is computed once; the static ``SegmentationMetrics.per_image(mask_logits,
    target, threshold)`` gives those of one batch without a metric object.

    Args:
        threshold: probability threshold in (0, 1).
        include_background: also average the background's Dice / IoU in (see
            ``per_image_seg_metrics``).
        with_hd95: compute HD95 (CPU work and a device-to-host copy per update); the
            training-stage metrics turn it off so a step never waits on the host.
        kwargs: torchmetrics ``Metric`` options (``compute_on_cpu``, ``sync_on_compute``, ...).
    """

    is_differentiable = False
    higher_is_better = None  # Dice/IoU higher, HD95 lower
    full_state_update = False

    _keys = ("dice", "iou", "hd95", "mask_area", "target_area")

    def __init__(
        self,
        threshold: float = 0.5,
        include_background: bool = False,
        with_hd95: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")
        self.threshold = threshold
        self.include_background = include_background
        self.with_hd95 = with_hd95
        for key in self._keys:
            self.add_state(key, default=[], dist_reduce_fx="cat")

    def per_image_values(
        self, mask_logits: Tensor, target: Tensor | list[Tensor], resize: str = "squash"
    ) -> dict[str, Tensor]:
        """The per-image values ``update(mask_logits, target)`` would add, with this metric's
        threshold, ``include_background`` and ``with_hd95``; the state is not touched.

        Args:
            mask_logits: B×1×H×W lesion logits.
            target: B×1×H×W like the logits, or a list of B original-size H0×W0 masks (the
                logits are then brought back to each; see :func:`original_size_seg_metrics`).
            resize: how the inputs were made square, for original-size targets.

        Returns:
            (B,) float32 tensors keyed as :func:`per_image_seg_metrics`.
        """
        if isinstance(target, (list, tuple)):
            return original_size_seg_metrics(
                mask_logits,
                list(target),
                self.threshold,
                self.include_background,
                self.with_hd95,
                resize,
            )
        return per_image_seg_metrics(
            mask_logits, target, self.threshold, self.include_background, self.with_hd95
        )

    def update(
        self,
        mask_logits: Tensor | None = None,
        target: Tensor | list[Tensor] | None = None,
        *,
        per_image: dict[str, Tensor] | None = None,
    ) -> None:
        """Add one batch: ``mask_logits`` and ``target`` as :meth:`per_image_values` takes
        them, or ``per_image``, the batch's values :meth:`per_image_values` already gave (a
        dict of (B,) tensors with at least the keys ``dice``, ``iou``, ``hd95``,
        ``mask_area``, ``target_area``)."""
        if per_image is None:
            if mask_logits is None or target is None:
                raise ValueError(
                    "SegmentationMetrics.update needs mask_logits and target, or per_image."
                )
            per_image = self.per_image_values(mask_logits, target)
        elif mask_logits is not None or target is not None:
            raise ValueError(
                "SegmentationMetrics.update takes mask_logits and target, or per_image, not both."
            )
        missing = [key for key in self._keys if key not in per_image]
        if missing:
            raise ValueError(
                f"per_image lacks {missing}: expected per_image_values' keys {list(self._keys)}."
            )
        shapes = {key: tuple(per_image[key].shape) for key in self._keys}
        if len(set(shapes.values())) != 1 or len(shapes["dice"]) != 1:
            raise ValueError(f"per_image values must be (B,) tensors of one length, got {shapes}.")
        for key in self._keys:
            getattr(self, key).append(per_image[key])

    @staticmethod
    def per_image(
        mask_logits: Tensor,
        target: Tensor,
        threshold: float = 0.5,
        include_background: bool = False,
    ) -> dict[str, Tensor]:
        """Per-image values of one batch without touching the state; see
        ``per_image_seg_metrics`` (takes logits, like ``update``)."""
        return per_image_seg_metrics(mask_logits, target, threshold, include_background)

    def accumulated(self) -> dict[str, Tensor]:
        """All per-image values accumulated so far (this process's until ``compute()``
        syncs), each of shape (N,), keys as ``per_image_seg_metrics``."""
        return {key: self._cat(key) for key in self._keys}

    def _cat(self, key: str) -> Tensor:
        return _cat_state(getattr(self, key), torch.zeros(0, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        values = self.accumulated()
        n = values["dice"].numel()
        if n == 0:
            nan = torch.tensor(float("nan"), device=self.device)
            return {
                "dice": nan,
                "iou": nan.clone(),
                "hd95": nan.clone(),
                "hd95_undefined": nan.clone(),
                "dice_lesion": nan.clone(),
            }
        one_empty = (values["mask_area"] == 0) ^ (values["target_area"] == 0)
        lesion = values["target_area"] > 0
        return {
            "dice": values["dice"].mean(),
            # Images with a lesion only: an empty mask on an empty image scores Dice 1, which
            # inflates the mean whenever lesion-free (normal) images are evaluated.
            "dice_lesion": values["dice"][lesion].mean()
            if lesion.any()
            else torch.tensor(float("nan"), device=self.device),
            "iou": values["iou"].mean(),
            "hd95": _nanmean(values["hd95"]),
            "hd95_undefined": one_empty.float().mean(),
        }


def _tensor(x: Any) -> Tensor:
    """A tensor as is; arrays, lists and pandas columns copied into one."""
    return x if isinstance(x, Tensor) else torch.tensor(np.asarray(x))


def _binary_inputs(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    """(float32 probabilities, long 0/1 malignant indicator) from tensors, arrays or lists."""
    p, y = _tensor(probs), _tensor(labels)
    p = p.detach().reshape(-1).to(torch.float32).contiguous()
    y = y.detach().reshape(-1).to(p.device)
    if p.shape != y.shape:
        raise ValueError(f"{p.numel()} probabilities but {y.numel()} labels.")
    if y.numel() and bool((y < 0).any()):
        raise ValueError("labels must be >= 0 (drop unlabelled samples, label -1, first).")
    return p, (y == MALIGNANT).long()


def malignant_calls(probs: Any, threshold: Any = 0.5) -> Tensor:
    """The decision rule: malignant when ``p > threshold`` (a probability equal to the
    threshold is benign). ``threshold``: a number, or one per sample (e.g. each cv fold's
    stored operating point). Compared in float32, the probabilities' precision."""
    p = _tensor(probs).detach().to(torch.float32)
    return p > _tensor(threshold).to(device=p.device, dtype=torch.float32)


def calibration_error(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> Tensor:
    """Expected calibration error of ``P(malignant)`` against the malignant indicator
    (label 1): ``binary_calibration_error`` with ``n_bins`` equal-width bins, L1."""
    p, y = _binary_inputs(probs, labels)
    if y.numel() == 0:
        return torch.tensor(float("nan"), device=p.device)
    return binary_calibration_error(p, y, n_bins=n_bins, norm="l1")


def brier_score(probs: Any, labels: Any) -> Tensor:
    """Mean squared difference between ``P(malignant)`` and the malignant indicator."""
    p, y = _binary_inputs(probs, labels)
    if y.numel() == 0:
        return torch.tensor(float("nan"), device=p.device)
    return ((p - y.float()) ** 2).mean()


def binary_metrics(
    probs: Any,
    labels: Any,
    threshold: Any = 0.5,
    *,
    calls: Any = None,
    n_bins: int = ECE_BINS,
) -> dict[str, Tensor]:
    """The classification metrics of this project, one definition for every report.

    Args:
        probs: (N,) malignancy probabilities ``P(malignant)``.
        labels: (N,) class labels >= 0; 1 = malignant, anything else is "not malignant"
            (benign, or normal for K = 3).
        threshold: decision threshold, a number or one per sample; a sample is called
            malignant when ``p > threshold`` (:func:`malignant_calls`).
        calls: (N,) malignant calls that replace the threshold rule (K = 3: argmax is
            malignant).
        n_bins: ECE bins.

    Returns:
        0-d float32 tensors :data:`BINARY_METRICS`: ``auc`` (``binary_auroc``), ``acc``
        (calls against the malignant indicator), ``sensitivity``, ``specificity``, ``f1``
        and ``balanced_acc`` (from ``binary_stat_scores`` of the calls), ``ece``
        (:func:`calibration_error`) and ``brier`` (:func:`brier_score`). Undefined values
        are NaN, never 0: AUC with one class, sensitivity without malignant samples,
        specificity without other ones, F1 without malignant samples or calls, and all of
        them without samples.
    """
    p, y = _binary_inputs(probs, labels)
    nan = torch.tensor(float("nan"), device=p.device)
    if y.numel() == 0:
        return {name: nan.clone() for name in BINARY_METRICS}
    hard = malignant_calls(p, threshold) if calls is None else _tensor(calls)
    hard = hard.reshape(-1).to(p.device).long()
    if hard.shape != y.shape:
        raise ValueError(f"{hard.numel()} calls for {y.numel()} samples.")
    tp, fp, tn, fn, _ = binary_stat_scores(hard, y).float().unbind()
    sens = tp / (tp + fn) if tp + fn > 0 else nan
    spec = tn / (tn + fp) if tn + fp > 0 else nan
    out = {
        "auc": binary_auroc(p, y) if 0 < int(y.sum()) < y.numel() else nan,
        "acc": (tp + tn) / y.numel(),
        "sensitivity": sens,
        "specificity": spec,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else nan,
        "balanced_acc": (sens + spec) / 2,
        "ece": binary_calibration_error(p, y, n_bins=n_bins, norm="l1"),
        "brier": ((p - y.float()) ** 2).mean(),
    }
    return {k: torch.as_tensor(v, dtype=torch.float32, device=p.device) for k, v in out.items()}


def reliability_bins(probs: Any, labels: Any, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """The ECE's bins, for a reliability diagram: per-bin ``count``, mean predicted
    ``confidence`` and observed ``frequency`` (fraction malignant), NaN for empty bins,
    ``edges`` and ``ece`` = :func:`calibration_error` (numpy arrays, float ``ece``).

    Bins as ``binary_calibration_error``: ``[k/n, (k+1)/n)`` in float32; a probability of
    exactly 1, which torchmetrics scores in a bin of its own, is drawn in the last bin.
    """
    p, y = _binary_inputs(probs, labels)
    p, y = p.cpu(), y.cpu()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=p.dtype)
    idx = (torch.bucketize(p, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double().numpy()
    conf = torch.bincount(idx, weights=p.double(), minlength=n_bins).numpy()
    freq = torch.bincount(idx, weights=y.double(), minlength=n_bins).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, conf / count, np.nan)
        freq = np.where(count > 0, freq / count, np.nan)
    return {
        "edges": edges.double().numpy(),
        "count": count,
        "confidence": conf,
        "frequency": freq,
        "ece": float(calibration_error(p, y, n_bins)),
    }


class ClassificationMetrics(Metric):
    """Malignancy classification metrics: AUC, accuracy, sensitivity, specificity, F1,
    balanced accuracy, ECE (15 equal-width bins, L1) and Brier score.

    ``update(logits: B×K, labels: B long)`` takes logits: probabilities are
    ``sigmoid`` (K = 1) or ``softmax`` (K > 1) of them; divide the logits by the fitted
    temperature first to score calibrated probabilities. Samples with label -1 are skipped.

    Every value is :func:`binary_metrics`'s (the one definition, also used for pooled cv
    metrics); this class only accumulates the samples.

    * K = 1: positive = malignant (label 1); predicted malignant when ``p > threshold``.
    * K = 3 (benign, malignant, normal): ``acc`` is the 3-class accuracy of the argmax;
      every other metric is one-vs-rest for the malignant class, with ``p = P(malignant)``
      for AUC, ECE and Brier and "predicted malignant" = argmax is malignant (``threshold`` is
      not used).

    ECE and Brier are those of ``P(malignant)`` against the 0/1 malignant indicator
    (``binary_calibration_error``: ``sum_bins |mean(y) - mean(p)| * n_bin / n``).
    Undefined values are NaN, never 0: AUC with a single class present, sensitivity
    without malignant samples, specificity without non-malignant ones, F1 when there are
    neither malignant samples nor malignant predictions, and everything without samples.

    Args:
        num_classes: K, the number of logits (1, or 3 with ``normal="class"``).
        threshold: probability threshold for K = 1, in (0, 1).
        kwargs: torchmetrics ``Metric`` options (``compute_on_cpu``, ``sync_on_compute``, ...).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, num_classes: int = 1, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes == 2 or num_classes < 1:
            raise ValueError(
                f"num_classes must be 1 (benign/malignant, one logit) or >= 3, got {num_classes}."
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")
        self.num_classes = num_classes
        self.threshold = threshold
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        k = self.num_classes
        if logits.ndim == 1 and k == 1:
            logits = logits[:, None]
        if logits.ndim != 2 or logits.shape[1] != k:
            raise ValueError(
                f"expected logits of shape B×{k} (num_classes={k}), got {tuple(logits.shape)}."
            )
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match {logits.shape[0]} logits."
            )
        valid = labels != -1
        labels = labels[valid].long()
        top = 1 if k == 1 else k - 1
        bad = (labels < 0) | (labels > top)
        if bad.any():
            raise ValueError(
                f"labels must be in 0..{top} or -1 (ignored) for num_classes={k}, got "
                f"{sorted({int(v) for v in labels[bad].tolist()})}."
            )
        logits = logits[valid].detach().float()
        probs = torch.sigmoid(logits) if k == 1 else torch.softmax(logits, dim=1)
        self.probs.append(probs)
        self.labels.append(labels)

    def compute(self) -> dict[str, Tensor]:
        probs = _cat_state(self.probs, torch.zeros(0, self.num_classes, device=self.device))
        labels = _cat_state(self.labels, torch.zeros(0, dtype=torch.long, device=self.device))
        probs = probs.reshape(-1, self.num_classes)
        if self.num_classes == 1:
            out = binary_metrics(probs[:, 0], labels, self.threshold)
        else:
            argmax = probs.argmax(dim=1)
            p = probs[:, MALIGNANT].contiguous()
            out = binary_metrics(p, labels, calls=argmax == MALIGNANT)
            if labels.numel():
                out["acc"] = (argmax == labels).float().mean()
        return {k: torch.as_tensor(v, dtype=torch.float32).to(self.device) for k, v in out.items()}
